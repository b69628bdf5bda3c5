"""SQLite source of truth for a speaker registry: speakers, their clip embeddings, and a state version.

Every change runs in one ``BEGIN IMMEDIATE`` transaction that also bumps ``meta.version``, so a crash
leaves either the whole change or none of it, writers from several processes queue on the lock (WAL mode),
and readers can tell cheaply whether a derived index is stale.
"""

from __future__ import annotations

import sqlite3
import time
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

    # --- meta -------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def version(self) -> int:
        return int(self.get_meta("version") or 0)

    def bump(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")

    # --- speakers -----------------------------------------------------------------------------------------
    def speaker_id(self, name: str) -> int | None:
        row = self.db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM speakers ORDER BY name")]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM speakers").fetchone()[0]

    def templates(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """All speakers: ``(ids (n,) int64, templates (n, dim) float32, names)``, in id order."""
        rows = self.db.execute("SELECT id, name, template FROM speakers ORDER BY id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        mats = [np.frombuffer(r[2], dtype=np.float32) for r in rows]
        return ids, (np.stack(mats) if mats else np.zeros((0, 0), np.float32)), [r[1] for r in rows]

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
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
            if row is None:
                sid = db.execute("INSERT INTO speakers (name, template, created, updated) VALUES (?, ?, ?, ?)",
                                 (name, b"", now, now)).lastrowid
            else:
                sid = row[0]
                if replace:
                    db.execute("DELETE FROM clips WHERE speaker_id = ?", (sid,))
            db.executemany("INSERT INTO clips (speaker_id, embedding, seconds, sha256, created) VALUES (?,?,?,?,?)",
                           [(sid, c.embedding.astype(np.float32).tobytes(), c.seconds, c.sha256, now)
                            for c in clips])
            embs = np.stack([np.frombuffer(r[0], dtype=np.float32) for r in
                             db.execute("SELECT embedding FROM clips WHERE speaker_id = ?", (sid,))])
            template = embs.mean(axis=0)
            template /= np.linalg.norm(template)
            db.execute("UPDATE speakers SET template = ?, updated = ? WHERE id = ?",
                       (template.astype(np.float32).tobytes(), now, sid))
            self.bump(db)
        return sid

    def remove(self, name: str) -> bool:
        with self.transaction() as db:
            gone = db.execute("DELETE FROM speakers WHERE name = ?", (name,)).rowcount > 0
            if gone:
                self.bump(db)
        return gone

    def rename(self, old: str, new: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE speakers SET name = ?, updated = ? WHERE name = ?", (new, time.time(), old))
            self.bump(db)
