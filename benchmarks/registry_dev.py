"""The dev protocols through ``SpeakerRegistry``: does the registry give what ``asit-embed evaluate`` gives,
and do its two operating points hold their targets on unseen speakers?

    python benchmarks/registry_dev.py [--checkpoint PATH] [--splits 20]

For each dev set (speechocean762; the word corpora): every speaker enrolled from its protocol enrollment
clips; top-1 over all probes must equal the protocol's (``asit_embed.training.metrics.evaluate_embeddings``,
in the scoring the checkpoint names: cosine or AS-norm);
verification at ``verify_threshold``: the share of impostor trials accepted (target: ``far`` = 1 %) and of
target trials rejected. Then open-set identification through real registries: in each of ``--splits``
random halvings of the speakers, N of one half are enrolled (N = 5, 10 and 20, where the half leaves at
least 2 strangers) and the rest of that half call in as strangers; FPIR (strangers accepted as anyone;
target 1 %) and TPIR (enrolled callers named right and accepted), with the shipped calibration as it is (``adapt=False``), adapted to the
enrolled voices (the default) and after ``calibrate()`` on the other half's labelled clips. Writes
``results/registry_dev.json``.
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
from asit_embed.training.metrics import PROTOCOLS, enrollment_split, evaluate_embeddings  # noqa: E402
from enroll import SpeakerRegistry  # noqa: E402


def verification(encoder, emb, speakers, enroll, probe) -> dict:
    reg = SpeakerRegistry(encoder=encoder)
    names = sorted({speakers[i] for i in enroll})
    reg.enroll_many({n: emb[[i for i in enroll if speakers[i] == n]] for n in names}, embeddings=True,
                    allow_duplicates=True)  # the word corpora hold some identical clips
    results = reg.identify_embeddings(emb[probe], k=len(names))
    top1 = np.mean([r[0].name == speakers[i] for i, r in zip(probe, results)])
    threshold = reg.verify_threshold
    fa = sum(m.score >= threshold for i, r in zip(probe, results) for m in r if m.name != speakers[i])
    fr = sum(m.score < threshold for i, r in zip(probe, results) for m in r if m.name == speakers[i])
    return {"top1": round(float(top1), 4), "verify_threshold": round(threshold, 4), "far_target": reg.far,
            "false_accept_rate": round(fa / (len(probe) * (len(names) - 1)), 4),
            "false_reject_rate": round(fr / len(probe), 4), "calibration": reg.operating_points()["calibration"]}


def open_set(encoder, emb, speakers, enroll, probe, *, sizes, splits, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    names = sorted({speakers[i] for i in enroll})
    rows: dict = {}
    for _ in range(splits):
        perm = rng.permutation(names).tolist()
        a, b = perm[: len(names) // 2], perm[len(names) // 2:]
        labelled = {n: emb[[i for i in enroll if speakers[i] == n]] for n in a}
        for size in sizes:
            if size > len(b) - 2:
                continue
            known = rng.permutation(b)[:size].tolist()
            for kind in ("shipped", "adapted", "own"):
                reg = SpeakerRegistry(encoder=encoder, adapt=kind != "shipped")
                reg.enroll_many({n: emb[[i for i in enroll if speakers[i] == n]] for n in known}, embeddings=True,
                                allow_duplicates=True)
                if kind == "own":
                    reg.calibrate(labelled, embeddings=True)
                calls = [i for i in probe if speakers[i] in set(b)]
                answers = reg.identify_embeddings(emb[calls], k=1)
                stranger = [not (speakers[i] in known) for i in calls]
                accepted = [bool(m) and m[0].accepted for m in answers]
                right = [bool(m) and m[0].name == speakers[i] for i, m in zip(calls, answers)]
                row = rows.setdefault(size, {}).setdefault(kind, {"fpir": [], "tpir": [], "threshold": []})
                row["fpir"].append(np.mean([acc for acc, s in zip(accepted, stranger) if s]))
                row["tpir"].append(np.mean([acc and r for acc, r, s in zip(accepted, right, stranger) if not s]))
                row["threshold"].append(reg.identify_threshold())
    return {str(size): {kind: {k: round(float(np.mean(v)), 4) for k, v in r.items()} for kind, r in kinds.items()}
            for size, kinds in rows.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="default: the bundled model")
    add_dev_set_options(p)
    p.add_argument("--splits", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS / "registry_dev.json")
    args = p.parse_args()
    require(args.manifest, *args.words)
    t0 = time.monotonic()
    encoder = load_encoder(args.checkpoint)
    default = SpeakerRegistry(encoder=encoder)  # scores as the checkpoint names (cosine or AS-norm)
    normalize = default.as_norm.score if default.scoring == "as-norm" else None
    report, ok = {"checkpoint": str(args.checkpoint or "default"), "fingerprint": encoder.fingerprint,
                  "scoring": default.scoring}, True
    for name, (items, protocol) in dev_sets(args.manifest, args.words).items():
        emb = encoder.embed_batch([it.path for it in items])
        speakers, keys = [it.speaker for it in items], [it.path for it in items]
        enroll, probe = enrollment_split(keys, speakers, **PROTOCOLS[protocol])
        reference = evaluate_embeddings(emb, speakers, keys, normalize=normalize, **PROTOCOLS[protocol])
        ver = verification(encoder, emb, speakers, enroll, probe)
        ver["top1_matches_protocol"] = ver["top1"] == round(reference.top1, 4)
        ok &= ver["top1_matches_protocol"]
        report[name] = {"verification": ver, "open_set": open_set(encoder, emb, speakers, enroll, probe,
                                                                  sizes=(5, 10, 20), splits=args.splits)}
        print(f"{name}: top-1 {ver['top1']:.2%} (protocol {reference.top1:.2%}); verify threshold "
              f"{ver['verify_threshold']:.3f}: FAR {ver['false_accept_rate']:.2%} (target 1 %), "
              f"FRR {ver['false_reject_rate']:.2%}")
        for size, kinds in report[name]["open_set"].items():
            print(f"  N = {size:>2}: " + "; ".join(f"{k} calibration FPIR {r['fpir']:.2%}, TPIR {r['tpir']:.1%} "
                                                 f"(threshold {r['threshold']:.3f})" for k, r in kinds.items()))
    report["seconds"] = round(time.monotonic() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
