"""Accuracy on unseen speakers, on both dev sets: our encoder vs the peers a user could pick instead.

    python benchmarks/accuracy.py [--previous PATH] [--also LABEL=PATH] [--ecapa-minutes 89] [--skip-ecapa] [--out runs/ecapa]

Systems (each row scored on each dev set with that set's protocol, :data:`asit_embed.training.metrics.PROTOCOLS`):

- asit-embed, the shipped default (``--checkpoint`` scores another one), and ``--previous PATH``: an earlier
  default, e.g. ``git show <rev>:asit_embed/pretrained/default.pt > runs/previous_default.pt`` (more with
  ``--also LABEL=PATH``). Each is scored as a registry scores with it by default: AS-norm against the cohort
  it carries where its metadata names AS-norm (then with a cosine row as well), cosine otherwise.
- Resemblyzer 0.1.4 off the shelf (``pip install 'asit-embed[train]'``), as its README uses it.
- ECAPA-TDNN (C=512, 80-dim SpeechBrain ``Fbank`` with per-utterance mean normalisation, 192-dim embedding;
  ``benchmarks/peers.py``) trained by our own training loop (``asit_embed.training.train.train``) on the
  ``train`` roles of ``--train-data``, so it gets exactly our recipe: 2 s random crops (same-speaker clips
  concatenated), batch 32, AdamW with warm-up + cosine learning rate, AAM-softmax (margin 0.2 ramped in, scale
  30), the same augmentation (frequency masks scaled to 80 mel bins) and the same selection (best
  speechocean762 dev EER). Budget: ``--ecapa-minutes`` (89, our models' supervised budget). Resumable; a
  finished run is read back. ``--skip-ecapa`` scores an existing run only (the row is left out without one).
- MFCC mean + std (20 coefficients), cosine: no training.

Dev sets: speechocean762 ``dev`` (25 speakers, 5 enroll, 15 probes each) and the cross-domain ``dev`` of the
one-second word corpora (speech-commands-test + arabic-speech-commands: speakers with at least 8 words, 3
enroll, up to 20 probes). Figures: top-1, EER, minDCF(0.01), open-set EER and TPIR at FPIR 1 % (half of the
speakers enrolled, the other half calling as strangers, 20 random halvings). Writes
``benchmarks/results/accuracy.json`` (``--result``).
"""

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_dev_set_options, cached, dev_sets, print_tables, require, score  # noqa: E402
from peers import ECAPA_NAME, MFCC_NAME, RESEMBLYZER_NAME, ecapa_network, load_ecapa, mfcc_stats, resemblyzer  # noqa: E402

from asit_embed import load_audio, load_encoder  # noqa: E402
from asit_embed.scoring import ASNorm, checkpoint_scoring  # noqa: E402
from asit_embed.training.augment import AugmentConfig  # noqa: E402
from asit_embed.training.metrics import PROTOCOLS  # noqa: E402
from asit_embed.training.runs import read_log, seed_all  # noqa: E402
from asit_embed.training.train import TrainConfig, train  # noqa: E402

# ECAPA's default budget: the supervised training budget of our earlier models (the from-scratch one used
# 68 + 21 min; the previous default, fine-tuned from 33 min of self-supervised pretraining, 78).
TRAINING_BUDGET_MINUTES = 89
# The shipped model's training on 2 cores (asit_embed/pretrained/MODEL_CARD.md): 33 min of pretraining, 78 min
# of fine-tuning (the previous default), then 55 min of fine-tuning on the three corpora with the teacher.
SHIPPED_TRAINING_MINUTES = 33 + 78 + 34  # the previous default's recipe, then the 1-2 s crop fine-tune


def train_ecapa(args) -> dict | None:
    """Train ECAPA-TDNN into ``args.out`` (or resume it, or read back the finished run): its row, without
    figures (``None`` with ``--skip-ecapa`` and no run)."""
    done = args.out / "ecapa_row.json"
    if done.is_file():
        return json.loads(done.read_text())
    if args.skip_ecapa:
        return None
    # Our recipe, with the SpecAugment masks scaled from 128 to 80 mel bins.
    cfg = TrainConfig(data=tuple(str(d) for d in args.train_data), dev_data=str(args.manifest), out_dir=str(args.out),
                      epochs=args.epochs, eval_every=args.eval_every, seed=args.seed, max_minutes=args.ecapa_minutes,
                      epoch_clips=args.epoch_clips, augment=dataclasses.replace(AugmentConfig(), freq_mask=10))
    seed_all(args.seed)  # the same initial weights in every run
    network = ecapa_network()
    train(cfg, resume=True, network=network)
    history = read_log(args.out)
    best = min((r for r in history if "dev_eer" in r), key=lambda r: r["dev_eer"])
    row = {"system": ECAPA_NAME, "params": sum(p.numel() for p in network.module.parameters()),
           "train_minutes": round(history[-1]["wall_seconds"] / 60, 1), "epochs": history[-1]["epoch"],
           "best_epoch": best["epoch"], "train_data": [str(d) for d in args.train_data]}
    done.write_text(json.dumps(row, indent=2) + "\n")
    return row


def ours(path: Path | None, name: str, minutes) -> list[tuple[dict, object, object]]:
    """Rows for one of our checkpoints, scored as a registry scores by default (its ``scoring`` metadata);
    a checkpoint that names AS-norm gets a cosine row too (``as_norm=False``)."""
    encoder = load_encoder(path)
    row = {"system": name, "params": sum(p.numel() for p in encoder.model.parameters()), "train_minutes": minutes,
           "fingerprint": encoder.fingerprint}
    embed = cached(encoder.embed_batch)  # both rows score the same embeddings
    if checkpoint_scoring(encoder.metadata) == "cosine":
        return [({**row, "scoring": "cosine"}, embed, None)]
    return [({**row, "scoring": "as-norm"}, embed, ASNorm.from_metadata(encoder.metadata).score),
            ({**row, "system": f"{name}, cosine", "scoring": "cosine"}, embed, None)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_options(p)
    p.add_argument("--checkpoint", type=Path, help="our encoder to score (default: the shipped one)")
    p.add_argument("--previous", type=Path, help="an earlier default checkpoint to score beside it")
    p.add_argument("--also", action="append", default=[], metavar="LABEL=PATH",
                   help="another checkpoint to score beside it, under LABEL (repeatable)")
    p.add_argument("--train-data", type=Path, nargs="+", help="ECAPA's training manifests (default: all three)")
    p.add_argument("--ecapa-minutes", type=float, default=TRAINING_BUDGET_MINUTES)
    p.add_argument("--epochs", type=int, default=56, help="length of ECAPA's lr schedule (the budget may stop it first)")
    p.add_argument("--epoch-clips", type=int, help="ECAPA's crops per epoch (default: one per training clip)")
    p.add_argument("--eval-every", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-ecapa", action="store_true", help="do not train ECAPA; score a finished run in --out if any")
    p.add_argument("--out", type=Path, default=Path("runs/ecapa"))
    p.add_argument("--result", type=Path, default=RESULTS / "accuracy.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the training loop logs each epoch
    args.manifest = require(args.manifest, *args.words)
    args.train_data = args.train_data or [args.manifest, *args.words]
    sets = dev_sets(args.manifest, args.words)

    rows = []
    ecapa = train_ecapa(args)
    minutes = SHIPPED_TRAINING_MINUTES if args.checkpoint is None else None
    systems = ours(args.checkpoint, "asit-embed default" if args.checkpoint is None else f"asit-embed {args.checkpoint}",
                   minutes)
    for label, path in [("asit-embed previous default", args.previous), *(a.split("=", 1) for a in args.also)]:
        if path:
            systems += ours(Path(path), label, None)
    teacher = resemblyzer()
    systems.append(({"system": RESEMBLYZER_NAME, "params": sum(p.numel() for p in teacher.encoder.parameters()),
                     "train_minutes": None, "scoring": "cosine"},
                    lambda paths: np.stack([teacher.embed_file(q) for q in paths]), None))
    if ecapa is not None:
        model = load_ecapa(args.out / "best.pt")
        systems.append(({**ecapa, "scoring": "cosine"}, lambda paths: model.embed([load_audio(q) for q in paths]), None))
    systems.append(({"system": MFCC_NAME, "params": 0, "train_minutes": 0, "scoring": "cosine"},
                    lambda paths: np.stack([mfcc_stats(q) for q in paths]), None))
    for row, embed, normalize in systems:
        rows.append({**row, **score(embed, sets, normalize)})
        print(f"scored {row['system']}", file=sys.stderr)

    print_tables(rows, sets)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                       "protocols": {k: PROTOCOLS[v] for k, (_, v) in sets.items()},
                                       "rows": rows, "ecapa_history": read_log(args.out) if ecapa else []},
                                      indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
