"""A registry's operating points: which calibration is in force, and the two thresholds it gives.

In order: a fixed ``threshold`` the caller chose; the registry's own calibration (``calibrate()``, kept in its
store so every process opening it uses it); the calibration shipped with the encoder's checkpoint, mapped to
the enrolled voices once enough of them are enrolled (``adapt``); the checkpoint's legacy threshold; a default.
"""

from __future__ import annotations

import json

import numpy as np

from asit_embed.calibration import ADAPT_MIN_SPEAKERS, Calibration, cross_speaker_mean, impostor_scores
from enroll.store import Store

DEFAULT_THRESHOLD = 0.5  # used only when the encoder's checkpoint carries no calibration at all
ADAPT_SAMPLE_SPEAKERS = 200  # speakers whose clips measure a registry's voices for the shipped calibration
DEFAULT_FAR = 0.01       # verification: share of impostor trials accepted
DEFAULT_FPIR = 0.01      # identification: share of unknown callers accepted as someone enrolled


class OperatingPoints:
    """The calibration in force for a registry's ``store`` and ``scoring`` (``"cosine"`` / ``"as-norm"``), and
    the thresholds at its targets ``far`` (verification) and ``fpir`` (identification)."""

    def __init__(self, store: Store, dim: int, meta: dict, *, scoring: str, far: float = DEFAULT_FAR,
                 fpir: float = DEFAULT_FPIR, threshold: float | None = None, adapt: bool = True):
        for what, rate in (("far", far), ("fpir", fpir)):
            if not 0 < rate < 1:
                raise ValueError(f"{what} must be a rate in (0, 1), got {rate!r}")
        self.far, self.fpir = float(far), float(fpir)
        self.fixed = None if threshold is None else float(threshold)
        self.scoring = scoring
        self.adapt = bool(adapt)
        self._store, self._dim, self._meta = store, dim, meta
        table = (meta.get("calibrations") or {}).get(scoring)
        self._shipped = None if table is None else Calibration.from_dict(table)
        self._own: tuple[str | None, Calibration | None] = (None, None)  # (stored JSON, parsed)
        self._adapted: tuple[int, Calibration | None] = (-1, None)  # (store version, shipped adapted to it)

    @property
    def _key(self) -> str:
        return f"calibration:{self.scoring}"

    @property
    def calibration(self) -> Calibration | None:
        """The registry's own calibration, else the shipped one (adapted when ``adapt``); None with a fixed
        threshold or a checkpoint that carries none."""
        if self.fixed is not None:
            return None
        raw = self._store.get_meta(self._key)  # read each time: another process may calibrate
        if raw != self._own[0]:
            self._own = (raw, None if raw is None else Calibration.from_dict(json.loads(raw)))
        if self._own[1] is not None:
            return self._own[1]
        shipped = self._shipped
        if shipped is None or not self.adapt or not shipped.adaptable:
            return shipped
        version = self._store.version()
        if self._adapted[0] != version:
            with self._store.snapshot():
                version = self._store.version()
                names, x = self._store.clip_sample(ADAPT_SAMPLE_SPEAKERS)
            n, x = len(set(names)), np.asarray(x).reshape(len(names), self._dim)
            self._adapted = (version, shipped if n < ADAPT_MIN_SPEAKERS else shipped.adapted(
                cross_speaker_mean(x, names), n, impostor_scores(x, names)[0]))
        return self._adapted[1]

    def verify_threshold(self) -> float:
        cal = self.calibration
        return self._fallback() if cal is None else cal.verify_threshold(self.far)

    def identify_threshold(self, n_speakers: int) -> float:
        cal = self.calibration
        return self._fallback() if cal is None else cal.identify_threshold(n_speakers, self.fpir)

    def _fallback(self) -> float:
        if self.fixed is not None:
            return self.fixed
        legacy = self._meta.get("threshold_asnorm" if self.scoring == "as-norm" else "threshold")
        return DEFAULT_THRESHOLD if legacy is None else float(legacy)

    def describe(self, n_speakers: int) -> dict:
        """JSON-ready: both thresholds, their targets and the calibration behind them."""
        cal = self.calibration
        own = cal is not None and cal is self._own[1]
        return {"identify_threshold": round(self.identify_threshold(n_speakers), 4), "fpir": self.fpir,
                "verify_threshold": round(self.verify_threshold(), 4), "far": self.far, "speakers": n_speakers,
                "scoring": self.scoring,
                "calibration": ("fixed threshold" if cal is None and self.fixed is not None else
                                None if cal is None else {"kind": "registry" if own else "shipped", **cal.describe()})}

    def keep(self, cal: Calibration | None) -> None:
        """Store ``cal`` as the registry's own calibration (None: forget it, the shipped one applies again)."""
        self._store.write_meta(self._key, None if cal is None else json.dumps(cal.to_dict()))
