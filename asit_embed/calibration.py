"""Operating points from the impostor score distribution: one for 1:1 verification, one for 1:N identification.

A :class:`Calibration` maps a false-accept rate per trial to the score that reaches it, from *impostor*
scores (a clip against the template of a speaker who did not say it):

- **Verification** (is this ``name``?) accepts at the score whose per-trial false-accept rate is ``far``.
- **Identification** (who among N speakers, or nobody?) compares a stranger with all N templates and keeps
  the best, so a stranger gets through when *any* of N impostor scores passes. With per-trial rate ``p``
  the false-positive identification rate is ``1 - (1 - p)^N``; the threshold for an FPIR target is the
  score at ``p = 1 - (1 - fpir)^(1/N)``, which rises with the registry's size.

How the table is made:

- Above the 90th percentile a generalized Pareto tail (peaks over threshold; fitted by probability-weighted
  moments, evaluated with scipy's ``genpareto``) extrapolates past the measured trials. Cosine scores are
  bounded and so is their impostor tail: the fitted shape comes out negative, where an exponential or
  Gaussian tail would put a 1-in-5,000 threshold 0.1-0.3 too high.
- Scores of one speaker's clips are not independent trials, and a handful of similar-sounding pairs make
  the far tail. So the fit is repeated on bootstrap resamples of the *speakers* (their clips' trials as a
  block) and each rate keeps the ``confidence`` quantile (default :data:`CONFIDENCE`: 75 % for cosine, 97 %
  for AS-norm) of the replicates' scores: a calibration from few speakers errs towards rejecting strangers.
- Trials may come in groups (e.g. one per corpus) weighted equally, so a corpus of many short clips does
  not set the threshold alone.

Voices unlike the calibration's (another language, microphone or age group) move the whole impostor
distribution: strangers then score higher (or lower) against everyone. :meth:`Calibration.adapted` maps the
table to a registry's own voices, measured on its enrolled speakers — different people by construction, so
no labels beyond enrollment are needed — once it holds :data:`ADAPT_MIN_SPEAKERS` of them:

- With enough impostor trials among them (:data:`MIN_TRIALS`: each enrolled clip against every other
  speaker's template), an affine map ``a + b * score`` takes the calibration data's median and upper
  quantile of the same kind of trials onto the registry's. Measured on the dev sets, moving from read
  sentences to one-second words raises impostor scores by 0.16 at the median but only 0.09-0.12 in the far
  tail (cosines are bounded by 1), which a plain shift overshoots as the registry grows. ``b`` is kept
  within 0.9-1.1: a steeper or flatter map is more often noise than voices.
- With fewer trials, a shift by how much the mean cosine between clips of *different* speakers
  (:func:`cross_speaker_mean`) differs from the calibration data's: the steadiest statistic a handful of
  speakers gives.

Only cosine calibrations are adapted. AS-norm already scores each trial against a cohort of other voices,
and mapping its table as well overshot on the dev sets (``benchmarks/open_set.py`` up to commit b9c21e1,
which did): strangers let through at a 1 % target rose to 2.4 % (speechocean762) and 3.6 % (one-second
words) once adapted, where the table as fitted stays under 1 %. So an AS-norm calibration records nothing
to adapt by.

Nothing here is a dependency's: SpeechBrain and scikit-learn give EER/minDCF and DET curves of a score set,
not a stored, size-aware operating point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import genpareto

TAIL_MASS = 0.1      # the Pareto tail is fitted to the top 10 % of impostor scores
RATES = tuple(float(r) for r in np.logspace(-7, math.log10(0.5), 64))  # the table's per-trial rates
_LOG_RATES = np.log(RATES)  # what the table is interpolated in (read on every query)
MIN_SPEAKERS = 4     # fewest speakers a calibration may come from
MIN_TRIALS = 150     # fewest impostor trials (a 1 % operating point then rests on 15 tail scores)
ADAPT_MIN_SPEAKERS = 5  # fewest enrolled speakers a shipped calibration is adapted to (2-3 move FPIR 2-4x)
REFERENCE_RATES = (0.5, 0.25, 0.1, 0.05, 0.025, 0.01)  # impostor quantiles a calibration keeps for adapted()
ADAPT_TAIL_TRIALS = 15  # trials above the upper quantile the affine map is fitted through
ADAPT_SCALE = (0.9, 1.1)  # the affine map's slope is kept within these
# The bootstrap quantile :meth:`Calibration.fit` keeps by default, per scoring.
# AS-norm keeps a higher one: estimated from one half of a dev set's speakers, its impostor tail came out
# more optimistic on the other half than cosine's, and 0.75 let 2.6-3.6 % of speechocean762's strangers
# through at a 1 % target (``benchmarks/open_set.py``; README, "AS-norm scoring").
CONFIDENCE = {"cosine": 0.75, "as-norm": 0.97}


class CalibrationError(ValueError):
    """The data given is too small (or malformed) to calibrate from."""


@dataclass(frozen=True)
class Calibration:
    """Per-trial false-accept rates and the impostor scores that reach them.

    Attributes:
        scores: the score reached by a share ``RATES[i]`` of impostor trials (non-increasing).
        n_trials, n_speakers: how much data it rests on.
        source: where it comes from, in words (shown by the CLI and the server).
        scoring: ``"cosine"`` or ``"as-norm"``: the scores it describes.
        confidence: the bootstrap quantile kept at each rate (0.5: the median estimate).
        cross_mean: the mean cosine between clips of different speakers in the data it was fitted on (what
            :meth:`adapted` compares a registry's voices with); None when not recorded.
        reference: impostor scores of the data's enrollment clips against other speakers' templates, at the
            upper-tail rates :data:`REFERENCE_RATES` (what :meth:`adapted` maps onto a registry's own).
        shift, scale: the map :meth:`adapted` applied, ``shift + scale * score`` (0 and 1: as fitted).
    """

    scores: tuple[float, ...]
    n_trials: int
    n_speakers: int
    source: str
    scoring: str = "cosine"
    confidence: float = 0.75
    cross_mean: float | None = None
    reference: tuple[float, ...] | None = None
    shift: float = 0.0
    scale: float = 1.0

    @classmethod
    def fit(cls, scores, speakers, *, groups=None, source: str, scoring: str = "cosine",
            confidence: float | None = None, replicates: int = 200, seed: int = 0,
            cross_mean: float | None = None, reference=None) -> Calibration:
        """Fit from impostor trials: ``scores (n,)`` with the speaker of each trial's clip ``speakers (n,)``
        (the bootstrap's unit) and optionally its ``groups (n,)`` (weighted equally). For :meth:`adapted`:
        ``cross_mean``, the data's :func:`cross_speaker_mean`, and ``reference``, its enrollment clips'
        :func:`impostor_scores` (kept as quantiles). ``confidence``: the bootstrap quantile kept at each rate
        (default: :data:`CONFIDENCE` of ``scoring``). Refuses (:class:`CalibrationError`) too few speakers or
        trials."""
        if confidence is None:
            confidence = CONFIDENCE.get(scoring, 0.75)
        s = np.asarray(scores, dtype=np.float64).ravel()
        spk = np.asarray(speakers).ravel()
        grp = np.zeros(len(s), dtype=int) if groups is None else np.unique(np.asarray(groups).ravel(),
                                                                          return_inverse=True)[1]
        if len(spk) != len(s) or len(grp) != len(s):
            raise ValueError(f"{len(s)} scores but {len(spk)} speaker labels and {len(grp)} group labels")
        if not np.isfinite(s).all():
            raise CalibrationError("impostor scores contain NaN or Inf")
        n_speakers = len(set(spk.tolist()))
        if n_speakers < MIN_SPEAKERS or len(s) < MIN_TRIALS:
            raise CalibrationError(
                f"too little data to calibrate: {n_speakers} speakers and {len(s)} impostor trials; at least "
                f"{MIN_SPEAKERS} speakers and {MIN_TRIALS} trials are needed, because a 1 % operating point "
                f"must rest on enough scores in the impostor tail (e.g. 6 speakers with 6 clips each give "
                f"6 × 6 × 5 = 180 trials)")
        if np.ptp(s) == 0:
            raise CalibrationError("the impostor scores are all equal: nothing to calibrate from")
        rng = np.random.default_rng(seed)
        # blocks[g][k]: indices of group g's trials whose clip is of its k-th speaker
        blocks = []
        for g in range(grp.max() + 1):
            mine = np.flatnonzero(grp == g)
            _, inverse = np.unique(spk[mine], return_inverse=True)
            blocks.append([mine[inverse == k] for k in range(inverse.max() + 1)])
        size = max(sum(len(b) for b in group) for group in blocks)
        if replicates:
            table = np.stack([_rate_scores(s[_balanced(blocks, size, rng, resample=True)])
                              for _ in range(replicates)])
            s_at = np.quantile(table, confidence, axis=0)
        else:
            s_at = _rate_scores(s[_balanced(blocks, size, rng, resample=False)])
        s_at = np.maximum.accumulate(s_at[::-1])[::-1]  # non-increasing in the rate
        ref = None if reference is None else tuple(
            round(float(v), 6) for v in np.quantile(np.asarray(reference, dtype=np.float64),
                                                    1 - np.asarray(REFERENCE_RATES)))
        return cls(tuple(round(float(v), 6) for v in s_at), int(len(s)), n_speakers, source, scoring,
                   float(confidence), None if cross_mean is None else round(float(cross_mean), 6), ref)

    @property
    def adaptable(self) -> bool:
        """Whether :meth:`adapted` can map this table: a cosine one that recorded what to compare with."""
        return self.scoring == "cosine" and (self.cross_mean is not None or self.reference is not None)

    def adapted(self, cross_mean: float, n_speakers: int, impostors=None) -> Calibration:
        """This table mapped to a registry's voices (see the module's notes): its enrolled speakers'
        :func:`cross_speaker_mean` ``cross_mean``, their number ``n_speakers``, and their clips'
        :func:`impostor_scores` ``impostors`` (optional). Unchanged with fewer than
        :data:`ADAPT_MIN_SPEAKERS` speakers or when it is not :attr:`adaptable`.

        >>> cal = Calibration((0.9, 0.5), 200, 10, "dev", cross_mean=0.1)
        >>> cal.adapted(0.25, 8).scores, cal.adapted(0.25, 3).scores
        ((1.05, 0.65), (0.9, 0.5))
        """
        if n_speakers < ADAPT_MIN_SPEAKERS or not self.adaptable:
            return self
        impostors = None if impostors is None else np.asarray(impostors, dtype=np.float64).ravel()
        if self.reference is not None and impostors is not None and len(impostors) >= MIN_TRIALS:
            rate = min(max(ADAPT_TAIL_TRIALS / len(impostors), REFERENCE_RATES[-1]), REFERENCE_RATES[1])
            log_rates = np.log(REFERENCE_RATES)
            ref_mid, ref_hi = self.reference[0], float(np.interp(math.log(rate), log_rates[::-1], self.reference[::-1]))
            mid, hi = np.quantile(impostors, [0.5, 1 - rate])
            scale = float(np.clip((hi - mid) / max(ref_hi - ref_mid, 1e-6), *ADAPT_SCALE))
            shift = float(mid - scale * ref_mid)
            how = f"{shift:+.3f} {scale:.3f}x, from {len(impostors)} impostor trials"
        elif self.cross_mean is not None and math.isfinite(cross_mean):
            shift, scale = float(cross_mean) - self.cross_mean, 1.0
            how = f"{shift:+.3f}"
        else:
            return self
        return replace(self, scores=tuple(round(shift + scale * v, 6) for v in self.scores), shift=round(shift, 4),
                       scale=round(scale, 4), source=f"{self.source}, adapted to {n_speakers} enrolled speakers ({how})")

    def score_at(self, rate: float) -> float:
        """The score that a share ``rate`` of impostor trials reaches (past the table's ends: its end)."""
        if not 0 < rate < 1:
            raise ValueError(f"rate must be in (0, 1), got {rate!r}")
        return float(np.interp(math.log(rate), _LOG_RATES, self.scores))

    def false_accept_rate(self, score: float) -> float:
        """Share of impostor trials at or above ``score`` (clipped to the table's range of rates)."""
        return float(np.exp(np.interp(score, self.scores[::-1], _LOG_RATES[::-1])))

    def verify_threshold(self, far: float) -> float:
        """1:1: the score at which ``far`` of impostor trials are accepted."""
        return self.score_at(far)

    def identify_threshold(self, n_speakers: int, fpir: float) -> float:
        """1:N: the score at which ``fpir`` of strangers are accepted by a registry of ``n_speakers``."""
        if not 0 < fpir < 1:
            raise ValueError(f"fpir must be in (0, 1), got {fpir!r}")
        n = max(1, int(n_speakers))
        return self.score_at(-math.expm1(math.log1p(-fpir) / n))  # 1 - (1 - fpir)^(1/n), exact for tiny rates

    def to_dict(self) -> dict:
        return {"rates": list(RATES), "scores": list(self.scores), "n_trials": self.n_trials,
                "n_speakers": self.n_speakers, "source": self.source, "scoring": self.scoring,
                "confidence": self.confidence, "cross_mean": self.cross_mean,
                "reference": None if self.reference is None else list(self.reference), "shift": self.shift,
                "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        rates = d.get("rates")
        if rates is not None and not np.allclose(rates, RATES):
            raise ValueError("calibration table was written for other rates")
        cross_mean, reference = d.get("cross_mean"), d.get("reference")
        return cls(tuple(float(v) for v in d["scores"]), int(d["n_trials"]), int(d["n_speakers"]),
                   str(d["source"]), str(d.get("scoring", "cosine")), float(d.get("confidence", 0.75)),
                   None if cross_mean is None else float(cross_mean),
                   None if reference is None else tuple(float(v) for v in reference), float(d.get("shift", 0.0)),
                   float(d.get("scale", 1.0)))

    def describe(self) -> dict:
        """What the CLI and the server report: where it comes from and how much data it rests on."""
        return {"source": self.source, "scoring": self.scoring, "n_speakers": self.n_speakers,
                "n_trials": self.n_trials, "shift": self.shift, "scale": self.scale}


def _balanced(blocks, size: int, rng: np.random.Generator, *, resample: bool) -> np.ndarray:
    """Trial indices with every group brought to ``size`` trials (drawn with replacement); with
    ``resample``, each group's speakers are first drawn with replacement (a speaker bootstrap)."""
    parts = []
    for group in blocks:
        chosen = [group[k] for k in rng.integers(0, len(group), len(group))] if resample else group
        idx = np.concatenate(chosen)
        parts.append(idx if len(idx) == size and not resample else idx[rng.integers(0, len(idx), size)])
    return np.concatenate(parts)


def _rate_scores(s: np.ndarray) -> np.ndarray:
    """The score reached by each of :data:`RATES` of ``s``: empirical quantiles above :data:`TAIL_MASS`, a
    generalized Pareto tail below it (probability-weighted moments, Hosking & Wallis 1987: closed form, so
    hundreds of bootstrap fits take a moment)."""
    rates = np.asarray(RATES)
    out = np.quantile(s, 1 - np.clip(rates, 0, 1))
    u = float(np.quantile(s, 1 - TAIL_MASS))
    y = np.sort(s[s > u] - u)
    if len(y) >= 10 and y[-1] > 0:
        n = len(y)
        a0, a1 = y.mean(), float(np.mean((n - 1 - np.arange(n)) / (n - 1) * y))  # E[Y], E[Y (1 - F(Y))]
        k = a0 / (a0 - 2 * a1) - 2           # Hosking's k; scipy's shape is -k
        scale = 2 * a0 * a1 / (a0 - 2 * a1)
        tail = rates < TAIL_MASS
        out[tail] = u + genpareto.isf(rates[tail] / TAIL_MASS, -k, 0, scale)
    return out


def impostor_scores(embeddings: np.ndarray, speakers, *, normalize=None) -> tuple[np.ndarray, np.ndarray]:
    """Impostor trials among labelled clip embeddings: each clip against the template (renormalised mean of
    the clips) of every *other* speaker. ``normalize(scores, queries, templates)`` maps raw cosines to the
    scoring in use (e.g. AS-norm). Returns ``(scores, speaker of each trial's clip)``.

    >>> x = np.eye(3)[[0, 0, 1, 1, 2, 2]] + 0.1
    >>> scores, who = impostor_scores(x, list("aabbcc"))
    >>> len(scores), sorted(set(who.tolist())), bool(scores.max() < 0.5)
    (12, ['a', 'b', 'c'], True)
    """
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    names, label = np.unique(np.asarray(speakers), return_inverse=True)
    sums = np.zeros((len(names), x.shape[1]))
    np.add.at(sums, label, x)
    templates = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    scores = x @ templates.T
    if normalize is not None:
        scores = normalize(scores, x, templates)
    mask = np.ones_like(scores, dtype=bool)
    mask[np.arange(len(x)), label] = False
    return scores[mask], np.repeat(names[label], max(len(names) - 1, 0))


def cross_speaker_mean(embeddings, speakers) -> float:
    """Mean cosine over all pairs of clips of *different* speakers (NaN with fewer than two speakers), from
    per-speaker sums in O(clips x dim) rather than over every pair.

    >>> x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    >>> round(cross_speaker_mean(x, ["a", "a", "b", "b"]), 6)  # (0 + 0 + 0.6 + 0.6) / 4
    0.3
    """
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    names, label = np.unique(np.asarray(speakers), return_inverse=True)
    if len(names) < 2:
        return float("nan")
    sums = np.zeros((len(names), x.shape[1]))
    np.add.at(sums, label, x)
    counts = np.bincount(label).astype(np.float64)
    total, total_sum = float(len(x)), sums.sum(0)
    # sum over ordered pairs of distinct speakers = |sum of all|^2 - sum over speakers of |their sum|^2
    pairs_sum = float(total_sum @ total_sum) - float((sums * sums).sum())
    return pairs_sum / (total * total - float(counts @ counts))
