"""The model's ablation at equal budget: each step of the recipe as a row, scored on both dev sets.

    python benchmarks/ablation.py --row "previous default=runs/previous_default.pt" \
        --row "+ more voices=runs/more_voices" --row "+ teacher=runs/teacher" [--result PATH]

A row is ``label=PATH``: a checkpoint file, or a training run folder (its ``best.pt`` is scored and its
``config.json`` / ``log.jsonl`` give the recipe, the epochs and the wall time). Every row is scored with the
same protocols as ``benchmarks/accuracy.py`` (speechocean762 ``dev``; the word corpora's cross-domain
``dev``): top-1, EER, minDCF, open-set EER, TPIR at FPIR 1 %. Writes ``benchmarks/results/ablation.json``.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_dev_set_options, dev_sets, print_tables, require, score  # noqa: E402

from asit_embed import load_encoder  # noqa: E402
from asit_embed.training.runs import read_log  # noqa: E402


def recipe(path: Path) -> dict:
    """What a run folder records about how its ``best.pt`` was trained."""
    if not path.is_dir():
        return {"checkpoint": str(path)}
    config = json.loads((path / "config.json").read_text())
    log = read_log(path)
    train = config["train"]
    keep = ("data", "init", "epochs", "epoch_clips", "lr", "layer_decay", "head_warmup_epochs", "speed_speakers",
            "w_teacher", "balance_corpora", "first_corpus_share", "min_crop_frames", "augment", "max_minutes")
    best = min((r for r in log if "dev_eer" in r), key=lambda r: r["dev_eer"])
    return {"checkpoint": str(path / "best.pt"), **{k: train.get(k) for k in keep},
            "train_clips": config.get("train_clips"), "classes": config.get("classes"),
            "epochs_run": log[-1]["epoch"], "best_epoch": best["epoch"],
            "wall_minutes": round(log[-1]["wall_seconds"] / 60, 1),
            "busy_minutes": round(sum(r["epoch_seconds"] for r in log) / 60, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", action="append", required=True, metavar="LABEL=PATH",
                   help="a checkpoint or a training run folder, with the row's label")
    add_dev_set_options(p)
    p.add_argument("--result", type=Path, default=RESULTS / "ablation.json")
    args = p.parse_args()
    require(args.manifest, *args.words)
    sets = dev_sets(args.manifest, args.words)
    rows = []
    for spec in args.row:
        label, _, path = spec.partition("=")
        if not path:
            p.error(f"--row {spec!r}: expected LABEL=PATH")
        path = Path(path)
        info = recipe(path)
        encoder = load_encoder(info["checkpoint"], precision="float32")
        rows.append({"system": label, "fingerprint": encoder.fingerprint, **info,
                     **score(lambda paths: encoder.embed_batch(paths), sets)})
        print(f"scored {label}", file=sys.stderr)
    print_tables(rows, sets)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
