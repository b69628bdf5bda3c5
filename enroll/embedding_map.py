"""An embedding map of a registry: every enrolled clip placed in 2-D so that voices that sound alike sit
close together, coloured by speaker (scikit-learn's t-SNE, or PCA for few clips or on request)."""

from __future__ import annotations

import io
import os

import numpy as np


def project(embeddings: np.ndarray, *, method: str = "auto", seed: int = 0) -> np.ndarray:
    """``(n, 2)`` coordinates of ``(n, dim)`` embeddings. ``"auto"``: t-SNE from 10 points on (its
    perplexity kept below the number of points), PCA below that; ``"tsne"`` or ``"pca"`` to choose."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float64)
    if method not in ("auto", "tsne", "pca"):
        raise ValueError(f"method must be 'auto', 'tsne' or 'pca', got {method!r}")
    if len(x) < 3:
        return np.c_[np.arange(len(x), dtype=float), np.zeros(len(x))]
    if method == "pca" or (method == "auto" and len(x) < 10):
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    return TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), metric="cosine", init="pca",
                random_state=seed).fit_transform(x)


def plot_map(names: list[str], embeddings: np.ndarray, out: str | os.PathLike | io.BytesIO, *,
             method: str = "auto", title: str = "") -> None:
    """PNG of the clips of ``names`` (one name per row of ``embeddings``) in 2-D, one colour and label per
    speaker, written to a path or a binary buffer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = project(embeddings, method=method)
    speakers = sorted(set(names))
    fig, ax = plt.subplots(figsize=(7, 5.5))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(speakers):
        pts = xy[[j for j, n in enumerate(names) if n == name]]
        ax.scatter(pts[:, 0], pts[:, 1], s=28, color=cmap(i % 20), label=name if len(speakers) <= 20 else None)
        ax.annotate(name, pts.mean(0), fontsize=8, ha="center", va="bottom")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title or f"{len(speakers)} speakers, {len(names)} clips: near means alike")
    if len(speakers) <= 20:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
