"""Accuracy on unseen speakers, on both dev sets: our encoder vs the peers a user could pick instead.

    python benchmarks/accuracy.py [--previous PATH] [--also LABEL=PATH] [--out runs/ecapa]
                                  [--train-ecapa [--ecapa-minutes 89] | --skip-ecapa]

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
  finished run in ``--out`` is read back. Its embeddings of both dev sets are stored with its training record
  beside the result (``--ecapa-embeddings``; ``benchmarks/results/accuracy_ecapa.npz`` for the default
  ``--result``, 2 MB), so that a later run scores the same network without the 1.5 hours of training: with
  no run in ``--out``, the stored embeddings are scored when they come from a run with the same training
  settings (the row says so, and when and how long that network trained); ``--train-ecapa`` trains anew
  instead. ``--skip-ecapa``: never train (the row is left out when there is neither a run nor stored
  embeddings).
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
import os
import sys
import time
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


def ecapa_config(args) -> TrainConfig:
    """Our recipe for ECAPA-TDNN, with the SpecAugment masks scaled from 128 to 80 mel bins."""
    return TrainConfig(data=tuple(str(d) for d in args.train_data), dev_data=str(args.manifest), out_dir=str(args.out),
                       epochs=args.epochs, eval_every=args.eval_every, seed=args.seed, max_minutes=args.ecapa_minutes,
                       epoch_clips=args.epoch_clips, augment=dataclasses.replace(AugmentConfig(), freq_mask=10))


def train_ecapa(args) -> dict | None:
    """Train ECAPA-TDNN into ``args.out`` (or resume it, or read back the finished run): its row, without
    figures (``None`` with ``--skip-ecapa`` and no run)."""
    done = args.out / "ecapa_row.json"
    if done.is_file():
        return json.loads(done.read_text())
    if args.skip_ecapa:
        return None
    seed_all(args.seed)  # the same initial weights in every run
    network = ecapa_network()
    train(ecapa_config(args), resume=True, network=network)
    history = read_log(args.out)
    best = min((r for r in history if "dev_eer" in r), key=lambda r: r["dev_eer"])
    row = {"system": ECAPA_NAME, "params": sum(p.numel() for p in network.module.parameters()),
           "train_minutes": round(history[-1]["wall_seconds"] / 60, 1), "epochs": history[-1]["epoch"],
           "best_epoch": best["epoch"], "train_data": [str(d) for d in args.train_data]}
    done.write_text(json.dumps(row, indent=2) + "\n")
    return row


def ecapa_system(args, sets: dict) -> tuple[dict, object, list] | None:
    """ECAPA-TDNN's row (without figures), ``embed(paths)`` over the dev sets and its training log: the network
    of a run in ``--out`` (trained first where needed), whose dev embeddings are then stored; or, with no run
    there and no ``--train-ecapa``, the stored embeddings of an earlier run trained with the same settings.
    ``None`` with ``--skip-ecapa`` and neither."""
    stored, root = args.ecapa_embeddings, data_root(args)
    if not (args.out / "ecapa_row.json").is_file() and not args.train_ecapa and stored.is_file():
        found = read_ecapa_embeddings(stored, sets, root, training_key(dataclasses.asdict(ecapa_config(args)), root))
        if found is not None:
            return found
        print(f"{stored} holds an ECAPA-TDNN trained with other settings than these", file=sys.stderr)
    row = train_ecapa(args)
    if row is None:
        return None
    best = args.out / "best.pt"
    row = {**row, "trained": time.strftime("%Y-%m-%d", time.gmtime(best.stat().st_mtime))}
    model = load_ecapa(best)
    embeddings = {name: model.embed([load_audio(it.path) for it in items]) for name, (items, _) in sets.items()}
    history = read_log(args.out)
    key = training_key(json.loads((args.out / "config.json").read_text())["train"], root)  # as the run trained
    write_ecapa_embeddings(stored, row, history, key, sets, embeddings, root)
    lookup = {it.path: e for name, (items, _) in sets.items() for it, e in zip(items, embeddings[name])}
    return row, lambda paths: np.stack([lookup[q] for q in paths]), history


def data_root(args) -> Path:
    """The folder the corpora are named under in the stored embeddings (their common parent), so the file holds
    no machine's absolute paths."""
    return Path(os.path.commonpath([os.path.abspath(Path(m).parent.parent) for m in (args.manifest, *args.words)]))


def training_key(config: dict, root: Path) -> dict:
    """What makes one ECAPA-TDNN run another: its training config (a ``TrainConfig`` as a dict), with the
    corpora named under ``root`` and without the folder it was written to."""
    key = {k: v for k, v in json.loads(json.dumps(config)).items() if k not in ("out_dir", "progress")}
    key["data"] = [os.path.relpath(d, root) for d in key["data"]]
    key["dev_data"] = key["dev_data"] and os.path.relpath(key["dev_data"], root)
    return key


def write_ecapa_embeddings(path: Path, row: dict, history: list, key: dict, sets: dict, embeddings: dict,
                           root: Path) -> None:
    """The dev embeddings of each set beside their clips' names, the row, the training log and its settings."""
    row = {**row, "train_data": [os.path.relpath(d, root) for d in row["train_data"]]}
    arrays = {"row": np.array(json.dumps(row)), "history": np.array(json.dumps(history)),
              "config": np.array(json.dumps(key))}
    for name, (items, _) in sets.items():
        arrays[f"{name}/clips"] = np.array([os.path.relpath(it.path, root) for it in items])
        arrays[f"{name}/embeddings"] = embeddings[name].astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def read_ecapa_embeddings(path: Path, sets: dict, root: Path, key: dict) -> tuple[dict, object, list] | None:
    """The stored row, an ``embed(paths)`` that looks the dev clips up, and the training log; ``None`` when the
    stored network was trained with other settings than ``key``. Exits with a clear message when a dev clip
    has no stored embedding (other dev sets than the run saw: ``--train-ecapa``)."""
    with np.load(path) as f:
        if json.loads(str(f["config"])) != key:
            return None
        row = {**json.loads(str(f["row"])), "embeddings": f"stored in {path.name} by the run that trained it"}
        history = json.loads(str(f["history"]))
        lookup = {}
        for name in sets:
            if f"{name}/clips" in f:
                lookup.update(zip((str(c) for c in f[f"{name}/clips"]), f[f"{name}/embeddings"]))
    missing = [it.path for items, _ in sets.values() for it in items if os.path.relpath(it.path, root) not in lookup]
    if missing:
        sys.exit(f"{path} holds no ECAPA-TDNN embedding of {len(missing)} dev clips (e.g. {missing[0]}): "
                 f"train it on these dev sets with --train-ecapa, or leave it out with --skip-ecapa")
    return row, lambda paths: np.stack([lookup[os.path.relpath(q, root)] for q in paths]), history


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
    ecapa = p.add_mutually_exclusive_group()
    ecapa.add_argument("--train-ecapa", action="store_true",
                       help="train ECAPA into --out (or resume it) even when stored embeddings exist")
    ecapa.add_argument("--skip-ecapa", action="store_true",
                       help="never train ECAPA: score a finished run in --out or the stored embeddings, if any")
    p.add_argument("--ecapa-embeddings", type=Path,
                   help="ECAPA's stored dev embeddings, written after scoring a run, read when there is none "
                        "(default: beside --result, RESULT_ecapa.npz)")
    p.add_argument("--out", type=Path, default=Path("runs/ecapa"))
    p.add_argument("--result", type=Path, default=RESULTS / "accuracy.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the training loop logs each epoch
    args.manifest = require(args.manifest, *args.words)
    args.train_data = args.train_data or [args.manifest, *args.words]
    args.ecapa_embeddings = args.ecapa_embeddings or args.result.with_name(f"{args.result.stem}_ecapa.npz")
    sets = dev_sets(args.manifest, args.words)

    rows = []
    ecapa = ecapa_system(args, sets)
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
        systems.append(({**ecapa[0], "scoring": "cosine"}, ecapa[1], None))
    systems.append(({"system": MFCC_NAME, "params": 0, "train_minutes": 0, "scoring": "cosine"},
                    lambda paths: np.stack([mfcc_stats(q) for q in paths]), None))
    for row, embed, normalize in systems:
        rows.append({**row, **score(embed, sets, normalize)})
        print(f"scored {row['system']}", file=sys.stderr)

    print_tables(rows, sets)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                       "protocols": {k: PROTOCOLS[v] for k, (_, v) in sets.items()},
                                       "rows": rows, "ecapa_history": ecapa[2] if ecapa else []},
                                      indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
