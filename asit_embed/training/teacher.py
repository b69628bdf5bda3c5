"""A training-time teacher: Resemblyzer's GE2E speaker encoder (``pip install 'asit-embed[train]'``).

Resemblyzer (Apache-2.0; trained on thousands of VoxCeleb and LibriSpeech speakers, its weights inside the
wheel) has heard far more voices than our training corpora hold. Its utterance embedding of every
training clip is computed once and cached (:func:`teacher_embeddings`); fine-tuning then adds a
distillation term (:class:`TeacherHead`): the student's embedding, through a small linear projection that
is dropped after training, should point where the teacher's does. Inference never needs Resemblyzer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asit_embed.audio import load_audio

log = logging.getLogger(__name__)

TEACHER_DIM = 256  # Resemblyzer's embedding size


class Resemblyzer:
    """Resemblyzer off the shelf: ``embed(wave)`` of a 16 kHz mono float32 clip -> ``(256,)`` unit vector.

    Its own preprocessing runs first (volume normalisation, webrtcvad trimming of silences); a clip that
    trimming would shorten below 0.3 s (a one-second word with little voiced audio) is embedded untrimmed.
    """

    def __init__(self):
        try:
            from resemblyzer import VoiceEncoder, preprocess_wav
        except ImportError as err:
            raise ImportError("the Resemblyzer teacher needs the training extra: pip install 'asit-embed[train]' "
                              f"({err})") from err
        self.encoder, self.preprocess = VoiceEncoder("cpu", verbose=False), preprocess_wav

    def embed(self, wave: np.ndarray) -> np.ndarray:
        trimmed = self.preprocess(wave, source_sr=16000)
        return self.encoder.embed_utterance(trimmed if trimmed.size >= 4800 else wave).astype(np.float32)

    def embed_file(self, path: str | os.PathLike) -> np.ndarray:
        """:meth:`embed` of an audio file, decoded by our loader at 16 kHz (any length it holds)."""
        return self.embed(load_audio(path, sample_rate=16000, min_seconds=0.0))


def teacher_embeddings(paths: Sequence[str], cache: str | os.PathLike, *, save_every: int = 500) -> np.ndarray:
    """``(len(paths), 256)`` float32 Resemblyzer utterance embeddings, read from / added to ``cache`` (.npz).

    The cache maps each clip's path to its embedding; missing clips are embedded (and the cache rewritten
    every ``save_every`` clips, so an interrupted run resumes). Clips are decoded with our loader at 16 kHz.
    """
    cache = Path(cache)
    known = load_cache(cache) if cache.is_file() else {}
    missing = [p for p in dict.fromkeys(paths) if p not in known]
    if missing:
        log.info("teacher: embedding %d of %d clips into %s", len(missing), len(paths), cache)
        teacher = Resemblyzer()
        for n, path in enumerate(missing, 1):
            known[path] = teacher.embed_file(path)
            if n % save_every == 0 or n == len(missing):
                save_cache(cache, known)
                log.info("teacher: %d / %d", n, len(missing))
    return np.stack([known[p] for p in paths])


def load_cache(cache: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{path: embedding}`` from a .npz cache that :func:`save_cache` wrote, in its order."""
    with np.load(cache) as z:
        return dict(zip(z["paths"].tolist(), z["embeddings"]))


def save_cache(cache: Path, known: dict[str, np.ndarray]) -> None:
    """Write ``{path: embedding}`` to the .npz ``cache`` atomically (a reader never sees half a file)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, paths=np.array(list(known)), embeddings=np.stack(list(known.values())))
    os.replace(tmp, cache)


class TeacherHead(nn.Module):
    """The distillation loss, averaged over the rows where ``mask`` is True; dropped after training.

    - ``1 − cos(projection, teacher)``: a linear projection of the student's embedding into the teacher's
      space should point where the teacher's embedding does.
    - ``relation`` > 0 adds that weight times a relational term (Park et al., "Relational Knowledge
      Distillation", CVPR 2019): the mean squared difference between the batch's pairwise cosines of the
      student's own embeddings and those of the teacher's, centred on ``teacher_mean`` (the teacher's mean
      over the training clips; Resemblyzer's vectors are non-negative, so its raw cosines between different
      speakers sit near 0.5, where the student's sit near 0). It shapes the student's scores themselves,
      which the projection term leaves free.
    """

    def __init__(self, student_dim: int, teacher_dim: int = TEACHER_DIM, *, relation: float = 0.0,
                 teacher_mean: torch.Tensor | None = None):
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_dim)
        self.relation = relation
        self.register_buffer("teacher_mean", torch.zeros(teacher_dim) if teacher_mean is None else teacher_mean,
                             persistent=False)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            if not mask.any():
                return self.proj(student).sum() * 0.0  # keeps the graph (DDP needs every parameter used)
            student, teacher = student[mask], teacher[mask]
        loss = (1 - F.cosine_similarity(self.proj(student), teacher, dim=1)).mean()
        if self.relation > 0 and len(student) > 1:
            loss = loss + self.relation * relational_loss(student, teacher - self.teacher_mean)
        return loss


def relational_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the pairwise cosines (off the diagonal) of two ``(n, ·)`` batches."""
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return ((s @ s.T - t @ t.T)[off] ** 2).mean()
