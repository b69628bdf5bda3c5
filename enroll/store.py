"""SQLite source of truth for a speaker registry: speakers, their clip embeddings, and a state version.

Every change runs in one ``BEGIN IMMEDIATE`` transaction that also bumps ``meta.version`` and records, in
``changes``, the version at which each speaker it touched last changed. So a crash leaves either the whole
change or none of it, writers from several processes queue on the lock (WAL mode), readers can tell
cheaply whether a derived index is stale, and an index built at version ``v`` is brought up to date by
re-reading only the speakers changed after ``v``.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from enroll.errors import DuplicateClipError, ReadOnlyRegistryError, RegistryDatabaseError, RegistryError

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


SCHEMA_VERSION = 1   # meta.schema; a store without it predates the key and is version 1
OWN_TABLES = {"meta", "speakers", "clips"}


@dataclass(frozen=True)
class ClipRecord:
    embedding: np.ndarray   # (dim,) float32, unit norm
    seconds: float | None   # None for a precomputed embedding
    sha256: str


class Store:
    """Thin typed layer over one SQLite file. Not shared across threads: open one per thread/process."""

    def __init__(self, path: str, *, timeout: float = 60.0, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        existing = path != ":memory:" and os.path.exists(path)
        if readonly and not existing:
            raise RegistryDatabaseError(f"no registry database at {path!r} to open read-only")
        if existing and os.path.getsize(path) == 0 and not _grows(path, min(timeout, 2.0)):
            raise RegistryDatabaseError(f"{path!r} is an empty file, not a registry database (a copy taken while "
                                        "the registry was open?); restore a backup, or delete it to start afresh")
        try:
            if readonly:
                # A read-only directory cannot hold SQLite's shared-memory file: read the file as immutable.
                writable = os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)
                uri = f"file:{os.path.abspath(path)}?mode=ro" + ("" if writable else "&immutable=1")
                self.db = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                                          check_same_thread=False)
            else:
                self.db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            if existing:
                self._check_existing()
            if not readonly:
                self._create(timeout)
        except sqlite3.Error as err:
            hint = ("; to query it without changing it, open it read-only (readonly=True, --read-only)"
                    if not readonly and "readonly" in str(err) else "")
            raise RegistryDatabaseError(f"cannot open registry database {path!r}: {err}{hint}") from err
        self.uid = self.get_meta("uid")

    def _check_existing(self) -> None:
        """An existing file must be our database, undamaged (``quick_check``) and of a schema we know."""
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and not self.readonly:
            return  # a database holding nothing: another process creating this registry has not made its tables yet
        if not OWN_TABLES <= tables:
            raise RegistryDatabaseError(f"{self.path!r} is an SQLite database but not a speaker registry "
                                        f"(tables: {', '.join(sorted(tables)) or 'none'})")
        problems = [r[0].replace("\n", "; ") for r in self.db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise RegistryDatabaseError(f"registry database {self.path!r} is damaged ({'; '.join(problems)}); "
                                        "restore a backup (asit-enroll backup) or salvage it with "
                                        "'asit-enroll check --repair'")
        schema = int(self.get_meta("schema") or 1)
        if schema > SCHEMA_VERSION:
            raise RegistryDatabaseError(f"registry {self.path!r} has schema {schema}, newer than this version "
                                        f"of asit-embed reads ({SCHEMA_VERSION}); upgrade asit-embed")

    def _create(self, timeout: float) -> None:
        self._write_ahead_log(timeout)
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
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _write_ahead_log(self, timeout: float) -> None:
        """Switch the file to WAL mode. SQLite answers the switch with "database is locked" at once, without
        waiting on its busy timeout, while another connection holds the file (e.g. a second process creating
        the same new registry): so it is retried until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        """Close the connection, first folding the write-ahead log into the database file, so that file alone
        holds every change (a copy of it is a whole registry)."""
        if not self.readonly:
            try:
                # Never wait here: if another connection is busy, the last one to close folds the log in.
                self.db.execute("PRAGMA busy_timeout = 0")
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: takes the write lock at once, commits on success, rolls back on any error."""
        if self.readonly:
            raise ReadOnlyRegistryError(f"registry {os.path.dirname(self.path)!r} is open read-only")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise _database_error(self.path, err) from err
        try:
            yield self.db
        except BaseException as err:
            self.db.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise _database_error(self.path, err) from err
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as err:
            raise _database_error(self.path, err) from err

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every read inside sees one consistent state, whatever other writers do."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    def backup_to(self, path: str) -> None:
        """Copy the database to a new file with SQLite's online backup (a consistent state, writers or not);
        the copy gets its own uid, so no index file of this store is ever taken for the copy's."""
        dst = sqlite3.connect(path, isolation_level=None)
        try:
            self.db.backup(dst)
            dst.execute("UPDATE meta SET value = ? WHERE key = 'uid'", (uuid.uuid4().hex,))
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            dst.close()

    def integrity(self) -> list[str]:
        """SQLite's full ``integrity_check``: ``["ok"]`` or the problems found."""
        return [r[0].replace("\n", "; ") for r in self.db.execute("PRAGMA integrity_check(20)")]

    def template_mismatches(self, tolerance: float = 1e-4) -> list[str]:
        """Names of speakers whose stored template is not the renormalised mean of their clips (or who have
        no clips)."""
        bad = []
        for sid, name, template in self.db.execute("SELECT id, name, template FROM speakers"):
            clips = _matrix([r[0] for r in self.db.execute("SELECT embedding FROM clips WHERE speaker_id = ?",
                                                           (sid,))])
            stored = np.frombuffer(template, dtype=np.float32)
            if not len(clips) or np.abs(np.frombuffer(_template(clips), dtype=np.float32) - stored).max() > tolerance:
                bad.append(name)
        return bad

    def rewrite_templates(self, names: Sequence[str]) -> None:
        """Recompute the templates of ``names`` from their clips (a speaker with no clips is removed)."""
        with self.transaction() as db:
            sids = []
            for name in names:
                sid = db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()[0]
                clips = _matrix([r[0] for r in db.execute("SELECT embedding FROM clips WHERE speaker_id = ?", (sid,))])
                if len(clips):
                    db.execute("UPDATE speakers SET template = ? WHERE id = ?", (_template(clips), sid))
                else:
                    db.execute("DELETE FROM speakers WHERE id = ?", (sid,))
                sids.append(sid)
            self.bump(db, sids)

    # --- meta -------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def write_meta(self, key: str, value: str | None) -> None:
        """Set (or with ``None`` delete) one meta value in its own transaction."""
        with self.transaction() as db:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self.set_meta(db, key, value)

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

    def clip_embeddings(self) -> tuple[list[str], np.ndarray]:
        """Every stored clip embedding with its speaker's name: ``(names, (n, dim) float32)``."""
        return _keyed_matrix(self.db.execute("SELECT s.name, c.embedding FROM clips c JOIN speakers s "
                                             "ON s.id = c.speaker_id ORDER BY s.name, c.id"))

    def clip_sample(self, max_speakers: int) -> tuple[list[str], np.ndarray]:
        """The clip embeddings of at most ``max_speakers`` speakers, a spread of ids chosen by a fixed hash
        (the same speakers every time while they stay enrolled): ``(names, (n, dim) float32)``."""
        return _keyed_matrix(self.db.execute(
            "SELECT s.name, c.embedding FROM clips c JOIN speakers s ON s.id = c.speaker_id WHERE s.id IN "
            "(SELECT id FROM speakers ORDER BY (id * 2654435761) % 4294967296 LIMIT ?) ORDER BY s.name, c.id",
            (int(max_speakers),)))

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

    def add_many(self, speakers: Sequence[tuple[str, Sequence[ClipRecord]]], *, replace: bool,
                 allow_duplicates: bool = False) -> list[int]:
        """:meth:`add_clips` for each ``(name, clips)`` pair (names distinct), all in one transaction.
        A clip whose hash is already enrolled (or given twice) raises :class:`DuplicateClipError` unless
        ``allow_duplicates``; with ``replace`` the speaker's own old clips do not count. Returns the speaker ids."""
        now = time.time()
        sids = []
        with self.transaction() as db:
            if not allow_duplicates:
                self._refuse_duplicates(db, speakers, replace)
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

    @staticmethod
    def _refuse_duplicates(db: sqlite3.Connection, speakers, replace: bool) -> None:
        seen: dict[str, str] = {}
        for name, clips in speakers:
            for c in clips:
                if c.sha256 in seen:
                    raise DuplicateClipError(f"the same clip is given twice (for {seen[c.sha256]!r} and {name!r})")
                seen[c.sha256] = name
        rows = db.execute("SELECT c.sha256, s.name FROM clips c JOIN speakers s ON s.id = c.speaker_id "
                          "WHERE c.sha256 IN (SELECT value FROM json_each(?))", (json.dumps(list(seen)),))
        for sha, owner in rows:
            if not (replace and owner == seen[sha]):
                raise DuplicateClipError(f"a clip given for {seen[sha]!r} is already enrolled as {owner!r} "
                                         "(pass allow_duplicates=True to enroll it again)")

    def remove(self, name: str) -> bool:
        with self.transaction() as db:
            row = db.execute("DELETE FROM speakers WHERE name = ? RETURNING id", (name,)).fetchone()
            if row is not None:
                self.bump(db, [row[0]])
        return row is not None

    def rename(self, old: str, new: str) -> None:
        with self.transaction() as db:
            try:
                db.execute("UPDATE speakers SET name = ?, updated = ? WHERE name = ?", (new, time.time(), old))
            except sqlite3.IntegrityError:  # another process enrolled ``new`` since the caller checked
                raise RegistryError(f"cannot rename {old!r} to {new!r}: {new!r} is already enrolled") from None
            self.bump(db)


def _database_error(path: str, err: sqlite3.Error) -> RegistryDatabaseError:
    return RegistryDatabaseError(f"registry database {path!r}: {err}")


def _wrap_errors(cls):
    """Every public method raises :class:`RegistryDatabaseError` for an SQLite error, not ``sqlite3.Error``."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or not callable(fn) or name in ("transaction", "snapshot"):
            continue

        @functools.wraps(fn)
        def wrapped(self, *args, __fn=fn, **kwargs):
            try:
                return __fn(self, *args, **kwargs)
            except sqlite3.Error as err:
                raise _database_error(self.path, err) from err

        setattr(cls, name, wrapped)
    return cls


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


Store = _wrap_errors(Store)


def _grows(path: str, seconds: float) -> bool:
    """Whether the empty file at ``path`` gets content within ``seconds``: another process creating the same new
    registry writes its first page within milliseconds, while a truncated copy stays empty."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if os.path.getsize(path) > 0:
            return True
    return False
