"""Backends over a checkpoint without whitening: the shipped whitening of its 192-dim embedding, a linear
discriminant analysis of the 576-dim features the embedding head reads (CLS token ⊕ attentive mean and
standard deviation of the patch tokens), and the two side by side.

    python experiments/backend/prehead_lda.py runs/shipped_before.pt

``runs/shipped_before.pt`` is ``git show e230b89:asit_embed/pretrained/default.pt`` (the shipped default's
network, before its whitening). Every ``train`` clip of the three corpora and both dev sets are embedded
twice with the checkpoint's windows, once as shipped (192-dim) and once up to the head's input (576-dim;
windows averaged as unit vectors as the encoder does). The discriminant analyses are fitted on the ``train``
clips only (316 speakers; scikit-learn, eigen solver, shrunk within-speaker covariance, speakers weighted
alike); the pre-head one keeps its first K directions (at most 315, one fewer than the speakers). "Side by
side" joins the two unit vectors with weights √a and √(1 − a), so its cosine is a·cos(shipped) +
(1 − a)·cos(pre-head). Each row is scored on both dev sets with AS-norm against 4 clips of every training
speaker (top 200), as ``tools/whiten.py`` scores the shipped whitening. K, the shrinkage and a were chosen
by looking at these dev figures, so the best rows are optimistic. Writes ``results/prehead_lda.json``.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from _common import DATA  # noqa: E402
from whiten import COHORT_CLIPS, dev_figures  # noqa: E402

from asit_embed.checkpoint import load_checkpoint  # noqa: E402
from asit_embed.encoder import SpeakerEncoder  # noqa: E402
from asit_embed.scoring import cohort_clips  # noqa: E402
from asit_embed.training.backend import fit_whitening  # noqa: E402
from asit_embed.training.data import load_sources  # noqa: E402


class PreHead(SpeakerEncoder):
    """The encoder up to its embedding head's input: ``(n, 576)`` unit rows."""

    def __init__(self, checkpoint):
        super().__init__(checkpoint)
        self.model.head, self.model.head_norm = torch.nn.Identity(), torch.nn.Identity()

    @property
    def dim(self) -> int:
        return 3 * self.config.width


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a checkpoint without whitening")
    p.add_argument("--result", type=Path, default=Path(__file__).resolve().parent / "results" / "prehead_lda.json")
    args = p.parse_args()
    manifest = DATA / "speechocean762" / "manifest.csv"
    words = [DATA / "speech-commands-test" / "manifest.csv", DATA / "arabic-speech-commands" / "manifest.csv"]
    train = load_sources([manifest, *words], role="train")
    dev = {"speechocean762": load_sources(manifest, role="dev"), "words": load_sources(words, role="dev")}
    ckpt = load_checkpoint(args.checkpoint)
    if any(k.startswith("whitening.") for k in ckpt.state_dict):
        p.error(f"{args.checkpoint} is whitened already")
    speakers = np.array([it.speaker for it in train])
    cohort = cohort_clips([it.path for it in train], list(speakers), COHORT_CLIPS)
    emb, pre = {}, {}
    for out, encoder in ((emb, SpeakerEncoder(ckpt)), (pre, PreHead(ckpt))):
        for name, items in {"train": train, **dev}.items():
            out[name] = encoder.embed_batch([it.path for it in items], progress=True)

    mean, matrix = fit_whitening(emb["train"], list(speakers))
    shipped = {name: unit((unit(x) - mean) @ matrix) for name, x in emb.items()}
    rows = []

    def add(system: str, vectors: dict, **settings) -> None:
        figures = dev_figures({n: (dev[n], vectors[n]) for n in dev}, vectors["train"][cohort])["as-norm"]
        rows.append({"system": system, **settings, **figures})
        print(f"{system:<48}", "  ".join(
            f"{n}: top-1 {m['top1']:.1%} EER {m['eer']:.2%} minDCF {m['min_dcf']:.3f} os-EER "
            f"{m['open_set_eer']:.1%} TPIR {m['tpir_at_fpir']:.1%}" for n, m in figures.items()), flush=True)

    add("shipped whitening (192)", shipped)
    for shrinkage in (0.1, 0.2):
        # the same analysis as the shipped whitening (its rows are unit already), but only the first K directions
        centre, scalings = fit_whitening(pre["train"], list(speakers), shrinkage=shrinkage)
        for k in (192, 315):
            lda = {name: unit((x - centre) @ scalings[:, :k]) for name, x in pre.items()}
            add(f"pre-head LDA, shrinkage {shrinkage:g}, K {k}", lda, shrinkage=shrinkage, k=k)
            if k == 315:
                for a in (0.5, 0.7):
                    both = {n: np.hstack([np.sqrt(a) * shipped[n], np.sqrt(1 - a) * lda[n]]) for n in lda}
                    add(f"side by side, a {a:g} (shrinkage {shrinkage:g}, K {k})", both, shrinkage=shrinkage, k=k, a=a)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps({"checkpoint": str(args.checkpoint), "train_clips": len(train),
                                       "train_speakers": len(set(speakers)), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
