"""Do the global (CLS) distillation targets stay informative? Short pretraining runs, one per setting.

    python experiments/ssl/global_targets.py [--variants NAME ...] [--epochs 3] [--out runs/global_targets]

Each variant pretrains the tiny encoder for ``--epochs`` epochs (1 warm-up) on every third `role=train` clip
(667 clips, labels unused) and reads, per epoch, the teacher's global targets from the pretraining log:

- ``H(target)``: mean entropy of one clip's target distribution;
- ``H(mean)``: entropy of the batch-mean target;
- ``I = H(mean) − H(target)``: the information the targets carry about which clip they came from
  (0 when every clip gets the same target; at most log B);
- ``cos``: mean pairwise cosine of the teacher's CLS between clips.

Uniform collapse shows as H(target) → log K (6.93 nats for K = 1024) with I → 0. Writes
`experiments/ssl/results/global_targets.json` (merged with earlier variants) and prints the table. Resumable.
"""

import csv
import sys
from pathlib import Path

from common import parser, previous_rows, write_result

from asit_embed import model
from asit_embed.training.pretrain import PretrainConfig, pretrain
from asit_embed.training.runs import read_log

# variant -> PretrainConfig overrides (ASiT defaults otherwise: 50–70 % GMML corruption for the student,
# independent crops, teacher temperature 0.04, teacher momentum from 0.996)
VARIANTS = {
    "asit_default": {},
    "same_crop": {"view_shift": 0.0},
    "no_corruption": {"mask_ratio": (0.01, 0.02)},
    "no_corruption_tt002": {"mask_ratio": (0.01, 0.02), "teacher_temp": 0.02, "teacher_temp_end": 0.02},
    "tt002": {"teacher_temp": 0.02, "teacher_temp_end": 0.02},
    "koleo03": {"w_koleo": 0.3},
    "koleo03_tt002": {"w_koleo": 0.3, "teacher_temp": 0.02, "teacher_temp_end": 0.02},
}


def subset_manifest(manifest: Path, out: Path) -> Path:
    """Every third `role=train` row, paths made absolute."""
    rows = [r for r in csv.DictReader(open(manifest)) if r["role"] == "train"][::3]
    for r in rows:
        r["path"] = str((manifest.parent / r["path"]).resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def main() -> int:
    p = parser(__doc__, out="runs/global_targets", subset=("--variants", VARIANTS))
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    data = subset_manifest(args.manifest, args.out / "subset.csv")
    rows = previous_rows("global_targets.json", "variants", "variant")
    for name in args.variants:
        run = args.out / name
        cfg = PretrainConfig(data=str(data), out_dir=str(run), encoder=model.asit_tiny().to_dict(),
                             epochs=args.epochs, warmup_epochs=1, seed=args.seed, **VARIANTS[name])
        pretrain(cfg, resume=True)
        recs = read_log(run)[:args.epochs]
        rows[name] = {"variant": name, "overrides": VARIANTS[name], "epochs": args.epochs,
                      "target_entropy": [r["global_target_entropy"] for r in recs],
                      "batch_entropy": [r["global_batch_entropy"] for r in recs],
                      "information": [round(r["global_batch_entropy"] - r["global_target_entropy"], 4) for r in recs],
                      "teacher_cls_cosine": [round(r["teacher_cls_cosine"], 4) for r in recs],
                      "global_loss": [round(r["global"], 4) for r in recs]}
    rows = [rows[name] for name in VARIANTS if name in rows]
    print(f"{'variant':<22} {'H(target) by epoch':<24} {'I by epoch':<24} {'cos by epoch':<20}")
    for r in rows:
        print(f"{r['variant']:<22} {' '.join(f'{x:.2f}' for x in r['target_entropy']):<24} "
              f"{' '.join(f'{x:.2f}' for x in r['information']):<24} "
              f"{' '.join(f'{x:.2f}' for x in r['teacher_cls_cosine']):<20}")
    write_result("global_targets.json", {"settings": {"epochs": args.epochs, "seed": args.seed,
                                                      "clips": "every third role=train clip (667)"}, "variants": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
