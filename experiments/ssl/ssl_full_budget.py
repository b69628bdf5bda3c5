"""Pretraining at the shipped model's training budget: does ASiT pretraining beat training from scratch?

    python experiments/ssl/ssl_full_budget.py [--minutes 89] [--out runs/ssl_full_budget] [--baseline SCRATCH.pt]

`experiments/ssl/ssl_ablation.py` compares arms after 8 fine-tuning epochs. This script gives the best of them,
(d15) (15 epochs of GMML + local–global pretraining with KoLeo, on `role=train` audio without labels), the
same training budget as the from-scratch model that was the bundled default until the pretrained one
replaced it: 89 minutes of supervised training on the same 100 training speakers (the from-scratch model
used 68 min at full band, then 21 min band-limited to 3.8 kHz; here all 89 min are band-limited, as the
shipped model must be for 8 kHz audio):

    asit-embed train --init D15/encoder.pt --max-freq-hz 3800 --epochs 90 --batch-size 32 --lr 1e-3 \\
        --eval-every 3 --max-minutes 89 --seed 0

Both models are then scored on the same unseen-speaker protocol (25 dev speakers, 5 enrollment clips
each; what ``asit-embed evaluate`` does). The from-scratch baseline is read from git history (the
bundled default at ``SCRATCH_REV``) unless ``--baseline`` names a checkpoint. Resumable: pretraining
and fine-tuning resume from their folders, and a finished run is read back (the budget counts earlier
runs). Run it on an otherwise idle machine: the budget is wall time. Writes
`experiments/ssl/results/ssl_full_budget.json` and prints the comparison.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ARMS, REPO, parser, pretrain_arm, write_result

from asit_embed.checkpoint import load_checkpoint
from asit_embed.cli import main as cli
from asit_embed.training.runs import read_log

ARM = "d15_gmml_local_global_koleo"
SCRATCH_REV = "6d6bec7423248455d38c36c082c4ab4bf05e57ea"  # the last from-scratch bundled default was committed here


def scratch_checkpoint(workdir: Path) -> Path:
    """The from-scratch model, as it was bundled at ``SCRATCH_REV``."""
    out = workdir / "scratch_default.pt"
    try:
        blob = subprocess.run(["git", "-C", str(REPO), "show", f"{SCRATCH_REV}:asit_embed/pretrained/default.pt"],
                              check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"cannot read the from-scratch checkpoint from git ({e}); pass --baseline")
    out.write_bytes(blob)
    return out


def score(checkpoint: Path, manifest: Path, workdir: Path) -> dict:
    """``asit-embed evaluate`` of ``checkpoint`` on the dev speakers (float32): its JSON summary."""
    out = workdir / f"{checkpoint.stem}_dev.json"
    cli(["evaluate", "--data", str(manifest), "--role", "dev", "--checkpoint", str(checkpoint), "--out", str(out)])
    summary = json.loads(out.read_text())
    return {k: v for k, v in summary.items() if k not in ("checkpoint", "data")}  # the settings name both


def main() -> int:
    p = parser(__doc__, out="runs/ssl_full_budget")
    p.add_argument("--minutes", type=float, default=89.0, help="fine-tuning wall-clock budget")
    p.add_argument("--pretrained-dir", type=Path, default=Path("runs/ssl_ablation") / ARM,
                   help="where (d15)'s pretraining lives or goes (shared with ssl_ablation.py)")
    p.add_argument("--baseline", type=Path, help="the from-scratch checkpoint (default: read from git history)")
    args = p.parse_args()
    manifest = args.manifest

    t0 = time.monotonic()
    encoder_pt = pretrain_arm(ARMS[ARM], args.pretrained_dir, args.seed, manifest)
    pre_log = read_log(args.pretrained_dir / "pretrain")
    cli(["train", "--data", str(manifest), "--out", str(args.out), "--init", str(encoder_pt), "--max-freq-hz", "3800",
         "--epochs", "90", "--batch-size", "32", "--lr", "1e-3", "--eval-every", "3",
         "--max-minutes", str(args.minutes), "--seed", str(args.seed), "--resume"])
    log = read_log(args.out)
    best = load_checkpoint(args.out / "best.pt").metadata["dev"]

    with tempfile.TemporaryDirectory() as tmp:
        baseline = args.baseline or scratch_checkpoint(Path(tmp))
        scratch = score(baseline, manifest, Path(tmp))
        pretrained = score(args.out / "best.pt", manifest, Path(tmp))
    result = {
        "settings": {"manifest": str(manifest), "minutes": args.minutes, "seed": args.seed, "arm": ARM,
                     "baseline": str(args.baseline or f"git {SCRATCH_REV}:asit_embed/pretrained/default.pt")},
        "pretrained": {**pretrained, "pretrain_epochs": len(pre_log),
                       "pretrain_minutes": round(pre_log[-1]["wall_seconds"] / 60, 1),
                       "finetune_epochs": log[-1]["epoch"], "finetune_minutes": round(log[-1]["wall_seconds"] / 60, 1),
                       "best_epoch": best["epoch"],
                       "dev_eer_curve": {r["epoch"]: round(r["dev_eer"], 4) for r in log if "dev_eer" in r}},
        "scratch": scratch,
        "relative_eer_reduction": round(1 - pretrained["eer"] / scratch["eer"], 3),
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(f"{'model':<12} {'top-1':>7} {'EER':>7} {'minDCF':>7}")
    for name, r in (("scratch", result["scratch"]), ("pretrained", result["pretrained"])):
        print(f"{name:<12} {r['top1']:7.1%} {r['eer']:7.2%} {r['min_dcf']:7.3f}")
    pre = result["pretrained"]
    print(f"pretrained: {pre['pretrain_epochs']} pretraining epochs ({pre['pretrain_minutes']} min), "
          f"{pre['finetune_epochs']} training epochs ({pre['finetune_minutes']} min), "
          f"best at epoch {pre['best_epoch']}")
    print(f"relative EER reduction from pretraining: {result['relative_eer_reduction']:.1%}")
    write_result("ssl_full_budget.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
