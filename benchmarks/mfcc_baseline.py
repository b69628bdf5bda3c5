"""No-training baseline: mean + std of 20 MFCCs per clip, cosine, the same unseen-speaker protocol.

    python benchmarks/mfcc_baseline.py [--manifest PATH] [--role dev]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchaudio.compliance import kaldi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED_MANIFEST, require  # noqa: E402

from asit_embed.audio import load_audio  # noqa: E402
from asit_embed.data import read_manifest  # noqa: E402
from asit_embed.metrics import evaluate_embeddings  # noqa: E402


def mfcc_stats(path: str) -> np.ndarray:
    mfcc = kaldi.mfcc(torch.from_numpy(load_audio(path)).unsqueeze(0), num_ceps=20, sample_frequency=16000)
    return torch.cat([mfcc.mean(0), mfcc.std(0)]).numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=SHARED_MANIFEST)
    p.add_argument("--role", default="dev")
    p.add_argument("--n-enroll", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS / "mfcc_baseline.json")
    args = p.parse_args()
    items = read_manifest(require(args.manifest), role=args.role)
    t0 = time.monotonic()
    emb = np.stack([mfcc_stats(it.path) for it in items])
    res = evaluate_embeddings(emb, [it.speaker for it in items], [it.path for it in items], n_enroll=args.n_enroll)
    summary = {"system": "MFCC mean+std (20 coeffs), cosine", "role": args.role, **res.summary(),
               "seconds": round(time.monotonic() - t0, 1)}
    print(f"{'system':<36} {'top-1':>7} {'EER':>7} {'minDCF':>7}")
    print(f"{summary['system']:<36} {res.top1:7.1%} {res.eer:7.2%} {res.min_dcf:7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
