"""What the tools that turn a trained checkpoint into the shipped default share: where the corpora and results
live, the options naming them and the inference windows, and reading the checkpoint with those windows."""

import argparse
import dataclasses
from pathlib import Path

from asit_embed.checkpoint import Checkpoint, load_checkpoint
from asit_embed.training.data import load_sources

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"  # beside the other measurements of the shipped model


def add_data_options(p: argparse.ArgumentParser) -> None:
    """``checkpoint``, ``out``, ``--manifest`` (speechocean762), ``--words`` (the word corpora) and the windows."""
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--manifest", type=Path, default=DATA / "speechocean762" / "manifest.csv")
    p.add_argument("--words", type=Path, nargs="+", default=[DATA / "speech-commands-test" / "manifest.csv",
                                                              DATA / "arabic-speech-commands" / "manifest.csv"])
    p.add_argument("--window-frames", type=int, help="windows of a long clip (default: the checkpoint's)")
    p.add_argument("--hop-frames", type=int, help="hop between the windows of a long clip (default: the checkpoint's)")


def load_with_windows(p: argparse.ArgumentParser, args: argparse.Namespace, needs: str) -> Checkpoint:
    """``args.checkpoint`` with the windows asked for, once the corpora ``needs`` are there (else a usage error)."""
    for path in (args.manifest, *args.words):
        if not path.is_file():
            p.error(f"manifest {path} not found: {needs} needs the corpora of ../shared/data (pass --manifest / --words)")
    ckpt = load_checkpoint(args.checkpoint)
    windows = {k: v for k, v in (("window_frames", args.window_frames), ("hop_frames", args.hop_frames)) if v is not None}
    if windows:
        try:  # the config checks the hop against the window
            ckpt = dataclasses.replace(ckpt, config=ckpt.config.replace(**windows))
        except ValueError as err:
            p.error(f"--window-frames / --hop-frames: {err}")
    return ckpt


def train_and_dev(args: argparse.Namespace) -> tuple[list, dict]:
    """The ``train`` clips of all three corpora, and the two dev sets by name."""
    train = load_sources([args.manifest, *args.words], role="train")
    dev = {"speechocean762": load_sources(args.manifest, role="dev"), "words": load_sources(args.words, role="dev")}
    return train, dev
