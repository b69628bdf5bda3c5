"""Open-set identification at the calibrated operating point, by enrolled-set size, on both dev sets.

    python benchmarks/open_set.py [--checkpoint PATH] [--splits 50]

Cross-validated as ``asit_embed.training.open_set.calibrated_open_set`` describes: in each random halving of
every dev set's speakers, half A calibrates and half B measures. "shipped": one calibration from the A
halves of the dev sets the checkpoint's calibration came from (``tools/calibrate.py --calibrate-on``; the
shipped one: speechocean762), as ``tools/calibrate.py`` makes it from all their dev speakers; "adapted": that
one moved to the enrolled speakers' voices (what a registry does by default); "own": from this set's A half
alone, leave-one-out over its enrollment clips (what ``SpeakerRegistry.calibrate()`` does). Enrolled-set sizes of 5, 10, 20, 25 and 100 where half a dev set
allows, leaving at least 2 strangers (speechocean762: 12-13 speakers a half, so 5 and 10; words: 22-23, so
up to 20). Scored with cosine and with AS-norm (cohort: the
training speakers shipped with the checkpoint). Also the checkpoint's own shipped calibration, which was
fitted on all dev speakers of the sets it names (so in-sample there; shown for reference), and, on the other
dev sets, that calibration with N of *all* their speakers enrolled and the rest calling in (no halving:
more strangers, and sizes up to 40 on the words), and how their own impostor table differs from the
shipped one at rates from 0.5 to 1e-4. Writes ``results/open_set.json`` and a
DET plot of FNIR against FPIR in the checkpoint's default scoring, ``results/open_set_det.png``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_dev_set_options, dev_sets, require  # noqa: E402

from asit_embed import load_encoder  # noqa: E402
from asit_embed.calibration import Calibration  # noqa: E402
from asit_embed.scoring import ASNorm, checkpoint_scoring  # noqa: E402
from asit_embed.training.metrics import PROTOCOLS, enrollment_split  # noqa: E402
from asit_embed.training.open_set import calibrated_open_set, plot_open_set_det, protocol_trials  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="default: the bundled model")
    add_dev_set_options(p)
    p.add_argument("--splits", type=int, default=50)
    p.add_argument("--fpir", type=float, default=0.01)
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 25, 100], help="enrolled-set sizes")
    p.add_argument("--all-sizes", type=int, nargs="+", default=[5, 10, 20, 30, 40],
                   help="enrolled-set sizes without halving, for dev sets the shipped calibration did not see")
    p.add_argument("--calibrate-on", nargs="+", choices=("speechocean762", "words"),
                   help="dev sets whose halves make the 'shipped' calibration (default: those the checkpoint's came from)")
    p.add_argument("--out", type=Path, default=RESULTS / "open_set.json")
    args = p.parse_args()
    require(args.manifest, *args.words)
    t0 = time.monotonic()
    encoder = load_encoder(args.checkpoint)
    sets = {}
    for name, (items, protocol) in dev_sets(args.manifest, args.words).items():
        emb = encoder.embed_batch([it.path for it in items])
        x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        speakers, keys = [it.speaker for it in items], [it.path for it in items]
        sets[name] = (x, speakers, *enrollment_split(keys, speakers, **PROTOCOLS[protocol]))
    meta = encoder.metadata
    report = {"checkpoint": str(args.checkpoint or "default"), "fingerprint": encoder.fingerprint, "fpir": args.fpir,
              "splits": args.splits, "speakers": {n: len(set(s[1][i] for i in s[2])) for n, s in sets.items()}}
    scorings = {"cosine": None}
    if meta.get("cohort") is not None:
        scorings["as-norm"] = ASNorm.from_metadata(meta).score
    # the dev sets the shipped calibration came from, unless asked otherwise
    calibrate_on = args.calibrate_on or (meta.get("calibration") or {}).get("sets")
    report["calibrated_on"] = calibrate_on or list(sets)
    for scoring, normalize in scorings.items():
        report[scoring] = calibrated_open_set(sets, sizes=args.sizes, fpir=args.fpir, splits=args.splits,
                                              normalize=normalize, scoring=scoring, calibrate_on=calibrate_on)
        table = (meta.get("calibrations") or {}).get(scoring)
        if table is not None:
            shipped = Calibration.from_dict(table)
            report[f"{scoring}_shipped_in_sample"] = calibrated_open_set(
                sets, sizes=args.sizes, fpir=args.fpir, splits=args.splits, normalize=normalize, scoring=scoring,
                shipped=shipped)
            # the shipped calibration itself on the dev sets it was not fitted on: no halving needed
            unseen = {n: s for n, s in sets.items() if n not in report["calibrated_on"]}
            # how their impostor table differs from the shipped one, from the median to the far tail (what
            # the registry's adaptation has to follow)
            for name, (x, speakers, enroll, probe) in unseen.items():
                _, impostor, who = protocol_trials(x, speakers, enroll, probe, normalize=normalize)
                own = Calibration.fit(impostor, who, source=name, scoring=scoring)
                report.setdefault(f"{scoring}_table_minus_shipped", {})[name] = {
                    str(rate): round(own.score_at(rate) - shipped.score_at(rate), 4)
                    for rate in (0.5, 0.1, 0.01, 1e-3, 1e-4)}
            if unseen:
                report[f"{scoring}_shipped_all_speakers"] = calibrated_open_set(
                    unseen, sizes=args.all_sizes, fpir=args.fpir, splits=args.splits, normalize=normalize,
                    scoring=scoring, shipped=shipped, halve=False)
    report["seconds"] = round(time.monotonic() - t0, 1)
    default = checkpoint_scoring(meta)  # the plot shows the scoring a registry uses by default
    if default not in scorings:  # a checkpoint that names AS-norm but carries no cohort
        default = "cosine"
    report["det_scoring"] = default
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot_open_set_det(report[default], args.out.with_name(args.out.stem + "_det.png"), fpir=args.fpir)
    print(f"FPIR target {args.fpir:.1%}; cross-validated over {args.splits} halvings of each dev set's speakers")
    kinds = ("shipped", "adapted", "own")
    print(f"{'scoring':<8} {'dev set':<15} {'N':>3} " + " ".join(f"{'FPIR ' + k:>13} {'TPIR':>6}" for k in kinds))
    for key in [k for s in scorings for k in (s, f"{s}_shipped_all_speakers") if k in report]:
        scoring = key.replace("_shipped_all_speakers", "") + (" (the shipped calibration, all speakers)"
                                                              if key.endswith("all_speakers") else "")
        for name, rows in report[key].items():
            for size, r in rows.items():
                if size != "det":
                    print(f"{scoring:<8} {name:<15} {size:>3} " + " ".join(
                        f"{r[f'fpir_{k}']:13.2%} {r[f'tpir_{k}']:6.1%}" if f"fpir_{k}" in r else f"{'-':>13} {'-':>6}"
                        for k in kinds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
