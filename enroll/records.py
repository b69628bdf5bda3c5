"""What the registry hands back (matches, speakers, turns) and what it accepts as a speaker's name."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


def merge_turns(spans: Sequence[tuple[float, float]], answers: Sequence[tuple[str | None, float]], *,
                hop: float) -> list[Turn]:
    """Turns from consecutive segments (``spans``, their ``(start, end)`` in seconds) and the answer for each
    (``(name or None, score)``): each segment stands for the ``hop`` seconds around its centre (the first from
    0, the last to the end of the last segment), consecutive segments of one answer merge, and a single
    segment between two turns of one speaker joins them (a dip, not a change of voice).

    >>> spans = [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0)]
    >>> merge_turns(spans, [("ada", 1.0), (None, 0.5), ("ada", 0.0), ("bob", 0.75)], hop=1.0)
    [Turn(start=0.0, end=3.5, name='ada', score=0.5), Turn(start=3.5, end=5.0, name='bob', score=0.75)]
    """
    turns: list[list] = []
    for i, ((a, b), (name, score)) in enumerate(zip(spans, answers)):
        centre = (a + b) / 2
        start = 0.0 if i == 0 else max(turns[-1][1], centre - hop / 2)
        end = spans[-1][1] if i == len(spans) - 1 else centre + hop / 2
        if turns and turns[-1][2] == name and abs(turns[-1][1] - start) < 1e-6:
            turns[-1][1] = end
            turns[-1][3].append(score)
        else:
            turns.append([start, end, name, [score]])
    i = 1
    while i < len(turns) - 1:
        before, this, after = turns[i - 1], turns[i], turns[i + 1]
        if before[2] == after[2] and len(this[3]) == 1:
            before[1], before[3] = after[1], before[3] + this[3] + after[3]
            del turns[i:i + 2]
        else:
            i += 1
    return [Turn(round(a, 3), round(b, 3), n, float(np.mean(s))) for a, b, n, s in turns]


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
