"""The dev protocol through ``SpeakerRegistry``: does the registry give what ``asit-embed evaluate`` gives,
and does the calibrated threshold hold its false-accept rate on unseen speakers?

    python benchmarks/registry_dev.py [--checkpoint PATH] [--manifest PATH]

Enrolls each of the 25 dev speakers from its first 5 clips (sorted by path), identifies the other 375 clips
(top-1 must equal the protocol's top-1 from ``asit_embed.training.metrics.evaluate_embeddings``), then counts how
often a probe is accepted for a speaker it is not (false-accept rate on impostor trials) and how often it
is rejected for its own speaker, with and without AS-norm.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED_MANIFEST, require  # noqa: E402

from asit_embed import load_encoder  # noqa: E402
from asit_embed.training.data import read_manifest  # noqa: E402
from asit_embed.training.metrics import enrollment_split, evaluate_embeddings  # noqa: E402
from enroll import SpeakerRegistry  # noqa: E402


def run(encoder, items, emb, *, as_norm: bool) -> dict:
    speakers, keys = [it.speaker for it in items], [it.path for it in items]
    enroll, probe = enrollment_split(keys, speakers)
    reg = SpeakerRegistry(encoder=encoder, as_norm=as_norm)
    for name in sorted(set(speakers)):
        reg.enroll_embeddings(name, emb[[i for i in enroll if speakers[i] == name]])
    n = len(reg)
    results = reg.identify_embeddings(emb[probe], k=n)
    top1 = np.mean([r[0].name == speakers[i] for i, r in zip(probe, results)])
    fa = sum(m.accepted for i, r in zip(probe, results) for m in r if m.name != speakers[i])
    fr = sum(not m.accepted for i, r in zip(probe, results) for m in r if m.name == speakers[i])
    n_imp, n_tgt = len(probe) * (n - 1), len(probe)
    open_set = np.mean([(r[0].name == speakers[i]) and r[0].accepted for i, r in zip(probe, results)])
    return {"as_norm": as_norm, "threshold": round(reg.threshold, 4), "top1": round(float(top1), 4),
            "false_accept_rate": round(fa / n_imp, 4), "false_reject_rate": round(fr / n_tgt, 4),
            "accepted_and_correct": round(float(open_set), 4), "impostor_trials": n_imp, "target_trials": n_tgt}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="default: the bundled model")
    p.add_argument("--manifest", type=Path, default=SHARED_MANIFEST)
    p.add_argument("--out", type=Path, default=RESULTS / "registry_dev.json")
    args = p.parse_args()
    items = read_manifest(require(args.manifest), role="dev")
    t0 = time.monotonic()
    encoder = load_encoder(args.checkpoint)
    emb = encoder.embed_batch([it.path for it in items])
    protocol = evaluate_embeddings(emb, [it.speaker for it in items], [it.path for it in items])
    rows = [run(encoder, items, emb, as_norm=False), run(encoder, items, emb, as_norm=True)]
    report = {"protocol": protocol.summary(), "registry": rows,
              "top1_matches_protocol": rows[0]["top1"] == round(protocol.top1, 4),
              "far_target": round(protocol.eer, 4), "seconds": round(time.monotonic() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(protocol, rows)
    return 0 if report["top1_matches_protocol"] else 1


def print_summary(protocol, rows: list[dict]) -> None:
    print(f"protocol (asit-embed evaluate): top-1 {protocol.top1:.2%}  EER {protocol.eer:.2%}")
    print(f"{'scoring':<10} {'threshold':>9} {'top-1':>7} {'FAR':>7} {'FRR':>7} {'open-set correct':>17}")
    for r in rows:
        print(f"{'AS-norm' if r['as_norm'] else 'cosine':<10} {r['threshold']:9.3f} {r['top1']:7.2%} "
              f"{r['false_accept_rate']:7.2%} {r['false_reject_rate']:7.2%} {r['accepted_and_correct']:17.2%}")


if __name__ == "__main__":
    sys.exit(main())
