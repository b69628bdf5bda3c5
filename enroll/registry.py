"""``SpeakerRegistry``: enroll speakers without retraining, identify by nearest neighbour, verify.

SQLite (:mod:`enroll.store`) holds the truth; the FAISS index (:mod:`enroll.index`) is derived from it and
brought up to date whenever the store's version moves, including by another process writing the same
registry: only the speakers changed since the index's version are re-read and re-indexed. The index only
proposes candidates; their scores are always computed exactly from the templates in the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from enroll.index import IndexConfig, TemplateIndex
from enroll.scoring import ASNorm
from enroll.store import ClipRecord, Store

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5  # used only when the encoder's checkpoint carries no calibrated threshold
MAX_NAME = 100
AS_NORM_POOL = 50   # candidates re-scored with AS-norm, which can reorder them
QUERY_BLOCK = 1024  # queries ranked at a time, bounding the candidate templates held in memory


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
        index: an :class:`IndexConfig`, or its ``kind``: ``"auto"`` (exact search below 20 000 speakers,
            IVF above), ``"flat"`` or ``"ivf"``.

    >>> reg = SpeakerRegistry()
    >>> import numpy as np
    >>> e = np.eye(reg.encoder.dim, dtype=np.float32)
    >>> _ = reg.enroll("ada", [e[0]]); _ = reg.enroll("bob", [e[1]])
    >>> reg.identify(e[0] + 0.1 * e[1], k=2)[0].name
    'ada'
    """

    def __init__(self, path: str | os.PathLike | None = None, *, encoder=None, threshold: float | None = None,
                 as_norm: bool = False, cohort: np.ndarray | None = None, index: IndexConfig | str = "auto"):
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
        self.index = TemplateIndex(self.dim, IndexConfig(kind=index) if isinstance(index, str) else index)
        self._unsaved = 0   # speaker changes in the in-memory index but not in the index file
        path = self._index_file()
        if path is not None and self.index.load(path, fingerprint=encoder.fingerprint, store=self.store.uid):
            self._saved_version = self.index.version
        else:
            self._saved_version = None
        self._sync()

    # --- lifecycle ------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the index file if the in-memory index has moved past it (``close()`` does this too)."""
        path = self._index_file()
        if path is not None and self.index.version != self._saved_version:
            self.index.save(path, fingerprint=self.encoder.fingerprint, store=self.store.uid)
            self._saved_version, self._unsaved = self.index.version, 0

    def close(self) -> None:
        try:
            self.flush()
        finally:
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

    def _sync(self) -> None:
        """Bring the index up to the store's version: re-index the speakers changed since the index's
        version, or rebuild it when those are unknown or many, or when its size calls for another kind."""
        if self.store.version() == self.index.version and not self.index.needs_rebuild(len(self.index)):
            return
        with self.store.snapshot():  # the version, the change set and the templates, all of one state
            version, n = self.store.version(), self.store.count()
            changed = None if self.index.version > version else self.store.changed_since(self.index.version)
            if changed is None or len(changed) > max(len(self.index), n) // 2 or self.index.needs_rebuild(n):
                changed = None
                ids, templates = self.store.templates()
            else:
                ids, templates = self.store.templates(changed)
        if changed is None:
            self.index.rebuild(ids, templates, version)
            self._unsaved = max(1, len(ids))
        else:
            self.index.update(changed, ids, templates, version)
            self._unsaved += len(changed)
        if self._unsaved >= max(1, self.index.config.flush_fraction * len(self.index)):
            self.flush()

    # --- inputs ---------------------------------------------------------------------------------------------
    def _embed(self, clips: Sequence, sample_rate: int | None) -> list[ClipRecord]:
        records = []
        for clip in clips:
            if isinstance(clip, (np.ndarray, torch.Tensor)) and sample_rate is None:
                emb = np.asarray(clip, dtype=np.float32)
                records.append(ClipRecord(self._unit(emb[None])[0], None, hashlib.sha256(emb.tobytes()).hexdigest()))
                continue
            wave = self.encoder.load(clip, sample_rate)
            emb = self.encoder.embed_waveforms([wave])[0]
            records.append(ClipRecord(emb, wave.shape[0] / self.encoder.sample_rate,
                                      hashlib.sha256(wave.tobytes()).hexdigest()))
        return records

    def _unit(self, emb: np.ndarray) -> np.ndarray:
        """``emb (n, dim)`` embeddings, checked and scaled to unit norm."""
        if emb.shape[1:] != (self.dim,):
            raise TypeError(f"an array without sample_rate is taken as an embedding of shape ({self.dim},), "
                            f"got {emb.shape[1:]}; pass sample_rate= for a waveform")
        norm = np.sqrt(np.einsum("nd,nd->n", emb, emb, dtype=np.float64))[:, None]
        if not (np.isfinite(norm).all() and norm.all()):
            raise ValueError("embedding has NaN/Inf values or zero norm")
        return (emb / norm).astype(np.float32)

    def _query(self, clips: Sequence, sample_rate: int | None) -> np.ndarray:
        if sample_rate is None and all(isinstance(c, np.ndarray) and c.shape == (self.dim,) for c in clips):
            return self._unit(np.asarray(clips, dtype=np.float32))  # embeddings, checked all at once
        return np.stack([r.embedding for r in self._embed(clips, sample_rate)])

    @staticmethod
    def _clip_list(name: str, clips, sample_rate: int | None) -> list:
        if isinstance(clips, (str, bytes, os.PathLike)) or (
                isinstance(clips, (np.ndarray, torch.Tensor)) and (sample_rate is not None or clips.ndim == 1)):
            clips = [clips]
        clips = list(clips)
        if not clips:
            raise ValueError(f"no clips given to enroll {name!r}")
        return clips

    # --- API ------------------------------------------------------------------------------------------------
    def enroll(self, name: str, clips, *, sample_rate: int | None = None, replace: bool = False) -> Speaker:
        """Enroll ``name`` from one clip or a list (paths, bytes, file objects, waveforms with ``sample_rate``,
        or ``(dim,)`` embeddings). An existing name gains the clips unless ``replace=True``. All clips are
        embedded before anything is written, so a bad clip leaves the registry unchanged."""
        name = validate_name(name)
        records = self._embed(self._clip_list(name, clips, sample_rate), sample_rate)
        self.store.add_clips(name, records, replace=replace)
        self._sync()
        return self.speaker(name)

    def enroll_many(self, speakers: Mapping[str, object] | Iterable[tuple[str, object]], *,
                    sample_rate: int | None = None, replace: bool = False) -> int:
        """Enroll many speakers in one transaction: ``{name: clips}`` or ``(name, clips)`` pairs, clips as
        for :meth:`enroll`. Every name is checked and every clip embedded before anything is written, so
        one bad item leaves the registry unchanged. Returns the number of speakers written.

        For bulk imports: one commit and one index update for all of them instead of one per speaker.

        >>> reg = SpeakerRegistry()
        >>> e = np.eye(reg.encoder.dim, dtype=np.float32)
        >>> reg.enroll_many({"ada": [e[0], e[2]], "bob": [e[1]]})
        2
        >>> reg.identify(e[1], k=1)[0].name
        'bob'
        """
        items = speakers.items() if isinstance(speakers, Mapping) else speakers
        batch, seen = [], set()
        for name, clips in items:
            name = validate_name(name)
            if name in seen:
                raise ValueError(f"speaker {name!r} is given twice; merge its clips into one entry")
            seen.add(name)
            batch.append((name, self._embed(self._clip_list(name, clips, sample_rate), sample_rate)))
        if batch:
            self.store.add_many(batch, replace=replace)
            self._sync()
        return len(batch)

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
        """Top-``k`` matches for each of ``queries (n, dim)`` unit embeddings.

        The index proposes candidates; each is scored exactly against its template in the store.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        self._sync()
        return [m for i in range(0, len(queries), QUERY_BLOCK) for m in self._rank(queries[i:i + QUERY_BLOCK], k)]

    def _rank(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        candidates = self.index.search(queries, k if self.as_norm is None else max(k, AS_NORM_POOL))
        ids, names, templates = self.store.lookup(candidates[candidates >= 0])
        if not len(ids):  # nobody enrolled, or every candidate removed since the index was brought up to date
            return [[] for _ in queries]
        rows = np.minimum(np.searchsorted(ids, candidates), len(ids) - 1)
        scores = np.einsum("nd,nkd->nk", queries, templates[rows])
        if self.as_norm is not None:
            mu_t, sd_t = self.as_norm.stats(templates)
            scores = self.as_norm.normalize(scores, queries, mu_t[rows], sd_t[rows])
        scores[ids[rows] != candidates] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        rows, scores = np.take_along_axis(rows, order, 1).tolist(), np.take_along_axis(scores, order, 1).tolist()
        return [[Match(names[r], s, s >= self.threshold) for r, s in zip(rrow, srow) if s > -np.inf]
                for rrow, srow in zip(rows, scores)]

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
