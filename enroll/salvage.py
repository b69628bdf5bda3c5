"""Recovering a registry whose database is damaged: what can still be read is copied into a fresh store
(``asit-enroll check --repair``)."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid

from enroll.store import Store


def salvage(path: str) -> tuple[str, int]:
    """Copy what can still be read of a damaged database into a fresh one at ``path``; the damaged file is
    kept beside it as ``<path>.damaged-<time>``. Returns ``(damaged copy's path, speakers recovered)``."""
    damaged = f"{path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, damaged + suffix)
    src = sqlite3.connect(damaged)
    fresh = Store(path)  # our schema, empty
    try:
        fresh.db.execute("PRAGMA foreign_keys=OFF")  # a clip may have lost its speaker's row: dropped below
        with fresh.transaction() as db:
            db.execute("DELETE FROM meta")
            for table in ("meta", "speakers", "clips", "changes"):
                rows = _readable_rows(src, table)
                if rows:
                    marks = ",".join("?" * len(rows[0]))
                    db.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", rows)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('uid', ?)", (uuid.uuid4().hex,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('changes_since', "
                       "(SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'version'))")
            db.execute("DELETE FROM clips WHERE speaker_id NOT IN (SELECT id FROM speakers)")
            fresh.bump(db)
        fresh.db.execute("PRAGMA foreign_keys=ON")
        fresh.rewrite_templates(fresh.names())
        return damaged, fresh.count()
    finally:
        src.close()
        fresh.close()


def _readable_rows(src: sqlite3.Connection, table: str, *, give_up_after: int = 5000) -> list[tuple]:
    """The rows of ``table`` that can still be read: all at once, or else one rowid at a time (stopping after
    ``give_up_after`` rowids in a row that are missing or unreadable)."""
    try:
        return src.execute(f"SELECT * FROM {table}").fetchall()
    except sqlite3.DatabaseError:
        pass
    rows, misses, rowid = [], 0, 0
    while misses < give_up_after:
        rowid += 1
        try:
            found = src.execute(f"SELECT * FROM {table} WHERE rowid = ?", (rowid,)).fetchall()
        except sqlite3.DatabaseError:
            found = []
        rows += found
        misses = 0 if found else misses + 1
    return rows
