"""Adaptive symmetric score normalisation (AS-norm) against a cohort of other speakers' embeddings.

No dependency ships AS-norm for embeddings in a reusable form (SpeechBrain keeps it inside a recipe), so
it is written here: for a trial (e, t) with raw cosine s, each side's mean and std of its top-N cohort
scores give ``0.5 * ((s - μ_e) / σ_e + (s - μ_t) / σ_t)``.
"""

from __future__ import annotations

import numpy as np


DEFAULT_TOP_N = 50  # for a cohort that does not say (checkpoints whose cohort is one mean per training speaker)


class ASNorm:
    def __init__(self, cohort: np.ndarray, *, top_n: int = DEFAULT_TOP_N):
        cohort = np.ascontiguousarray(cohort, dtype=np.float32)
        if cohort.ndim != 2 or len(cohort) < 2:
            raise ValueError(f"cohort must be (m >= 2, dim) embeddings, got shape {cohort.shape}")
        self.cohort = cohort / np.linalg.norm(cohort, axis=1, keepdims=True)
        self.top_n = min(top_n, len(cohort))

    @classmethod
    def from_metadata(cls, metadata: dict, cohort: np.ndarray | None = None) -> "ASNorm | None":
        """The AS-norm a checkpoint ships (its ``cohort`` with its ``cohort_top_n``), or ``None`` when it ships
        no cohort. A ``cohort`` given replaces the shipped one and is scored with :data:`DEFAULT_TOP_N`."""
        if cohort is not None:
            return cls(np.asarray(cohort, dtype=np.float32))
        if metadata.get("cohort") is None:
            return None
        return cls(np.asarray(metadata["cohort"], dtype=np.float32),
                   top_n=int(metadata.get("cohort_top_n", DEFAULT_TOP_N)))

    def stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of each row's top-N cohort scores: two ``(n,)`` float32 arrays."""
        s = np.asarray(x, dtype=np.float32) @ self.cohort.T
        top = -np.partition(-s, self.top_n - 1, axis=1)[:, : self.top_n]
        return top.mean(1), top.std(1) + 1e-6

    def normalize(self, scores: np.ndarray, queries: np.ndarray, mu_t: np.ndarray, sd_t: np.ndarray) -> np.ndarray:
        """AS-norm of ``scores (n, k)`` for ``queries (n, dim)`` against templates with stats ``(n, k)``."""
        mu_e, sd_e = self.stats(queries)
        return 0.5 * ((scores - mu_e[:, None]) / sd_e[:, None] + (scores - mu_t) / sd_t)

    def score(self, scores: np.ndarray, queries: np.ndarray, templates: np.ndarray) -> np.ndarray:
        """AS-norm of ``scores (n, m)``, the cosines of ``queries (n, dim)`` against ``templates (m, dim)``."""
        mu_t, sd_t = self.stats(templates)
        return self.normalize(scores, queries, np.broadcast_to(mu_t, scores.shape), np.broadcast_to(sd_t, scores.shape))


def checkpoint_scoring(metadata: dict) -> str:
    """The scoring a checkpoint recommends, which a registry uses unless told otherwise: ``"as-norm"`` where its
    ``scoring`` metadata names it (``tools/calibrate.py --scoring``), else ``"cosine"``."""
    return "as-norm" if (metadata or {}).get("scoring") == "as-norm" else "cosine"


def cohort_clips(paths: list[str], speakers: list[str], per_speaker: int) -> list[int]:
    """Indices of ``per_speaker`` clips of every speaker, evenly spaced through its clips sorted by path
    (all of them for a speaker with fewer), speakers in sorted order."""
    by_speaker: dict[str, list[int]] = {}
    for i, s in enumerate(speakers):
        by_speaker.setdefault(s, []).append(i)
    picked = []
    for s in sorted(by_speaker):
        idx = sorted(by_speaker[s], key=lambda i: paths[i])
        n = min(per_speaker, len(idx))
        picked += [idx[k * len(idx) // n] for k in range(n)]
    return picked
