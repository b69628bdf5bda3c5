"""The whitening a checkpoint adds after training: a linear discriminant analysis of its training speakers.

A network trained with AAM-softmax on a few hundred speakers leaves the spread of one speaker's clips larger
in some directions than in others, and a cosine weighs every direction alike. Scikit-learn's
:class:`~sklearn.discriminant_analysis.LinearDiscriminantAnalysis` (``solver="eigen"``) finds the directions
in which that within-speaker spread is the same (its ``scalings_``, normalised to unit within-class
variance) with a shrunk within-class covariance; every speaker counts alike (uniform priors), so a speaker
with many clips does not set the directions. All ``d`` directions are kept: the map is a change of basis,
not a reduction, so the embedding keeps its size. The centre is the mean of the speakers' means.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

DEFAULT_SHRINKAGE = 0.1  # chosen on the dev sets among 0.05 / 0.1 / 0.2 (README, "Whitening")


def fit_whitening(embeddings: np.ndarray, speakers: Sequence[str], *,
                  shrinkage: float = DEFAULT_SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (d,), matrix (d, d))`` float32 for :class:`asit_embed.model.Whitening`, from the embeddings of
    training clips (normalised here) and their speakers.

    >>> rng = np.random.default_rng(0)
    >>> centres = rng.standard_normal((6, 4))
    >>> x = np.repeat(centres, 20, axis=0) + 0.05 * rng.standard_normal((120, 4)) * [1, 1, 1, 8]
    >>> mean, matrix = fit_whitening(x, [s for s in "abcdef" for _ in range(20)])
    >>> mean.shape, matrix.shape
    ((4,), (4, 4))
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(speakers)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"embeddings of shape {x.shape} do not match {len(labels)} speaker labels")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or Inf")
    if not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage {shrinkage} must lie in [0, 1]")
    names, counts = np.unique(labels, return_counts=True)
    if len(names) < 2 or (counts < 2).all():
        raise ValueError(f"a whitening needs at least 2 speakers with 2+ clips; got {len(names)} speakers")
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage, priors=np.full(len(names), 1 / len(names)))
    with warnings.catch_warnings():  # a speaker with one clip adds no spread ("Only one sample available")
        warnings.simplefilter("ignore", UserWarning)
        lda.fit(x, labels)
    mean = lda.priors_ @ lda.means_  # the solver keeps no centre of its own; the speakers' means, each alike
    return mean.astype(np.float32), lda.scalings_.astype(np.float32)
