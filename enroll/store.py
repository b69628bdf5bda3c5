"""SQLite source of truth for a speaker registry: speakers, their clip embeddings, and a state version.

Every change runs in one ``BEGIN IMMEDIATE`` transaction that also bumps ``meta.version`` and records, in
``changes``, the version at which each speaker it touched last changed. So a crash leaves either the whole
change or none of it, writers from several processes queue on the lock (WAL mode), readers can tell
cheaply whether a derived index is stale, and an index built at version ``v`` is brought up to date by
re-reading only the speakers changed after ``v``.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS speakers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    template BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    speaker_id INTEGER NOT NULL REFERENCES speakers(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    seconds REAL,
    sha256 TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS clips_by_speaker ON clips(speaker_id);
CREATE TABLE IF NOT EXISTS changes (
    speaker_id INTEGER PRIMARY KEY,  -- no foreign key: a removed speaker's row records its removal
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_version ON changes(version);
"""


@dataclass(frozen=True)
class ClipRecord:
    embedding: np.ndarray   # (dim,) float32, unit norm
    seconds: float | None   # None for a precomputed embedding
    sha256: str


class Store:
    """Thin typed layer over one SQLite file. Not shared across threads: open one per thread/process."""

    def __init__(self, path: str, *, timeout: float = 60.0):
        self.path = path
        self.db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('uid', ?)", (uuid.uuid4().hex,))
            # a store older than the changes table has recorded changes only from its current version on
            self.db.execute("INSERT OR IGNORE INTO meta SELECT 'changes_since', value FROM meta WHERE key = 'version'")
        self.uid = self.get_meta("uid")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: takes the write lock at once, commits on success, rolls back on any error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every read inside sees one consistent state, whatever other writers do."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    # --- meta -------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def version(self) -> int:
        return int(self.get_meta("version") or 0)

    def bump(self, db: sqlite3.Connection, speaker_ids: Sequence[int] = ()) -> int:
        """Advance the version and record ``speaker_ids`` as changed at it; returns the new version."""
        version = int(db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version' "
                                 "RETURNING value").fetchone()[0])
        db.executemany("INSERT OR REPLACE INTO changes VALUES (?, ?)", [(sid, version) for sid in speaker_ids])
        return version

    def changed_since(self, version: int) -> np.ndarray | None:
        """Ids (int64, ascending) of the speakers added, changed or removed after ``version``; None when the
        store does not know (``version`` is older than its record of changes)."""
        if version < int(self.get_meta("changes_since") or 0):
            return None
        rows = self.db.execute("SELECT speaker_id FROM changes WHERE version > ?", (version,))
        return np.sort(np.array([r[0] for r in rows], dtype=np.int64))

    # --- speakers -----------------------------------------------------------------------------------------
    def speaker_id(self, name: str) -> int | None:
        row = self.db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM speakers ORDER BY name")]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM speakers").fetchone()[0]

    def templates(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Templates of all speakers, or of those of ``ids`` still enrolled: ``(ids (n,) int64, templates
        (n, dim) float32)`` in id order (``(0, 0)`` templates when there are none)."""
        if ids is None:
            cursor = self.db.execute("SELECT id, template FROM speakers ORDER BY id")
        else:
            cursor = self.db.execute("SELECT id, template FROM speakers WHERE id IN (SELECT value FROM json_each(?)) "
                                     "ORDER BY id", (json.dumps(np.asarray(ids).tolist()),))
        keys, templates = _keyed_matrix(cursor)
        return np.array(keys, dtype=np.int64), templates

    def named_templates(self) -> tuple[list[str], np.ndarray]:
        """Names and templates of all speakers, by name: ``(names, (n, dim) float32)`` (``(0, 0)`` when
        there are none)."""
        return _keyed_matrix(self.db.execute("SELECT name, template FROM speakers ORDER BY name"))

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The speakers of ``ids`` (repeats allowed) still enrolled: ``(ids (n,) int64, names, templates
        (n, dim) float32)``, each once, in id order (``(0, 0)`` templates when there are none)."""
        rows = self.db.execute("SELECT id, name, template FROM speakers WHERE id IN (SELECT value FROM json_each(?)) "
                               "ORDER BY id", (json.dumps(np.asarray(ids).tolist()),)).fetchall()
        return (np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows],
                _matrix([r[2] for r in rows]))

    def speaker_info(self, name: str) -> dict | None:
        row = self.db.execute("SELECT id, template, created, updated FROM speakers WHERE name = ?",
                              (name,)).fetchone()
        if row is None:
            return None
        n, secs = self.db.execute("SELECT COUNT(*), SUM(seconds) FROM clips WHERE speaker_id = ?",
                                  (row[0],)).fetchone()
        return {"id": row[0], "template": np.frombuffer(row[1], dtype=np.float32).copy(), "created": row[2],
                "updated": row[3], "n_clips": n, "seconds": secs or 0.0}

    def add_clips(self, name: str, clips: Sequence[ClipRecord], *, replace: bool) -> int:
        """Insert ``clips`` for ``name`` (creating it; replacing its clips if ``replace``), recompute the
        template (renormalised mean of all its clip embeddings); one transaction. Returns the speaker id."""
        return self.add_many([(name, clips)], replace=replace)[0]

    def add_many(self, speakers: Sequence[tuple[str, Sequence[ClipRecord]]], *, replace: bool) -> list[int]:
        """:meth:`add_clips` for each ``(name, clips)`` pair (names distinct), all in one transaction.
        Returns the speaker ids."""
        now = time.time()
        sids = []
        with self.transaction() as db:
            for name, clips in speakers:
                embs = np.stack([c.embedding for c in clips]).astype(np.float32)
                row = db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
                if row is None:
                    sid = db.execute("INSERT INTO speakers (name, template, created, updated) VALUES (?, ?, ?, ?)",
                                     (name, _template(embs), now, now)).lastrowid
                else:
                    sid = row[0]
                    if replace:
                        db.execute("DELETE FROM clips WHERE speaker_id = ?", (sid,))
                    else:
                        old = _matrix([r[0] for r in db.execute("SELECT embedding FROM clips WHERE speaker_id = ?",
                                                                (sid,))])
                        embs = np.concatenate([old.reshape(-1, embs.shape[1]), embs])
                    db.execute("UPDATE speakers SET template = ?, updated = ? WHERE id = ?",
                               (_template(embs), now, sid))
                db.executemany("INSERT INTO clips (speaker_id, embedding, seconds, sha256, created) VALUES (?,?,?,?,?)",
                               [(sid, c.embedding.astype(np.float32).tobytes(), c.seconds, c.sha256, now)
                                for c in clips])
                sids.append(sid)
            self.bump(db, sids)
        return sids

    def remove(self, name: str) -> bool:
        with self.transaction() as db:
            row = db.execute("DELETE FROM speakers WHERE name = ? RETURNING id", (name,)).fetchone()
            if row is not None:
                self.bump(db, [row[0]])
        return row is not None

    def rename(self, old: str, new: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE speakers SET name = ?, updated = ? WHERE name = ?", (new, time.time(), old))
            self.bump(db)


def _template(embeddings: np.ndarray) -> bytes:
    """The renormalised mean of ``embeddings (n, dim)``, as stored."""
    template = embeddings.mean(axis=0)
    return (template / np.linalg.norm(template)).astype(np.float32).tobytes()


def _keyed_matrix(cursor: sqlite3.Cursor) -> tuple[list, np.ndarray]:
    """A query's ``(key, blob)`` rows, read in chunks: ``(keys, (n, dim) matrix)``."""
    keys, parts = [], []
    while rows := cursor.fetchmany(65536):
        keys.extend(r[0] for r in rows)
        parts.append(_matrix([r[1] for r in rows]))
    return keys, np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _matrix(blobs: list[bytes]) -> np.ndarray:
    """Equal-length float32 blobs as one ``(n, dim)`` matrix (``(0, 0)`` when there are none)."""
    if not blobs:
        return np.zeros((0, 0), np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
