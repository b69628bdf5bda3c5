"""The FAISS search structure derived from the store: one unit template per speaker, id = speaker id.

Cosine similarity is the inner product of unit vectors, so the exact index is ``IndexIDMap2(IndexFlatIP)``.
The index file is saved with the store version it reflects (in its header); a missing, stale or unreadable file is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)


class TemplateIndex:
    """Exact inner-product search over speaker templates."""

    def __init__(self, dim: int):
        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.version = -1

    def __len__(self) -> int:
        return self.index.ntotal

    def rebuild(self, ids: np.ndarray, templates: np.ndarray, version: int) -> None:
        self.index.reset()
        if len(ids):
            self.index.add_with_ids(_as_matrix(templates, self.dim), np.ascontiguousarray(ids, dtype=np.int64))
        self.version = version

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``queries (n, dim)`` → ``(scores (n, k'), ids (n, k'))``, best first, ``k' = min(k, len)``."""
        k = min(k, self.index.ntotal)
        if k == 0:
            n = len(queries)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        return self.index.search(_as_matrix(queries, self.dim), k)

    def save(self, path: Path, *, version: int, fingerprint: str) -> None:
        """Write atomically one file: a JSON header line (store version, encoder) then the FAISS bytes.

        One file, replaced in one step under a unique temporary name, so concurrent writers never pair
        one writer's header with another's index.
        """
        header = json.dumps({"version": version, "fingerprint": fingerprint, "ntotal": self.index.ntotal})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(header.encode() + b"\n")
            f.write(faiss.serialize_index(self.index).tobytes())
        os.replace(tmp, path)

    def load(self, path: Path, *, version: int, fingerprint: str) -> bool:
        """Load ``path`` if it exists, is readable and reflects ``version``; False means rebuild."""
        if not path.exists():
            log.info("no saved index at %s; building it", path)
            return False
        try:
            raw = path.read_bytes()
            head, _, body = raw.partition(b"\n")
            info = json.loads(head)
            if info.get("version") != version or info.get("fingerprint") != fingerprint:
                log.info("index %s is stale (version %s, store at %s); rebuilding", path, info.get("version"), version)
                return False
            index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
        except (OSError, ValueError, RuntimeError, AttributeError) as err:
            log.warning("index %s is unreadable (%s); rebuilding", path, err)
            return False
        if index.d != self.dim or index.ntotal != info.get("ntotal"):
            log.warning("index %s does not match its header; rebuilding", path)
            return False
        self.index, self.version = index, version
        return True


def _as_matrix(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {x.shape}")
    return x
