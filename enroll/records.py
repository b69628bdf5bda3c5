"""What the registry hands back (matches, speakers, turns) and what it accepts as a speaker's name."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

MAX_NAME = 100


@dataclass(frozen=True)
class Match:
    """A speaker's score for a query; ``accepted``: the score reaches the registry's threshold."""

    name: str
    score: float
    accepted: bool

    def to_dict(self) -> dict:
        """``{"name", "score", "accepted"}``, the score rounded to 4 decimals: the JSON of the CLI and HTTP API."""
        return {"name": self.name, "score": round(float(self.score), 4), "accepted": bool(self.accepted)}


@dataclass(frozen=True)
class Turn:
    """A stretch of a recording given to one enrolled speaker (``name``) or to nobody known (``None``):
    ``start``/``end`` in seconds, ``score`` the mean best score of its segments."""

    start: float
    end: float
    name: str | None
    score: float

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "name": self.name, "score": round(float(self.score), 4)}


@dataclass(frozen=True)
class Speaker:
    """An enrolled speaker: clips, seconds of speech in them (0 for embeddings), times as Unix seconds."""

    name: str
    n_clips: int
    seconds: float
    created: float
    updated: float

    def to_dict(self) -> dict:
        """``{"name", "n_clips", "seconds", "created", "updated"}``, seconds rounded to 2 decimals: the JSON
        of the CLI and HTTP API."""
        return {"name": self.name, "n_clips": self.n_clips, "seconds": round(float(self.seconds), 2),
                "created": self.created, "updated": self.updated}


def normalize_name(name):
    """``name`` in Unicode NFC (what the registry stores and looks up); anything else unchanged."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def validate_name(name: str) -> str:
    """A speaker name: a non-empty string of at most 100 printable characters, no surrounding spaces;
    returned in Unicode NFC, so the composed and decomposed spellings of "José" are one speaker. (Look-alike
    letters of other scripts, such as Cyrillic "а" for Latin "a", stay distinct names.)"""
    if not isinstance(name, str):
        raise TypeError(f"speaker name must be a string, got {type(name).__name__}")
    name = normalize_name(name)
    if not name or name != name.strip() or len(name) > MAX_NAME:
        raise ValueError(f"speaker name {name!r} must be 1–{MAX_NAME} characters without surrounding spaces")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ValueError(f"speaker name {name!r} contains control characters")
    return name
