"""Does ASiT pretraining help? Arms with the same fine-tuning budget, evaluated on the unseen dev speakers.

    python experiments/ssl/ssl_ablation.py [--arms a_scratch ...] [--finetune-epochs 8] [--out runs/ssl_ablation]

(a) from scratch: AAM fine-tuning only
(b) GMML reconstruction only: `asit-embed pretrain --w-global 0 --w-local 0` (3 epochs), then the same fine-tuning
(c) GMML + local–global distillation: `asit-embed pretrain` (3 epochs, teacher momentum 0.996 → 1)
(c2) the same with `--ema-start 0.99` and 6 epochs: does a teacher that follows the student sooner, and twice
     the pretraining, keep the global (CLS) targets from going uniform as in (c)? (``global_target_entropy``
     in the pretraining log; log(1024) = 6.93 nats is uniform)
(d) the same with informative global targets (`--w-koleo 0.3 --teacher-temp 0.02 --teacher-temp-end 0.02`, which
    keep the targets from going uniform: `experiments/ssl/global_targets.py`), 6 epochs; (d15) the same for 15 epochs
Pretraining uses `role=train` audio only (labels unused); each arm's fine-tuning is identical
(`--init` from its pretrained encoder). Wall times are as measured: run it on an otherwise idle machine
for them to compare. Resumable: a finished arm is read back from its folder; ``--arms`` runs a subset and
merges it into `experiments/ssl/results/ssl_ablation.json`. Prints the table.
"""

import json
import sys
import time

from common import ARMS, parser, previous_rows, pretrain_arm, write_result

from asit_embed.checkpoint import load_checkpoint
from asit_embed.cli import main as cli
from asit_embed.training.runs import read_log

CURVES = ("global", "local", "recon", "koleo", "global_target_entropy", "global_batch_entropy", "teacher_cls_cosine",
          "local_target_entropy")


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
    log = read_log(root / "finetune")
    result = {"arm": name, "dev_eer": best["dev_eer"], "dev_min_dcf": best["dev_min_dcf"], "dev_top1": best["dev_top1"],
              "best_epoch": best["epoch"], "pretrain_epochs": 0 if spec is None else spec[0],
              "finetune_epochs": args.finetune_epochs, "pretrain_minutes": round(pre_seconds / 60, 1),
              "finetune_minutes": round((time.monotonic() - t1) / 60, 1),
              "dev_eer_curve": [round(r["dev_eer"], 4) for r in log if "dev_eer" in r]}
    done.write_text(json.dumps(result, indent=2))
    return result


def main() -> int:
    p = parser(__doc__, out="runs/ssl_ablation", subset=("--arms", ARMS))
    p.add_argument("--finetune-epochs", type=int, default=8)
    args = p.parse_args()
    rows = previous_rows("ssl_ablation.json", "arms", "arm")
    for name in args.arms:
        r = rows[name] = run_arm(name, ARMS[name], args, args.manifest)
        recs = read_log(args.out / name / "pretrain")
        if recs:  # the pretraining curves, per epoch, for reading the result
            r["pretrain_loss_curves"] = {k: [round(x[k], 4) for x in recs] for k in CURVES if k in recs[0]}
    rows = [rows[name] for name in ARMS if name in rows]
    print(f"{'arm':<30} {'pretrain':>9} {'finetune':>9} {'top-1':>7} {'EER':>7} {'minDCF':>7}")
    for r in rows:
        print(f"{r['arm']:<30} {r['pretrain_minutes']:>7.1f}m {r['finetune_minutes']:>7.1f}m {r['dev_top1']:7.1%} "
              f"{r['dev_eer']:7.2%} {r['dev_min_dcf']:7.3f}")
    settings = {k: str(v) for k, v in vars(args).items() if k != "arms"}
    write_result("ssl_ablation.json", {"settings": settings, "arms": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
