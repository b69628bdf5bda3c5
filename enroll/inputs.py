"""What the registry accepts besides audio, checked before anything is stored: precomputed embeddings,
waveform arrays with their rate, and ``k``."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from enroll.store import ClipRecord


def unit_rows(vectors, dim: int, what: str) -> np.ndarray:
    """``vectors``, ``(dim,)`` or ``(n, dim)`` numbers, checked and returned as ``(n, dim)`` float32 rows of
    unit norm; ``what`` names them in errors.

    >>> unit_rows([3.0, 4.0], 2, "query")
    array([[0.6, 0.8]], dtype=float32)
    """
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().cpu().float().numpy()
    try:
        x = np.asarray(vectors)
    except ValueError as err:  # a ragged list
        raise ValueError(f"{what} must have shape ({dim},) or (n, {dim}): {err}") from None
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be numeric arrays, got {type(vectors).__name__} of dtype {x.dtype} "
                        "(audio clips go to enroll(), identify() and verify())")
    x = x.reshape(0, dim) if x.shape == (0,) else x[None] if x.ndim == 1 else x  # [] is no vectors
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape ({dim},) or (n, {dim}), got {np.shape(vectors)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    norm = np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64))
    bad = np.flatnonzero(~(np.isfinite(norm) & (norm > 0)))
    if len(bad):
        raise ValueError(f"{what}: row {bad[0]} has NaN/Inf values or zero norm")
    return (x / norm[:, None]).astype(np.float32)


def embedding_records(name: str, vectors, dim: int) -> list[ClipRecord]:
    """One record per precomputed embedding of ``name``'s clips (unit rows; no duration; the hash of the
    vector stands for the clip's)."""
    embeddings = unit_rows(vectors, dim, f"embeddings of {name!r}")
    if not len(embeddings):
        raise ValueError(f"no embeddings given to enroll {name!r}")
    return [ClipRecord(emb, None, hashlib.sha256(emb.tobytes()).hexdigest()) for emb in embeddings]


def clip_rate(clip, sample_rate: int | None, instead: str) -> int | None:
    """The rate to decode ``clip`` with: ``sample_rate`` for a waveform array, which needs one; None for an
    encoded clip (a path, bytes, a file object), which carries its own. ``instead`` names the call that takes
    embeddings, for the error on an array without a rate."""
    if not isinstance(clip, (np.ndarray, torch.Tensor)):
        return None
    if sample_rate is None:
        raise TypeError(f"got an array of shape {tuple(clip.shape)} but no sample_rate: pass sample_rate= if it "
                        f"is a waveform, or use {instead} if it holds precomputed embeddings")
    return sample_rate


def check_k(k: int) -> None:
    """``k`` best matches: a whole number of at least 1."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a whole number of at least 1, got {k!r}")
