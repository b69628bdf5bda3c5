"""The unseen-speaker evaluation protocol: enrollment templates, top-1 identification, EER, minDCF, and
open-set identification (TPIR at a false-positive identification rate).

Protocol: per speaker, clips sorted by path; the first ``n_enroll`` enroll as the renormalised mean of
their unit embeddings, the rest (at most ``max_probes``) are probes scored by cosine against every enrolled
speaker; speakers with fewer than ``min_clips`` clips are left out. Target trials pair a probe with its own
speaker, non-target trials with every other one. :data:`PROTOCOLS` names the settings of each dev set.

Open set: the speakers are split in two halves at random; one half is enrolled, the other half's probes
play unknown callers. The threshold is the score that lets ``fpir`` of the unknown callers through (their
best score against the enrolled half); TPIR is the share of enrolled speakers' probes answered with the
right name above it. Open-set EER is where the miss rate (wrong name or rejected) equals FPIR. Both
are averaged over ``splits`` random halvings. At a *calibrated* operating point instead:
:mod:`asit_embed.training.open_set`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def _rates(target_scores: np.ndarray, nontarget_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SpeechBrain's candidate thresholds (every score and every midpoint between neighbours) with the miss
    rate (target <= t) and false-alarm rate (non-target > t) at each, in float32 as SpeechBrain computes them.

    SpeechBrain's ``EER`` and ``minDCF`` define the metrics reported here, but ``minDCF`` holds (thresholds x
    trials) matrices (21 GB for the word corpora's 25,000 trials) and ``EER`` loops over every threshold in
    Python; counting with sorted scores gives the same numbers in O(n log n) (checked by tests/test_metrics.py).
    """
    pos = np.sort(np.asarray(target_scores, dtype=np.float64).ravel())
    neg = np.sort(np.asarray(nontarget_scores, dtype=np.float64).ravel())
    t = np.unique(np.concatenate([pos, neg]))
    t = np.sort(np.concatenate([t, (t[:-1] + t[1:]) / 2]))
    p_miss = np.searchsorted(pos, t, side="right").astype(np.float32) / np.float32(len(pos))
    p_fa = (len(neg) - np.searchsorted(neg, t, side="right")).astype(np.float32) / np.float32(len(neg))
    return t, p_miss, p_fa


def eer(target_scores: np.ndarray, nontarget_scores: np.ndarray) -> tuple[float, float]:
    """Equal error rate (fraction) and the threshold where it is reached, as SpeechBrain's ``EER`` defines
    them: the threshold where |FAR - FRR| is smallest, and (FAR + FRR) / 2 there.

    >>> eer(np.array([0.6, 0.7, 0.8, 0.5]), np.array([0.4, 0.3, 0.2, 0.1]))
    (0.0, 0.4)
    """
    t, p_miss, p_fa = _rates(target_scores, nontarget_scores)
    i = int(np.argmin(np.abs(p_fa - p_miss)))
    return (float(p_fa[i]) + float(p_miss[i])) / 2, float(t[i])


def min_dcf(target_scores: np.ndarray, nontarget_scores: np.ndarray, *, p_target: float = 0.01,
            c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """Normalised minimum detection cost (NIST convention, in [0, 1]) and its threshold.

    The cost is SpeechBrain's ``minDCF``; it is divided here by the cost of the best trivial system,
    ``min(c_miss · p_target, c_fa · (1 − p_target))``, as NIST SRE and VoxSRC report it.
    """
    t, p_miss, p_fa = _rates(target_scores, nontarget_scores)
    c_det = np.float32(c_miss) * p_miss * np.float32(p_target) + np.float32(c_fa) * p_fa * np.float32(1 - p_target)
    i = int(np.argmin(c_det))
    return float(c_det[i]) / min(c_miss * p_target, c_fa * (1 - p_target)), float(t[i])


# The dev sets' protocols. speechocean762: 20 read sentences per speaker. The one-second word corpora
# (speech-commands-test, arabic-speech-commands): speakers with at least 8 words, 3 enroll, up to 20 probes.
PROTOCOLS = {
    "speechocean762": {"n_enroll": 5, "max_probes": None, "min_clips": None},
    "words": {"n_enroll": 3, "max_probes": 20, "min_clips": 8},
}


@dataclass(frozen=True)
class EvalResult:
    top1: float
    eer: float
    eer_threshold: float
    min_dcf: float
    n_speakers: int
    n_enroll: int
    n_probes: int
    target_scores: np.ndarray
    nontarget_scores: np.ndarray
    open_set: dict | None = None   # open_set_eer, tpir_at_fpir (see :func:`open_set_identification`)

    def summary(self) -> dict:
        """JSON-ready scalars (rates as fractions)."""
        return {"top1": round(self.top1, 4), "eer": round(self.eer, 4), "eer_threshold": round(self.eer_threshold, 4),
                "min_dcf": round(self.min_dcf, 4), **(self.open_set or {}), "n_speakers": self.n_speakers,
                "n_enroll": self.n_enroll, "n_probes": self.n_probes, "n_target_trials": int(self.target_scores.size),
                "n_nontarget_trials": int(self.nontarget_scores.size)}


def enrollment_split(keys: Sequence[str], speakers: Sequence[str], *, n_enroll: int = 5,
                     max_probes: int | None = None, min_clips: int | None = None) -> tuple[list[int], list[int]]:
    """Indices ``(enroll, probe)``: per speaker, its items sorted by key, the first ``n_enroll`` enroll and at
    most ``max_probes`` of the rest are probes; speakers with fewer than ``min_clips`` clips are left out."""
    if len(keys) != len(speakers):
        raise ValueError(f"{len(keys)} keys but {len(speakers)} speaker labels")
    by_speaker: dict[str, list[int]] = {}
    for i, s in enumerate(speakers):
        by_speaker.setdefault(s, []).append(i)
    enroll, probe = [], []
    for s in sorted(by_speaker):
        idx = sorted(by_speaker[s], key=lambda i: keys[i])
        if min_clips is not None and len(idx) < min_clips:
            continue
        if len(idx) <= n_enroll:
            raise ValueError(f"speaker {s!r} has {len(idx)} clips; more than n_enroll={n_enroll} are needed")
        enroll += idx[:n_enroll]
        probe += idx[n_enroll:][:max_probes]
    return enroll, probe


def enrollment_templates(x: np.ndarray, speakers: Sequence[str], enroll: Sequence[int],
                         names: Sequence[str]) -> np.ndarray:
    """``(len(names), dim)``: each speaker's template, the renormalised mean of its ``enroll`` clips' rows."""
    label = {s: i for i, s in enumerate(names)}
    templates = np.zeros((len(names), x.shape[1]))
    for i in enroll:
        templates[label[speakers[i]]] += x[i]
    return templates / np.linalg.norm(templates, axis=1, keepdims=True)


def template_scores(queries: np.ndarray, templates: np.ndarray, normalize: Callable | None = None) -> np.ndarray:
    """``(queries, templates)`` cosines of unit ``queries`` against unit ``templates``, mapped by
    ``normalize(cosines, queries, templates)`` to another scoring when given (e.g. AS-norm)."""
    scores = queries @ templates.T
    return scores if normalize is None else normalize(scores, queries, templates)


def open_set_identification(x: np.ndarray, speakers: Sequence[str], enroll: Sequence[int], probe: Sequence[int], *,
                            fpir: float = 0.01, splits: int = 20, seed: int = 0,
                            normalize: Callable | None = None) -> dict:
    """Open-set identification over random halvings of the speakers (see the module docstring).

    Args:
        x: ``(n, dim)`` unit embeddings; enroll, probe: indices from :func:`enrollment_split`.
        normalize: ``normalize(cosines, queries, templates)`` scores with another scoring (e.g. AS-norm).

    Returns:
        ``{"open_set_eer", "tpir_at_fpir", "fpir", "open_set_splits"}`` (rates as fractions, means over splits).
    """
    names = sorted({speakers[i] for i in enroll})
    rng = np.random.default_rng(seed)
    eers, tpirs = [], []
    for _ in range(splits):
        known = set(rng.permutation(names)[: len(names) // 2].tolist())
        known_names = sorted(known)
        templates = enrollment_templates(x, speakers, [i for i in enroll if speakers[i] in known], known_names)
        genuine = [i for i in probe if speakers[i] in known]
        strangers = [i for i in probe if speakers[i] not in known]
        g_scores = template_scores(x[genuine], templates, normalize)
        s_best = template_scores(x[strangers], templates, normalize).max(1)
        right = np.array(known_names)[g_scores.argmax(1)] == np.array([speakers[i] for i in genuine])
        g_best = np.where(right, g_scores.max(1), -np.inf)  # a wrong name is a miss at any threshold
        threshold = np.quantile(s_best, 1 - fpir, method="higher")
        tpirs.append(float((g_best > threshold).mean()))
        # Open-set EER: the threshold where FNIR (miss or wrong name) meets FPIR, on the pooled score sets.
        grid = np.unique(np.r_[s_best, g_best[np.isfinite(g_best)]])
        fnir = np.array([(g_best < t).mean() for t in grid])
        fp = np.array([(s_best >= t).mean() for t in grid])
        k = int(np.argmin(np.abs(fnir - fp)))
        eers.append(float((fnir[k] + fp[k]) / 2))
    return {"open_set_eer": round(float(np.mean(eers)), 4), "tpir_at_fpir": round(float(np.mean(tpirs)), 4),
            "fpir": fpir, "open_set_splits": splits}


def evaluate_embeddings(embeddings: np.ndarray, speakers: Sequence[str], keys: Sequence[str], *,
                        n_enroll: int = 5, max_probes: int | None = None, min_clips: int | None = None,
                        open_set: bool = False, normalize: Callable | None = None) -> EvalResult:
    """Score the protocol on precomputed embeddings.

    Args:
        embeddings: ``(n, dim)`` float, one row per clip (normalised here).
        speakers: ``n`` speaker labels; keys: ``n`` clip identifiers (paths) that fix the enrollment order.
        n_enroll, max_probes, min_clips: the protocol (see :data:`PROTOCOLS`).
        open_set: also measure open-set identification (:func:`open_set_identification`; needs 4+ speakers).
        normalize: ``normalize(cosines, queries, templates)`` scores with another scoring than cosine (e.g.
            AS-norm, :class:`asit_embed.scoring.ASNorm`'s ``score``), for every figure.

    >>> rng = np.random.default_rng(0)
    >>> centres = rng.standard_normal((3, 16))
    >>> emb = np.repeat(centres, 8, axis=0) + 0.1 * rng.standard_normal((24, 16))
    >>> res = evaluate_embeddings(emb, [s for s in "abc" for _ in range(8)], [f"{i:02d}" for i in range(24)])
    >>> res.top1, res.eer, res.n_probes
    (1.0, 0.0, 9)
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(speakers):
        raise ValueError(f"embeddings of shape {x.shape} do not match {len(speakers)} speaker labels")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or Inf")
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    enroll, probe = enrollment_split(keys, speakers, n_enroll=n_enroll, max_probes=max_probes, min_clips=min_clips)
    names = sorted({speakers[i] for i in enroll})
    if len(names) < 2:
        raise ValueError(f"at least 2 speakers are needed, got {names}")
    label = {s: i for i, s in enumerate(names)}
    templates = enrollment_templates(x, speakers, enroll, names)
    scores = template_scores(x[probe], templates, normalize)  # (probes, speakers)
    truth = np.array([label[speakers[i]] for i in probe])
    rows = np.arange(len(probe))
    target = scores[rows, truth]
    nontarget = np.delete(scores, truth + rows * len(names))  # every other speaker, flattened
    e, threshold = eer(target, nontarget)
    return EvalResult(top1=float((scores.argmax(1) == truth).mean()), eer=e, eer_threshold=threshold,
                      min_dcf=min_dcf(target, nontarget)[0], n_speakers=len(names), n_enroll=n_enroll,
                      n_probes=len(probe), target_scores=target, nontarget_scores=nontarget,
                      open_set=open_set_identification(x, speakers, enroll, probe, normalize=normalize)
                      if open_set else None)


def plot_evaluation(result: EvalResult, path, *, title: str = "", score_name: str = "cosine score"):
    """PNG with the target / non-target score histograms and the DET curve, EER marked on both; ``score_name``
    labels the scores' axis (they may be on any scale, e.g. AS-norm's).

    Returns the (closed) matplotlib figure, for callers that want to inspect or restyle it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm
    from sklearn.metrics import det_curve

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    scores = np.r_[result.target_scores, result.nontarget_scores]
    bins = np.linspace(scores.min(), scores.max(), 60)
    ax1.hist(result.nontarget_scores, bins=bins, density=True, alpha=0.6, label="non-target")
    ax1.hist(result.target_scores, bins=bins, density=True, alpha=0.6, label="target")
    ax1.axvline(result.eer_threshold, color="k", ls="--", lw=1, label=f"EER threshold {result.eer_threshold:.3f}")
    ax1.set_xlabel(score_name)
    ax1.legend()
    y = np.r_[np.ones_like(result.target_scores), np.zeros_like(result.nontarget_scores)]
    fpr, fnr, _ = det_curve(y, np.r_[result.target_scores, result.nontarget_scores])
    clip = lambda p: norm.ppf(np.clip(p, 1e-4, 1 - 1e-4))  # noqa: E731
    ax2.plot(clip(fpr), clip(fnr))
    ax2.plot(clip(result.eer), clip(result.eer), "o", label=f"EER {result.eer:.2%}")
    ticks = [0.001, 0.01, 0.05, 0.2, 0.5]
    ax2.set_xticks(clip(np.array(ticks)), [f"{t:.1%}" for t in ticks])
    ax2.set_yticks(clip(np.array(ticks)), [f"{t:.1%}" for t in ticks])
    ax2.set_xlabel("false accept rate")
    ax2.set_ylabel("false reject rate")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle(title or f"top-1 {result.top1:.1%}   EER {result.eer:.2%}   minDCF(0.01) {result.min_dcf:.3f}   "
                 f"({result.n_speakers} speakers, {result.n_probes} probes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
