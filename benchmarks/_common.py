"""Shared helpers for the benchmark scripts (they read the corpora in ../shared/data)."""

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_MANIFEST = DATA / "speechocean762" / "manifest.csv"
WORD_MANIFESTS = (DATA / "speech-commands-test" / "manifest.csv", DATA / "arabic-speech-commands" / "manifest.csv")
RESULTS = Path(__file__).resolve().parent / "results"


def require(*paths: Path) -> Path:
    """Exit with a clear message when a corpus is not beside the checkout; returns the first path."""
    for path in paths:
        if not Path(path).is_file():
            print(f"manifest {path} not found: the benchmarks need the corpora of ../shared/data "
                  f"(pass --manifest / --words)", file=sys.stderr)
            sys.exit(2)
    return Path(paths[0])


def add_dev_set_options(parser) -> None:
    """``--manifest`` and ``--words``: where the two dev sets of :func:`dev_sets` are read from."""
    parser.add_argument("--manifest", type=Path, default=SHARED_MANIFEST, help="speechocean762 manifest")
    parser.add_argument("--words", type=Path, nargs="+", default=list(WORD_MANIFESTS),
                        help="the word corpora's manifests")


def dev_sets(manifest: Path, words: Sequence[Path]) -> dict:
    """The two dev sets and their protocols: ``{name: (items, protocol name)}``."""
    from asit_embed.training.data import load_sources

    return {"speechocean762": (load_sources(manifest, role="dev"), "speechocean762"),
            "words": (load_sources(list(words), role="dev"), "words")}


def training_cohort(manifest: Path, words: Sequence[Path], per_speaker: int = 4) -> tuple[list[str], list[str]]:
    """The AS-norm cohort ``tools/calibrate.py`` ships, as clips: ``per_speaker`` clips of every ``train``
    speaker of the three corpora (paths, speakers)."""
    from asit_embed.scoring import cohort_clips
    from asit_embed.training.data import load_sources

    train = load_sources([manifest, *words], role="train")
    picked = cohort_clips([it.path for it in train], [it.speaker for it in train], per_speaker)
    return [train[i].path for i in picked], [train[i].speaker for i in picked]


def cached(embed: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    """``embed`` that embeds each list of paths once: a system scored several ways embeds the dev sets once."""
    cache: dict = {}

    def embed_once(paths):
        key = tuple(paths)
        if key not in cache:
            cache[key] = embed(list(paths))
        return cache[key]
    return embed_once


def score(embed: Callable[[list[str]], np.ndarray], sets: dict, normalize: Callable | None = None) -> dict:
    """``embed(paths) -> (n, dim)`` scored on every dev set of :func:`dev_sets` with its protocol: top-1, EER,
    minDCF, open-set EER, TPIR at FPIR 1 % (``{set name: summary}``); ``normalize``: a scoring other than
    cosine (:func:`asit_embed.training.metrics.evaluate_embeddings`)."""
    from asit_embed.training.metrics import PROTOCOLS, evaluate_embeddings

    out = {}
    for name, (items, protocol) in sets.items():
        emb = embed([it.path for it in items])
        res = evaluate_embeddings(emb, [it.speaker for it in items], [it.path for it in items], open_set=True,
                                  normalize=normalize, **PROTOCOLS[protocol])
        out[name] = res.summary()
    return out


def print_tables(rows: list[dict], sets: dict) -> None:
    """One table per dev set: a row per system (``rows[i][set name]`` as :func:`score` gives it)."""
    for name in sets:
        first = rows[0][name]
        print(f"\n{name} dev: {first['n_speakers']} unseen speakers, {first['n_enroll']} enrollment clips each, "
              f"{first['n_probes']} probes")
        print(f"{'system':<46} {'top-1':>7} {'EER':>7} {'minDCF':>7} {'os-EER':>7} {'TPIR@1%':>8}")
        for r in rows:
            m = r[name]
            print(f"{r['system']:<46} {m['top1']:7.1%} {m['eer']:7.2%} {m['min_dcf']:7.3f} {m['open_set_eer']:7.2%} "
                  f"{m['tpir_at_fpir']:8.1%}")
