"""The FAISS search structure derived from the store: one unit template per speaker, id = speaker id.

Cosine similarity is the inner product of unit vectors. Small registries are searched exactly
(``IndexIDMap2(IndexFlatIP)``); large ones with an IVF index whose lists hold 4-bit product-quantised codes
scanned with SIMD (``IVF{nlist},PQ{dim/4}x4fs``): it proposes candidates, which the registry re-scores
exactly against the stored templates. Both take ``add_with_ids`` and ``remove_ids``, so a change costs an
add (and, for a speaker already indexed, one removal pass over the ids) instead of a rebuild.

The index file is one JSON header line (the store version the index reflects, encoder, store id) then the
FAISS bytes; a missing or unreadable file is rebuilt, an older one is brought up to date from the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "ivf")
MIN_TRAIN = 1_000  # an IVF index is trained on the templates themselves; below this many, search is exact
PARALLEL_MIN = 1_000  # fewer vectors are added on one thread: OpenMP's start-up would cost more than it saves


@dataclass(frozen=True)
class IndexConfig:
    """How a registry searches its templates.

    Args:
        kind: ``"auto"``: exact below ``exact_below`` templates, IVF from there on (and exact again below
            half of it); ``"flat"``: always exact; ``"ivf"``: IVF once 1 000 templates exist to train it on.
        exact_below: the size at which ``"auto"`` switches to IVF.
        nlist: IVF lists; default ``4·sqrt(n)`` for the ``n`` templates it is trained on (at most ``n / 39``).
        nprobe: lists scanned per query; default ``nlist // 16``, at least 16. More: higher recall, slower.
        rerank: IVF candidates per query re-scored exactly (at least ``2·k`` are taken).
        regrow: the IVF index is retrained once the registry is this many times the size it was trained at.
        flush_fraction: the index file is rewritten once the changes not yet in it reach this fraction of
            the registry (at least one), so writing it costs O(1) per change; ``close()`` always writes it.
    """

    kind: str = "auto"
    exact_below: int = 20_000
    nlist: int | None = None
    nprobe: int | None = None
    rerank: int = 10
    regrow: float = 2.0
    flush_fraction: float = 0.01

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"index kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for field in ("exact_below", "nlist", "nprobe", "rerank"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"IndexConfig.{field} must be a positive integer, got {value!r}")
        if not self.regrow > 1:
            raise ValueError(f"IndexConfig.regrow must be above 1, got {self.regrow!r}")
        if not 0 <= self.flush_fraction <= 1:
            raise ValueError(f"IndexConfig.flush_fraction must be in [0, 1], got {self.flush_fraction!r}")

    def kind_for(self, n: int, current: str | None = None) -> str:
        """``"flat"`` or ``"ivf"`` for ``n`` templates, staying with ``current`` down to half the threshold."""
        if self.kind == "flat":
            return "flat"
        threshold = max(MIN_TRAIN, self.exact_below if self.kind == "auto" else 0)
        return "ivf" if n >= (threshold // 2 if current == "ivf" else threshold) else "flat"


class TemplateIndex:
    """Candidate search over speaker templates, kept in step with the store by :meth:`update`."""

    def __init__(self, dim: int, config: IndexConfig | None = None):
        self.dim = dim
        self.config = config or IndexConfig()
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.kind = "flat"
        self.version = -1       # store version the index reflects; -1: none yet
        self.max_id = 0         # speaker ids only grow, so ids above this are not in the index
        self.trained_n = 0      # registry size the IVF index was trained at

    def __len__(self) -> int:
        return self.index.ntotal

    def info(self) -> dict:
        """``kind``, ``size``, ``version``, ``trained_at`` and, for IVF, ``nlist`` and ``nprobe``."""
        out = {"kind": self.kind, "size": len(self), "version": self.version, "trained_at": self.trained_n}
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            out.update(nlist=int(ivf.nlist), nprobe=int(ivf.nprobe))
        return out

    def needs_rebuild(self, n: int) -> bool:
        """Whether ``n`` templates call for the other kind of index, or for retraining the IVF one."""
        return (self.config.kind_for(n, self.kind) != self.kind
                or (self.kind == "ivf" and n > self.config.regrow * self.trained_n))

    def rebuild(self, ids: np.ndarray, templates: np.ndarray, version: int) -> None:
        """Replace the contents with ``templates (n, dim)`` of speakers ``ids (n,)``; picks the kind for ``n``."""
        n = len(ids)
        self.kind = self.config.kind_for(n)
        if self.kind == "ivf":
            x = _as_matrix(templates, self.dim)
            log.info("training an IVF index on %d templates", n)
            self.index = _train_ivf(x, self.config.nlist)
            self.trained_n = n
            self._set_nprobe()
        else:
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            self.trained_n = 0
        self.max_id = 0
        self.update(np.zeros(0, np.int64), ids, templates, version)

    def update(self, changed: np.ndarray, ids: np.ndarray, templates: np.ndarray, version: int) -> None:
        """Apply a change set: drop the speakers ``changed``, then add ``ids`` (those of them still
        enrolled) with their current ``templates (n, dim)``."""
        changed = np.ascontiguousarray(changed, dtype=np.int64)
        indexed = changed[changed <= self.max_id]
        if len(indexed):
            with _threads(1):  # one pass over the ids: memory-bound, threads only add start-up cost
                self.index.remove_ids(indexed)
        if len(ids):
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            with _threads(1 if len(ids) < PARALLEL_MIN else None):
                self.index.add_with_ids(_as_matrix(templates, self.dim), ids)
            self.max_id = max(self.max_id, int(ids.max()))
        self.version = version

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Candidate ids ``(n, k')`` for ``queries (n, dim)``, best first by the index's own scores, ``-1``
        where there are fewer. Exact: the top ``k``; IVF: the top ``max(2·k, rerank)`` by quantised score,
        to be re-scored exactly."""
        queries = _as_matrix(queries, self.dim)
        k = min(k if self.kind == "flat" else max(2 * k, self.config.rerank), self.index.ntotal)
        if k == 0:
            return np.zeros((len(queries), 0), np.int64)
        with _threads(1 if len(queries) == 1 else None):  # one query: OpenMP's start-up costs more than it saves
            return self.index.search(queries, k)[1]

    def save(self, path: Path, *, fingerprint: str, store: str) -> None:
        """Write atomically one file: a JSON header line (version, encoder, store) then the FAISS bytes.

        One file, replaced in one step under a unique temporary name, so concurrent writers never pair
        one writer's header with another's index.
        """
        body = faiss.serialize_index(self.index).tobytes()
        header = json.dumps({"version": self.version, "fingerprint": fingerprint, "store": store,
                             "ntotal": self.index.ntotal, "kind": self.kind, "max_id": self.max_id,
                             "trained_n": self.trained_n, "sha256": hashlib.sha256(body).hexdigest()})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header.encode() + b"\n")
                f.write(body)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def load(self, path: Path, *, fingerprint: str, store: str) -> bool:
        """Load ``path`` if it exists, is readable and belongs to this store and encoder; False: rebuild.
        The loaded index may be older than the store; the caller brings it up to date."""
        if not path.exists():
            log.info("no saved index at %s; building it", path)
            return False
        try:
            raw = path.read_bytes()
            head, _, body = raw.partition(b"\n")
            info = json.loads(head)
            if info.get("fingerprint") != fingerprint or info.get("store") != store:
                log.info("index %s belongs to another store or encoder; rebuilding", path)
                return False
            if info.get("sha256") != hashlib.sha256(body).hexdigest():
                log.warning("index %s fails its checksum (damaged or written without one); rebuilding", path)
                return False
            index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
            kind, version = info["kind"], int(info["version"])
            max_id, trained_n = int(info["max_id"]), int(info["trained_n"])
            is_ivf = isinstance(faiss.try_extract_index_ivf(index), faiss.IndexIVF)
        except (OSError, ValueError, RuntimeError, AttributeError, KeyError, TypeError) as err:
            log.warning("index %s is unreadable (%s); rebuilding", path, err)
            return False
        if index.d != self.dim or index.ntotal != info.get("ntotal") or kind != ("ivf" if is_ivf else "flat"):
            log.warning("index %s does not match its header; rebuilding", path)
            return False
        self.index, self.kind, self.version, self.max_id, self.trained_n = index, kind, version, max_id, trained_n
        if kind == "ivf":
            self._set_nprobe()
        return True

    def _set_nprobe(self) -> None:
        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = min(ivf.nlist, self.config.nprobe or max(16, ivf.nlist // 16))


def _train_ivf(x: np.ndarray, nlist: int | None) -> faiss.Index:
    """An empty IVF-PQ fast-scan index trained on ``x (n, dim)`` unit vectors (inner product)."""
    n, d = x.shape
    nlist = nlist or max(1, min(round(4 * math.sqrt(n)), n // 39))
    m = d // 4 if d % 4 == 0 else d // 2 if d % 2 == 0 else d   # 4 dimensions per 4-bit sub-quantiser
    index = faiss.index_factory(d, f"IVF{nlist},PQ{m}x4fs", faiss.METRIC_INNER_PRODUCT)
    kmeans = faiss.Kmeans(d, nlist, niter=10, max_points_per_centroid=64, spherical=True, seed=1234)
    kmeans.train(x)  # 64 points per list and 10 iterations: enough for a partition, and fast
    faiss.extract_index_ivf(index).quantizer.add(kmeans.centroids)
    with _threads(1):  # the PQ codebooks are many tiny k-means, which threads only slow down
        index.train(x)  # the quantizer already holds its lists: this trains the codebooks only
    return index


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run FAISS with ``n`` OpenMP threads (None: as is) inside the block."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _as_matrix(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {x.shape}")
    return x
