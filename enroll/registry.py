"""``SpeakerRegistry``: enroll speakers without retraining, identify by nearest neighbour, verify.

SQLite (:mod:`enroll.store`) holds the truth; the FAISS index (:mod:`enroll.index`) is derived from it and
brought up to date whenever the store's version moves, including by another process writing the same
registry: only the speakers changed since the index's version are re-read and re-indexed. The index only
proposes candidates; their scores are always computed exactly from the templates in the store.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from asit_embed.calibration import Calibration, impostor_scores
from asit_embed.scoring import ASNorm, checkpoint_scoring
from enroll.errors import EncoderMismatchError, RegistryError, UnknownSpeakerError
from enroll.index import IndexConfig, TemplateIndex
from enroll.operating import DEFAULT_FAR, DEFAULT_FPIR, OperatingPoints
from enroll.inputs import check_k, clip_rate, embedding_records, unit_rows
from enroll.records import Match, Speaker, Turn, merge_turns, normalize_name, validate_name
from enroll.store import ClipRecord, Store

log = logging.getLogger(__name__)

AS_NORM_POOL = 50   # candidates re-scored with AS-norm, which can reorder them
QUERY_BLOCK = 1024  # queries ranked at a time, bounding the candidate templates held in memory


class SpeakerRegistry:
    """A persistent (``path``) or in-memory (``path=None``) registry of enrolled speakers.

    Audio goes to :meth:`enroll`, :meth:`identify` and :meth:`verify`: paths, encoded bytes, binary file
    objects, or waveform arrays with their ``sample_rate``. Precomputed embeddings go to
    :meth:`enroll_embeddings` and :meth:`identify_embeddings`; an array is never guessed to be one or the
    other from its shape.

    Args:
        path: directory holding ``registry.sqlite`` and ``index.faiss``; created if missing.
        encoder: a :class:`asit_embed.SpeakerEncoder`; default :func:`asit_embed.load_encoder`.
        far: verification's operating point: the share of impostor trials :meth:`verify` accepts.
        fpir: identification's operating point: the share of unknown callers :meth:`identify` accepts as
            someone enrolled, *at the registry's current size* (the threshold rises as speakers enroll).
        threshold: a fixed score at or above which both accept, instead of the calibrated operating points.
        as_norm: score with adaptive symmetric normalisation against a cohort; ``None`` (the default): as
            the checkpoint recommends (its ``scoring`` metadata, ``"as-norm"`` or ``"cosine"``; cosine when
            it names none).
        cohort: ``(m, dim)`` cohort embeddings for AS-norm, each side scored against its top 50; default:
            the training clips shipped with the checkpoint, with its ``cohort_top_n``.
        index: an :class:`IndexConfig`, or its ``kind``: ``"auto"`` (exact search below 20 000 speakers,
            IVF above), ``"flat"`` or ``"ivf"``.
        readonly: open an existing registry for queries only (also from a read-only directory or medium):
            changes raise :class:`~enroll.errors.ReadOnlyRegistryError`; the index is kept in memory.
        vad: keep only the speech of every clip (Silero VAD; ``pip install 'asit-embed[vad]'``); a clip
            without speech is an :class:`~asit_embed.AudioError`. Default: the encoder's setting.
        adapt: map the shipped calibration to the enrolled voices (by how impostor scores among them differ
            from the calibration data's; :meth:`Calibration.adapted
            <asit_embed.calibration.Calibration.adapted>`) once 5 speakers are enrolled; cosine scoring only
            (an AS-norm calibration is used as fitted). A registry's own :meth:`calibrate` is used as it is.

    >>> reg = SpeakerRegistry()
    >>> e = np.eye(reg.encoder.dim, dtype=np.float32)
    >>> _ = reg.enroll_embeddings("ada", e[0]); _ = reg.enroll_embeddings("bob", e[1])
    >>> [m.name for m in reg.identify_embeddings(e[0] + 0.1 * e[1], k=2)[0]]
    ['ada', 'bob']
    """

    def __init__(self, path: str | os.PathLike | None = None, *, encoder=None, far: float = DEFAULT_FAR,
                 fpir: float = DEFAULT_FPIR, threshold: float | None = None, as_norm: bool | None = None,
                 cohort: np.ndarray | None = None, index: IndexConfig | str = "auto", vad: bool | None = None,
                 readonly: bool = False, adapt: bool = True):
        if encoder is None:
            from asit_embed import load_encoder

            encoder = load_encoder()
        self.encoder = encoder
        self.vad = bool(getattr(encoder, "vad", False)) if vad is None else bool(vad)
        if self.vad:
            from asit_embed.vad import _load

            _load()  # the install hint now, not at the first clip
        self.dim = int(encoder.dim)
        self.path = None if path is None else Path(path)
        self.readonly = bool(readonly)
        if self.readonly and self.path is None:
            raise RegistryError("readonly=True needs the path of an existing registry")
        if self.path is not None:
            if self.path.exists() and not self.path.is_dir():
                raise RegistryError(f"registry path {str(self.path)!r} exists and is not a directory")
            if not self.readonly:
                self.path.mkdir(parents=True, exist_ok=True)
        self._store = Store(":memory:" if self.path is None else str(self.path / "registry.sqlite"),
                            readonly=self.readonly)
        self._check_encoder()
        meta = getattr(encoder, "metadata", {}) or {}
        self.as_norm = None
        if as_norm is None:
            as_norm = checkpoint_scoring(meta) == "as-norm"
        if as_norm:
            self.as_norm = ASNorm.from_metadata(meta, cohort)
            if self.as_norm is None:
                raise RegistryError("as_norm=True needs a cohort: pass cohort= or use a checkpoint that ships one")
        self.scoring = "as-norm" if as_norm else "cosine"
        self._points = OperatingPoints(self._store, self.dim, meta, scoring=self.scoring, far=far, fpir=fpir,
                                       threshold=threshold, adapt=adapt)
        self._index = TemplateIndex(self.dim, IndexConfig(kind=index) if isinstance(index, str) else index)
        self._unsaved = 0   # speaker changes in the in-memory index but not in the index file
        path = self._index_file()
        if path is not None and self._index.load(path, fingerprint=encoder.fingerprint, store=self._store.uid):
            self._saved_version = self._index.version
        else:
            self._saved_version = None
        self._sync()

    # --- lifecycle ------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the index file if the in-memory index has moved past it (``close()`` does this too)."""
        path = self._index_file()
        if path is not None and not self.readonly and self._index.version != self._saved_version:
            self._index.save(path, fingerprint=self.encoder.fingerprint, store=self._store.uid)
            self._saved_version, self._unsaved = self._index.version, 0

    def close(self) -> None:
        try:
            if not self.readonly:
                self._sync()  # another process may have written since: leave the newest index behind
            self.flush()
        finally:
            self._store.close()

    def backup(self, dest: str | os.PathLike) -> Path:
        """Copy the registry into directory ``dest`` (created; must not hold a registry) while it stays in
        use: SQLite's online backup of the database, then the copy's index built and saved. Returns ``dest``;
        it opens as a registry like this one."""
        if self.path is None:
            raise RegistryError("an in-memory registry has no files to back up")
        dest = Path(dest)
        if (dest / "registry.sqlite").exists():
            raise RegistryError(f"{str(dest)!r} already holds a registry; back up into a new directory")
        dest.mkdir(parents=True, exist_ok=True)
        self._store.backup_to(str(dest / "registry.sqlite"))
        SpeakerRegistry(dest, encoder=self.encoder, index=self._index.config).close()  # writes its index
        return dest

    def check(self, *, repair: bool = False) -> dict:
        """Check the registry: SQLite ``integrity_check``; every template the mean of its clips; the index
        file present and intact (checksum; one behind the store, as another writer may leave it, is a note,
        not a problem); the index finding every speaker. With ``repair``, templates are recomputed and the
        index rebuilt and saved. Returns ``{"ok", "problems", "repaired", "notes"}`` (a damaged database cannot be opened at all: see
        :func:`enroll.salvage.salvage`, which ``asit-enroll check --repair`` runs)."""
        problems, repaired, notes = [], [], []
        integrity = self._store.integrity()
        if integrity != ["ok"]:
            problems.append("database: " + "; ".join(integrity))
        stale = self._store.template_mismatches()
        if stale:
            problems.append(f"templates not the mean of their clips: {', '.join(stale[:10])}")
            if repair:
                self._store.rewrite_templates(stale)
                repaired.append(f"recomputed {len(stale)} template(s)")
        path = self._index_file()
        if path is not None:
            probe = TemplateIndex(self.dim, self._index.config)
            if not probe.load(path, fingerprint=self.encoder.fingerprint, store=self._store.uid):
                problems.append("index file missing, damaged or of another store")
            elif probe.version != self._store.version():  # normal with several writers: caught up at open
                notes.append(f"index file is at version {probe.version}, the store at {self._store.version()} "
                             "(brought up to date when opened)")
        self._sync()
        ids, templates = self._store.templates()
        if len(ids):
            found = self._index.search(templates, 2)  # top 2: a speaker may share another's template
            lost = int((found != ids[:, None]).all(1).sum())
            if lost:
                problems.append(f"the index does not find {lost} speaker(s) by their own template")
        if repair and (problems or stale):
            self._index.rebuild(ids, templates, self._store.version())
            self._saved_version = None
            self.flush()
            repaired.append("rebuilt and saved the index")
        return {"ok": not problems, "problems": problems, "repaired": repaired, "notes": notes}

    def __enter__(self) -> SpeakerRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_encoder(self) -> None:
        fp = self.encoder.fingerprint
        if self.readonly:
            have = self._store.get_meta("encoder_fingerprint")
        else:
            with self._store.transaction() as db:
                have = self._store.get_meta("encoder_fingerprint")
                if have is None:
                    self._store.set_meta(db, "encoder_fingerprint", fp)
                    self._store.set_meta(db, "dim", str(self.dim))
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
        store, index = self._store, self._index
        if store.version() == index.version and not index.needs_rebuild(len(index)):
            return
        with store.snapshot():  # the version, the change set and the templates, all of one state
            version, n = store.version(), store.count()
            changed = None if index.version > version else store.changed_since(index.version)
            if changed is None or len(changed) > max(len(index), n) // 2 or index.needs_rebuild(n):
                changed = None
                ids, templates = store.templates()
            else:
                ids, templates = store.templates(changed)
        if changed is None:
            index.rebuild(ids, templates, version)
            self._unsaved = max(1, len(ids))
        else:
            index.update(changed, ids, templates, version)
            self._unsaved += len(changed)
        if self._unsaved >= max(1, index.config.flush_fraction * len(index)):
            self.flush()

    # --- operating points ----------------------------------------------------------------------------------
    # the constructor's settings, still readable and settable as attributes: they live in the operating points
    far = property(lambda self: self._points.far, lambda self, v: setattr(self._points, "far", v),
                   doc="Verification's target: the share of impostor trials :meth:`verify` accepts.")
    fpir = property(lambda self: self._points.fpir, lambda self, v: setattr(self._points, "fpir", v),
                    doc="Identification's target: the share of unknown callers :meth:`identify` accepts.")
    fixed_threshold = property(lambda self: self._points.fixed, lambda self, v: setattr(self._points, "fixed", v),
                               doc="A fixed score both accept at instead of the calibration (None: calibrated).")
    adapt = property(lambda self: self._points.adapt, lambda self, v: setattr(self._points, "adapt", v),
                     doc="Whether the shipped calibration is mapped to the enrolled voices.")

    @property
    def calibration(self) -> Calibration | None:
        """The calibration in use: the registry's own (:meth:`calibrate`), else the one shipped with the
        encoder's checkpoint, adapted to the enrolled voices (``adapt``, cosine); None with a fixed ``threshold`` or an
        encoder that carries none."""
        return self._points.calibration

    @property
    def verify_threshold(self) -> float:
        """The score :meth:`verify` accepts at: the calibration's point of ``far`` false accepts per trial."""
        return self._points.verify_threshold()

    def identify_threshold(self, n_speakers: int | None = None) -> float:
        """The score :meth:`identify` accepts at with ``n_speakers`` enrolled (default: as many as now): the
        point where ``fpir`` of unknown callers score that high against at least one of them."""
        return self._points.identify_threshold(len(self) if n_speakers is None else n_speakers)

    @property
    def threshold(self) -> float:
        """The identification threshold at the registry's current size (:meth:`identify_threshold`)."""
        return self.identify_threshold()

    def operating_points(self) -> dict:
        """JSON-ready: both thresholds, their targets, the registry's size and the calibration behind them
        (reported by ``asit-enroll`` and the server)."""
        return self._points.describe(len(self))

    def calibrate(self, speakers: Mapping[str, object] | None = None, *, sample_rate: int | None = None,
                  embeddings: bool = False) -> Calibration:
        """Fit the operating points to your own voices and keep them in the registry (every process opening
        it uses them from then on).

        ``speakers``: labelled clips, ``{name: clips}`` as for :meth:`enroll_many` (they are not enrolled);
        with ``None``, the enrolled speakers' own clips, leave-one-out. Every clip is scored against every
        *other* speaker's template; those impostor scores fix both thresholds. Raises
        :class:`~asit_embed.calibration.CalibrationError` when there is too little to calibrate from (at
        least 4 speakers and 150 impostor trials). :meth:`reset_calibration` goes back to the shipped one.
        """
        if speakers is None:
            names, x = self.clip_embeddings()
            source = "registry: enrolled speakers' clips"
        else:
            names, rows = [], []
            for name, clips in (speakers.items() if isinstance(speakers, Mapping) else speakers):
                recs = (embedding_records(name, clips, self.dim) if embeddings
                        else self._clip_records(name, clips, sample_rate, "calibrate(..., embeddings=True)"))
                names += [name] * len(recs)
                rows += [r.embedding for r in recs]
            x = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
            source = "registry: labelled clips"
        cal = Calibration.fit(*impostor_scores(x, names, normalize=self._normalize_scores),
                              source=f"{source} ({len(set(names))} speakers, {len(x)} clips)", scoring=self.scoring)
        self._points.keep(cal)
        return cal

    def reset_calibration(self) -> None:
        """Forget the registry's own calibration; the shipped one applies again."""
        self._points.keep(None)

    def _normalize_scores(self, scores: np.ndarray, queries: np.ndarray, templates: np.ndarray) -> np.ndarray:
        """``scores (n, m)`` of ``queries`` against ``templates`` in this registry's scoring."""
        return scores if self.as_norm is None else self.as_norm.score(scores, queries, templates)

    # --- inputs ---------------------------------------------------------------------------------------------
    def _clip_records(self, name: str, clips, sample_rate: int | None, instead: str, *,
                      progress: bool = False) -> list[ClipRecord]:
        """Records of one clip or a list of clips, all decoded and embedded (so all checked) before any is
        stored; ``instead`` names the call that takes embeddings, for the error on an array without rate."""
        if isinstance(clips, (str, bytes, bytearray, memoryview, os.PathLike, np.ndarray, torch.Tensor)) or (
                hasattr(clips, "read")):
            clips = [clips]
        clips = list(clips)
        if not clips:
            raise ValueError(f"no clips given to enroll {name!r}")
        for clip in clips:
            clip_rate(clip, sample_rate, instead)
        return [ClipRecord(emb, seconds, sha256) for emb, seconds, sha256 in self.encoder._embed_described(
            clips, sample_rate=sample_rate, vad=self.vad, progress=progress)]

    def _embed_query(self, clip, sample_rate: int | None, caller: str) -> np.ndarray:
        """The ``(dim,)`` embedding of one query clip."""
        if isinstance(clip, (list, tuple)):
            raise TypeError(f"{caller}() takes one clip, got a {type(clip).__name__}; for many clips use "
                            "identify_embeddings(registry.encoder.embed_batch(clips))")
        return self.encoder.embed(clip, clip_rate(clip, sample_rate, "identify_embeddings()"), vad=self.vad)

    # --- enrollment -----------------------------------------------------------------------------------------
    def enroll(self, name: str, clips, *, sample_rate: int | None = None, replace: bool = False,
               allow_duplicates: bool = False, progress: bool = False) -> Speaker:
        """Enroll ``name`` from one clip or a list: paths, encoded bytes, binary file objects, or waveform
        arrays (mono or multichannel, any rate) with their ``sample_rate``. An existing name gains the clips
        unless ``replace=True``. All clips are embedded before anything is written, so a bad clip leaves the
        registry unchanged. A clip already enrolled (same decoded audio, under any name) raises
        :class:`DuplicateClipError` unless ``allow_duplicates=True``. ``progress``: a bar counting the clips
        as they are embedded (in batches). Precomputed embeddings:
        :meth:`enroll_embeddings`."""
        name = validate_name(name)
        records = self._clip_records(name, clips, sample_rate, "enroll_embeddings()", progress=progress)
        self._store.add_many([(name, records)], replace=replace, allow_duplicates=allow_duplicates)
        self._sync()
        return self.speaker(name)

    def enroll_embeddings(self, name: str, vectors, *, replace: bool = False,
                          allow_duplicates: bool = False) -> Speaker:
        """Enroll ``name`` from precomputed embeddings of its clips: ``(dim,)`` for one clip or ``(n, dim)``
        (any scale; each is normalised to unit length). As :meth:`enroll` otherwise; the speaker's
        ``seconds`` do not grow, embeddings carrying no duration.

        >>> reg = SpeakerRegistry()
        >>> e = np.eye(reg.encoder.dim, dtype=np.float32)
        >>> reg.enroll_embeddings("ada", 2 * e[:3]).n_clips
        3
        """
        name = validate_name(name)
        records = embedding_records(name, vectors, self.dim)
        self._store.add_many([(name, records)], replace=replace, allow_duplicates=allow_duplicates)
        self._sync()
        return self.speaker(name)

    def enroll_many(self, speakers: Mapping[str, object] | Iterable[tuple[str, object]], *,
                    sample_rate: int | None = None, replace: bool = False, embeddings: bool = False,
                    allow_duplicates: bool = False) -> int:
        """Enroll many speakers in one transaction: ``{name: clips}`` or ``(name, clips)`` pairs, clips as
        for :meth:`enroll`, or with ``embeddings=True`` precomputed embeddings as for
        :meth:`enroll_embeddings`. Every name is checked and every clip embedded before anything is written,
        so one bad item leaves the registry unchanged. Returns the number of speakers written.

        For bulk imports: one commit and one index update for all of them instead of one per speaker.

        >>> reg = SpeakerRegistry()
        >>> e = np.eye(reg.encoder.dim, dtype=np.float32)
        >>> reg.enroll_many({"ada": e[[0, 2]], "bob": e[1]}, embeddings=True)
        2
        >>> reg.identify_embeddings(e[1], k=1)[0][0].name
        'bob'
        """
        if embeddings and sample_rate is not None:
            raise TypeError("sample_rate applies to waveform clips; embeddings=True takes none")
        items = speakers.items() if isinstance(speakers, Mapping) else speakers
        batch, seen = [], set()
        for name, clips in items:
            name = validate_name(name)
            if name in seen:
                raise ValueError(f"speaker {name!r} is given twice; merge its clips into one entry")
            seen.add(name)
            batch.append((name, embedding_records(name, clips, self.dim) if embeddings else
                          self._clip_records(name, clips, sample_rate, "enroll_many(..., embeddings=True)")))
        if batch:
            self._store.add_many(batch, replace=replace, allow_duplicates=allow_duplicates)
            self._sync()
        return len(batch)

    # --- queries --------------------------------------------------------------------------------------------
    def identify(self, clip, *, k: int = 5, sample_rate: int | None = None) -> list[Match]:
        """Best ``k`` speakers for one clip (as for :meth:`enroll`), best first; nobody accepted means
        "unknown". Many clips, or precomputed embeddings: :meth:`identify_embeddings`."""
        check_k(k)
        return self.identify_embeddings(self._embed_query(clip, sample_rate, "identify"), k=k)[0]

    def identify_embeddings(self, vectors, *, k: int = 5) -> list[list[Match]]:
        """Best ``k`` speakers for each query embedding, best first: one list per row of ``vectors``
        (``(n, dim)``, or ``(dim,)`` for a single query; normalised to unit length here).

        For many clips: ``identify_embeddings(registry.encoder.embed_batch(clips), k=k)``. The index proposes
        candidates; each is scored exactly against its template in the store.

        >>> reg = SpeakerRegistry(threshold=0.9)
        >>> e = np.eye(reg.encoder.dim, dtype=np.float32)
        >>> _ = reg.enroll_embeddings("ada", e[0])
        >>> [row[0].accepted for row in reg.identify_embeddings(np.stack([e[0], e[1]]), k=1)]
        [True, False]
        """
        check_k(k)
        queries = unit_rows(vectors, self.dim, "query embeddings")
        self._sync()
        return [m for i in range(0, len(queries), QUERY_BLOCK) for m in self._rank(queries[i:i + QUERY_BLOCK], k)]

    def _rank(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        candidates = self._index.search(queries, k if self.as_norm is None else max(k, AS_NORM_POOL))
        ids, names, templates = self._store.lookup(candidates[candidates >= 0])
        if not len(ids):  # nobody enrolled, or every candidate removed since the index was brought up to date
            return [[] for _ in queries]
        rows = np.minimum(np.searchsorted(ids, candidates), len(ids) - 1)
        scores = np.einsum("nd,nkd->nk", queries, templates[rows])
        if self.as_norm is not None:
            mu_t, sd_t = self.as_norm.stats(templates)
            scores = self.as_norm.normalize(scores, queries, mu_t[rows], sd_t[rows])
        scores[ids[rows] != candidates] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        threshold = self.identify_threshold()
        rows, scores = np.take_along_axis(rows, order, 1).tolist(), np.take_along_axis(scores, order, 1).tolist()
        return [[Match(names[r], s, s >= threshold) for r, s in zip(rrow, srow) if s > -np.inf]
                for rrow, srow in zip(rows, scores)]

    def track(self, clip, *, sample_rate: int | None = None, window: float = 2.0, hop: float = 1.0) -> list[Turn]:
        """Who spoke when: the clip in segments (:meth:`~asit_embed.SpeakerEncoder.embed_segments`), each
        identified at the registry's threshold, consecutive segments of one answer merged into a
        :class:`Turn`; ``name`` None where nobody enrolled matches. Each segment stands for the ``hop``
        seconds around its centre (the first from 0, the last to the end); a single segment between two
        turns of one speaker joins them."""
        segments = self.encoder.embed_segments(clip, clip_rate(clip, sample_rate, "track"), window=window, hop=hop,
                                               vad=self.vad)
        if not segments:
            return []
        best = [m[0] if m else None for m in self.identify_embeddings(np.stack([s.embedding for s in segments]), k=1)]
        return merge_turns([(seg.start, seg.end) for seg in segments],
                           [(m.name if m.accepted else None, m.score) if m is not None else (None, float("nan"))
                            for m in best], hop=hop)

    def verify(self, name: str, clip, *, sample_rate: int | None = None) -> Match:
        """Score one clip (as for :meth:`enroll`) against ``name``'s template; ``accepted`` says whether it
        is that speaker."""
        info = self._store.speaker_info(normalize_name(name))
        if info is None:
            raise UnknownSpeakerError(f"no speaker named {name!r} is enrolled")
        name = normalize_name(name)
        query = self._embed_query(clip, sample_rate, "verify")[None]
        s = float(self._normalize_scores(query @ info["template"][:, None], query, info["template"][None])[0, 0])
        return Match(name, s, s >= self.verify_threshold)

    # --- speakers -------------------------------------------------------------------------------------------
    def speaker(self, name: str) -> Speaker:
        name = normalize_name(name)
        info = self._store.speaker_info(name)
        if info is None:
            raise UnknownSpeakerError(f"no speaker named {name!r} is enrolled")
        return Speaker(name, info["n_clips"], info["seconds"], info["created"], info["updated"])

    def remove(self, name: str) -> None:
        if not self._store.remove(normalize_name(name)):
            raise UnknownSpeakerError(f"no speaker named {name!r} is enrolled")
        self._sync()

    def rename(self, old: str, new: str) -> None:
        new, old = validate_name(new), normalize_name(old)
        if self._store.speaker_id(old) is None:
            raise UnknownSpeakerError(f"no speaker named {old!r} is enrolled")
        if old != new and self._store.speaker_id(new) is not None:
            raise RegistryError(f"cannot rename {old!r} to {new!r}: {new!r} is already enrolled")
        self._store.rename(old, new)
        self._sync()

    def names(self) -> list[str]:
        return self._store.names()

    def clip_embeddings(self) -> tuple[list[str], np.ndarray]:
        """Every enrolled clip's embedding with its speaker: ``(names, (n, dim) float32)``, by name."""
        names, x = self._store.clip_embeddings()
        return names, x.reshape(len(names), self.dim)

    def templates(self) -> tuple[list[str], np.ndarray]:
        """Every enrolled speaker's template, the vector queries are scored against (the renormalised mean
        of its clip embeddings): ``(names, (n, dim) float32)``, names sorted as by :meth:`names`."""
        names, templates = self._store.named_templates()
        return names, templates.reshape(len(names), self.dim)

    def stats(self) -> dict:
        """The registry's state: ``speakers``; ``version``, the store's change counter (any change to the
        speakers advances it); ``index``: ``kind`` (``"flat"`` or ``"ivf"``), ``size`` (templates indexed),
        ``version`` (the store version it reflects), ``trained_at`` (registry size the IVF index was trained
        at, 0 for flat) and for IVF ``nlist`` and ``nprobe``. The index is brought up to date first."""
        self._sync()
        with self._store.snapshot():
            speakers, version = self._store.count(), self._store.version()
        return {"speakers": speakers, "version": version, "index": self._index.info()}

    def __len__(self) -> int:
        return self._store.count()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._store.speaker_id(normalize_name(name)) is not None

    # --- deprecated (removed in the next release) -----------------------------------------------------------
    def identify_batch(self, clips: Sequence, *, k: int = 5, sample_rate: int | None = None) -> list[list[Match]]:
        """Deprecated: use ``identify_embeddings(registry.encoder.embed_batch(clips), k=k)``."""
        _deprecated("identify_batch()", "identify_embeddings(registry.encoder.embed_batch(clips), k=k)")
        check_k(k)
        clips = list(clips)
        for clip in clips:
            clip_rate(clip, sample_rate, "identify_embeddings()")
        return self.identify_embeddings(self.encoder.embed_batch(clips, sample_rate=sample_rate), k=k)

    def rank(self, queries: np.ndarray, *, k: int = 5) -> list[list[Match]]:
        """Deprecated: use :meth:`identify_embeddings`."""
        _deprecated("rank()", "identify_embeddings()")
        return self.identify_embeddings(queries, k=k)

    @property
    def store(self) -> Store:
        """Deprecated: internal; use :meth:`stats`, :meth:`templates` and :meth:`speaker`."""
        _deprecated("store", "stats(), templates() or speaker()")
        return self._store

    @property
    def index(self) -> TemplateIndex:
        """Deprecated: internal; use :meth:`stats`."""
        _deprecated("index", "stats()")
        return self._index


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"SpeakerRegistry.{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=3)
