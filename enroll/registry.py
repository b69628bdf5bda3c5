"""``SpeakerRegistry``: enroll speakers without retraining, identify by nearest neighbour, verify.

SQLite (:mod:`enroll.store`) holds the truth; the FAISS index (:mod:`enroll.index`) is derived from it and
refreshed whenever the store's version moves, including by another process writing the same registry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from enroll.index import TemplateIndex
from enroll.scoring import ASNorm
from enroll.store import ClipRecord, Store

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5  # used only when the encoder's checkpoint carries no calibrated threshold
MAX_NAME = 100


class RegistryError(ValueError):
    """A registry cannot be opened or changed as asked."""


class EncoderMismatchError(RegistryError):
    """The registry was built with another encoder; its embeddings are not comparable."""


class UnknownSpeakerError(KeyError):
    """No speaker of that name is enrolled."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown speaker"


@dataclass(frozen=True)
class Match:
    name: str
    score: float
    accepted: bool


@dataclass(frozen=True)
class Speaker:
    name: str
    n_clips: int
    seconds: float
    created: float
    updated: float


class SpeakerRegistry:
    """A persistent (``path``) or in-memory (``path=None``) registry of enrolled speakers.

    Args:
        path: directory holding ``registry.sqlite`` and ``index.faiss``; created if missing.
        encoder: a :class:`asit_embed.SpeakerEncoder`; default :func:`asit_embed.load_encoder`.
        threshold: score at or above which a match is accepted; default: the threshold calibrated on the
            dev speakers and stored in the encoder's checkpoint.
        as_norm: score with adaptive symmetric normalisation against a cohort.
        cohort: ``(m, dim)`` cohort embeddings for AS-norm; default: the training speakers shipped with
            the checkpoint.

    >>> reg = SpeakerRegistry()
    >>> import numpy as np
    >>> e = np.eye(reg.encoder.dim, dtype=np.float32)
    >>> _ = reg.enroll("ada", [e[0]]); _ = reg.enroll("bob", [e[1]])
    >>> reg.identify(e[0] + 0.1 * e[1], k=2)[0].name
    'ada'
    """

    def __init__(self, path: str | os.PathLike | None = None, *, encoder=None, threshold: float | None = None,
                 as_norm: bool = False, cohort: np.ndarray | None = None):
        if encoder is None:
            from asit_embed import load_encoder

            encoder = load_encoder()
        self.encoder = encoder
        self.dim = int(encoder.dim)
        self.path = None if path is None else Path(path)
        if self.path is not None:
            if self.path.exists() and not self.path.is_dir():
                raise RegistryError(f"registry path {str(self.path)!r} exists and is not a directory")
            self.path.mkdir(parents=True, exist_ok=True)
        self.store = Store(":memory:" if self.path is None else str(self.path / "registry.sqlite"))
        self._check_encoder()
        meta = getattr(encoder, "metadata", {}) or {}
        self.as_norm = None
        if as_norm:
            cohort = meta.get("cohort") if cohort is None else cohort
            if cohort is None:
                raise RegistryError("as_norm=True needs a cohort: pass cohort= or use a checkpoint that ships one")
            self.as_norm = ASNorm(np.asarray(cohort, dtype=np.float32))
        key = "threshold_asnorm" if as_norm else "threshold"
        if threshold is None:
            threshold = meta.get(key)
            if threshold is None:
                log.warning("encoder carries no calibrated %s; using %.2f", key, DEFAULT_THRESHOLD)
                threshold = DEFAULT_THRESHOLD
        self.threshold = float(threshold)
        self.index = TemplateIndex(self.dim)
        self._names: dict[int, str] = {}
        self._template_stats: tuple[np.ndarray, np.ndarray] | None = None
        self._sync(load_file=True)

    # --- lifecycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SpeakerRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_encoder(self) -> None:
        fp = self.encoder.fingerprint
        with self.store.transaction() as db:
            have = self.store.get_meta("encoder_fingerprint")
            if have is None:
                self.store.set_meta(db, "encoder_fingerprint", fp)
                self.store.set_meta(db, "dim", str(self.dim))
        if have is not None and have != fp:
            where = "in-memory registry" if self.path is None else f"registry {str(self.path)!r}"
            raise EncoderMismatchError(f"{where} was built with encoder {have}, but the encoder given is {fp}; "
                                       "embeddings of different encoders cannot be compared (re-enroll, or "
                                       "open it with the encoder it was built with)")

    def _index_file(self) -> Path | None:
        return None if self.path is None else self.path / "index.faiss"

    def _sync(self, *, load_file: bool = False) -> None:
        """Bring the index up to the store's version (load the saved file if current, else rebuild)."""
        version = self.store.version()
        if self.index.version == version:
            return
        ids, templates, names = self.store.templates()
        self._names = dict(zip(ids.tolist(), names))
        path = self._index_file()
        fp = self.encoder.fingerprint
        if not (load_file and path is not None and self.index.load(path, version=version, fingerprint=fp)):
            self.index.rebuild(ids, templates, version)
            if path is not None:
                self.index.save(path, version=version, fingerprint=fp)
        self._template_stats = None
        if self.as_norm is not None and len(ids):
            self._template_stats = self.as_norm.stats(templates)
            self._stat_row = {sid: i for i, sid in enumerate(ids.tolist())}

    # --- inputs ---------------------------------------------------------------------------------------------
    def _embed(self, clips: Sequence, sample_rate: int | None) -> list[ClipRecord]:
        records = []
        for clip in clips:
            if isinstance(clip, (np.ndarray, torch.Tensor)) and sample_rate is None:
                emb = np.asarray(clip, dtype=np.float32)
                if emb.shape != (self.dim,):
                    raise TypeError(f"an array without sample_rate is taken as an embedding of shape ({self.dim},), "
                                    f"got {emb.shape}; pass sample_rate= for a waveform")
                norm = float(np.linalg.norm(emb))
                if not np.isfinite(emb).all() or norm == 0:
                    raise ValueError("embedding has NaN/Inf values or zero norm")
                records.append(ClipRecord(emb / norm, None, hashlib.sha256(emb.tobytes()).hexdigest()))
                continue
            wave = self.encoder.load(clip, sample_rate)
            emb = self.encoder.embed_waveforms([wave])[0]
            records.append(ClipRecord(emb, wave.shape[0] / self.encoder.sample_rate,
                                      hashlib.sha256(wave.tobytes()).hexdigest()))
        return records

    def _query(self, clips: Sequence, sample_rate: int | None) -> np.ndarray:
        return np.stack([r.embedding for r in self._embed(clips, sample_rate)])

    # --- API ------------------------------------------------------------------------------------------------
    def enroll(self, name: str, clips, *, sample_rate: int | None = None, replace: bool = False) -> Speaker:
        """Enroll ``name`` from one clip or a list (paths, bytes, file objects, waveforms with ``sample_rate``,
        or ``(dim,)`` embeddings). An existing name gains the clips unless ``replace=True``. All clips are
        embedded before anything is written, so a bad clip leaves the registry unchanged."""
        name = validate_name(name)
        if isinstance(clips, (str, bytes, os.PathLike)) or (
                isinstance(clips, (np.ndarray, torch.Tensor)) and (sample_rate is not None or clips.ndim == 1)):
            clips = [clips]
        clips = list(clips)
        if not clips:
            raise ValueError(f"no clips given to enroll {name!r}")
        records = self._embed(clips, sample_rate)
        self.store.add_clips(name, records, replace=replace)
        self._sync()
        return self.speaker(name)

    def speaker(self, name: str) -> Speaker:
        info = self.store.speaker_info(name)
        if info is None:
            raise UnknownSpeakerError(f"no speaker named {name!r} is enrolled")
        return Speaker(name, info["n_clips"], info["seconds"], info["created"], info["updated"])

    def identify(self, clip, *, k: int = 5, sample_rate: int | None = None) -> list[Match]:
        """Best ``k`` speakers for ``clip``, best first; nobody accepted means "unknown"."""
        return self.identify_batch([clip], k=k, sample_rate=sample_rate)[0]

    def identify_batch(self, clips: Sequence, *, k: int = 5, sample_rate: int | None = None) -> list[list[Match]]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = self._query(list(clips), sample_rate)
        return self.rank(queries, k=k)

    def rank(self, queries: np.ndarray, *, k: int = 5) -> list[list[Match]]:
        """Top-``k`` matches for each of ``queries (n, dim)`` unit embeddings."""
        self._sync()
        pool = k if self.as_norm is None else max(k, 50)
        scores, ids = self.index.search(queries, pool)
        if self.as_norm is not None and ids.size:
            mu_t, sd_t = self._template_stats
            rows = np.vectorize(self._stat_row.__getitem__, otypes=[np.int64])(ids)
            scores = self.as_norm.normalize(scores, queries, mu_t[rows], sd_t[rows])
            order = np.argsort(-scores, axis=1, kind="stable")
            scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        return [[Match(self._names[int(i)], float(s), bool(s >= self.threshold))
                 for s, i in zip(srow[:k], irow[:k]) if i >= 0] for srow, irow in zip(scores, ids)]

    def verify(self, name: str, clip, *, sample_rate: int | None = None) -> Match:
        """Score ``clip`` against ``name``'s template; ``accepted`` says whether it is that speaker."""
        info = self.store.speaker_info(name)
        if info is None:
            raise UnknownSpeakerError(f"no speaker named {name!r} is enrolled")
        query = self._query([clip], sample_rate)
        score = query @ info["template"][:, None]
        if self.as_norm is not None:
            mu_t, sd_t = self.as_norm.stats(info["template"][None])
            score = self.as_norm.normalize(score, query, mu_t[:, None], sd_t[:, None])
        s = float(score[0, 0])
        return Match(name, s, s >= self.threshold)

    def remove(self, name: str) -> None:
        if not self.store.remove(name):
            raise UnknownSpeakerError(f"no speaker named {name!r} is enrolled")
        self._sync()

    def rename(self, old: str, new: str) -> None:
        new = validate_name(new)
        if self.store.speaker_id(old) is None:
            raise UnknownSpeakerError(f"no speaker named {old!r} is enrolled")
        if old != new and self.store.speaker_id(new) is not None:
            raise RegistryError(f"cannot rename {old!r} to {new!r}: {new!r} is already enrolled")
        self.store.rename(old, new)
        self._sync()

    def names(self) -> list[str]:
        return self.store.names()

    def __len__(self) -> int:
        return self.store.count()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.store.speaker_id(name) is not None


def validate_name(name: str) -> str:
    """A speaker name: a non-empty string of at most 100 printable characters, no surrounding spaces."""
    if not isinstance(name, str):
        raise TypeError(f"speaker name must be a string, got {type(name).__name__}")
    if not name or name != name.strip() or len(name) > MAX_NAME:
        raise ValueError(f"speaker name {name!r} must be 1–{MAX_NAME} characters without surrounding spaces")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ValueError(f"speaker name {name!r} contains control characters")
    return name
