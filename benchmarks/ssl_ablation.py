"""Does ASiT pretraining help? Arms with the same fine-tuning budget, evaluated on the unseen dev speakers.

    python benchmarks/ssl_ablation.py [--arms a_scratch ...] [--finetune-epochs 8] [--out runs/ssl_ablation]

(a) from scratch: AAM fine-tuning only
(b) GMML reconstruction only: `asit-embed pretrain --w-global 0 --w-local 0` (3 epochs), then the same fine-tuning
(c) GMML + local–global distillation: `asit-embed pretrain` (3 epochs, teacher momentum 0.996 → 1)
(c2) the same with `--ema-start 0.99` and 6 epochs: does a teacher that follows the student sooner, and twice
     the pretraining, keep the global (CLS) targets from going uniform as in (c)? (``global_target_entropy``
     in the pretraining log; log(1024) = 6.93 nats is uniform)
(d) the same with informative global targets (`--w-koleo 0.3 --teacher-temp 0.02 --teacher-temp-end 0.02`, which
    keep the targets from going uniform: `benchmarks/global_targets.py`), 6 epochs; (d15) the same for 15 epochs
Pretraining uses `role=train` audio only (labels unused); each arm's fine-tuning is identical
(`--init` from its pretrained encoder). Wall times are as measured: run it on an otherwise idle machine
for them to compare. Resumable: a finished arm is read back from its folder; ``--arms`` runs a subset and
merges it into `benchmarks/results/ssl_ablation.json`. Prints the table.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED_MANIFEST, previous_rows, read_log, require  # noqa: E402

from asit_embed.checkpoint import load_checkpoint  # noqa: E402
from asit_embed.cli import main as cli  # noqa: E402

KOLEO = ["--w-koleo", "0.3", "--teacher-temp", "0.02", "--teacher-temp-end", "0.02"]
# arm -> (pretraining epochs, extra `asit-embed pretrain` arguments); None: no pretraining
ARMS = {
    "a_scratch": None,
    "b_recon_only": (3, ["--w-global", "0", "--w-local", "0"]),
    "c_gmml_local_global": (3, []),
    "c2_gmml_local_global_ema099": (6, ["--ema-start", "0.99"]),
    "d_gmml_local_global_koleo": (6, KOLEO),
    "d15_gmml_local_global_koleo": (15, KOLEO),
}
CURVES = ("global", "local", "recon", "koleo", "global_target_entropy", "global_batch_entropy", "teacher_cls_cosine",
          "local_target_entropy")


def pretrain_arm(spec, root: Path, seed: int, manifest: Path) -> Path:
    """Pretrain (or resume, or read back) an arm's encoder into ``root/pretrain``; returns ``encoder.pt``."""
    epochs, extra = spec
    cli(["pretrain", "--data", str(manifest), "--out", str(root / "pretrain"), "--epochs", str(epochs),
         "--warmup-epochs", "1", "--seed", str(seed), "--resume", *extra])
    return root / "pretrain" / "encoder.pt"


def run_arm(name, spec, args, manifest) -> dict:
    root = args.out / name
    done = root / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.monotonic()
    init = []
    pre_seconds = 0.0
    if spec is not None:
        init = ["--init", str(pretrain_arm(spec, root, args.seed, manifest))]
        pre_seconds = time.monotonic() - t0
    t1 = time.monotonic()
    cli(["train", "--data", str(manifest), "--out", str(root / "finetune"), "--epochs", str(args.finetune_epochs),
         "--eval-every", "2", "--seed", str(args.seed), "--resume", *init]
        + ([] if init else ["--preset", "tiny"]))
    best = load_checkpoint(root / "finetune" / "best.pt").metadata["dev"]
    log = read_log(root / "finetune" / "log.jsonl")
    result = {"arm": name, "dev_eer": best["dev_eer"], "dev_min_dcf": best["dev_min_dcf"], "dev_top1": best["dev_top1"],
              "best_epoch": best["epoch"], "pretrain_epochs": 0 if spec is None else spec[0],
              "finetune_epochs": args.finetune_epochs, "pretrain_minutes": round(pre_seconds / 60, 1),
              "finetune_minutes": round((time.monotonic() - t1) / 60, 1),
              "dev_eer_curve": [round(r["dev_eer"], 4) for r in log if "dev_eer" in r]}
    done.write_text(json.dumps(result, indent=2))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=SHARED_MANIFEST)
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--finetune-epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/ssl_ablation"))
    args = p.parse_args()
    manifest = require(args.manifest)
    result_path = RESULTS / "ssl_ablation.json"
    rows = previous_rows(result_path, "arms", "arm")
    for name in args.arms:
        r = rows[name] = run_arm(name, ARMS[name], args, manifest)
        log = args.out / name / "pretrain" / "log.jsonl"
        if log.is_file():  # the pretraining curves, per epoch, for reading the result
            recs = read_log(log)
            r["pretrain_loss_curves"] = {k: [round(x[k], 4) for x in recs] for k in CURVES if k in recs[0]}
    rows = [rows[name] for name in ARMS if name in rows]
    print(f"{'arm':<30} {'pretrain':>9} {'finetune':>9} {'top-1':>7} {'EER':>7} {'minDCF':>7}")
    for r in rows:
        print(f"{r['arm']:<30} {r['pretrain_minutes']:>7.1f}m {r['finetune_minutes']:>7.1f}m {r['dev_top1']:7.1%} "
              f"{r['dev_eer']:7.2%} {r['dev_min_dcf']:7.3f}")
    RESULTS.mkdir(exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items() if k != "arms"}
    result_path.write_text(json.dumps({"settings": settings, "arms": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
