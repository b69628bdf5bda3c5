"""Open-set identification at a *calibrated* operating point, on dev sets: the protocol's trials, the
calibration pooled from several dev sets (what ``tools/calibrate.py`` ships), what a calibration records to
adapt to a registry's voices, and the cross-validated measurement of all of it by enrolled-set size
(``benchmarks/open_set.py``, ``asit-embed evaluate``). The protocol itself: :mod:`asit_embed.training.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from asit_embed.training.metrics import enrollment_templates, template_scores


def protocol_trials(x: np.ndarray, speakers: Sequence[str], enroll: Sequence[int], probe: Sequence[int],
                    names: Sequence[str] | None = None, *,
                    normalize: Callable | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trials of the protocol among ``names`` (default: every enrolled speaker): each of their probes against
    its own speaker's template (target) and every other one's (impostor); ``normalize(scores, queries,
    templates)`` maps cosines to another scoring (e.g. AS-norm). Returns ``(target scores, impostor scores,
    speaker of each impostor trial's probe)``."""
    names = sorted({speakers[i] for i in enroll} if names is None else names)
    keep = set(names)
    templates = enrollment_templates(x, speakers, [i for i in enroll if speakers[i] in keep], names)
    probes = [i for i in probe if speakers[i] in keep]
    scores = template_scores(x[probes], templates, normalize)
    own = np.array([names.index(speakers[i]) for i in probes])
    mask = np.ones_like(scores, dtype=bool)
    mask[np.arange(len(probes)), own] = False
    return (scores[np.arange(len(probes)), own], scores[mask],
            np.repeat(np.array([speakers[i] for i in probes]), len(names) - 1))


def pooled_calibration(trials: Sequence[tuple[str, np.ndarray, np.ndarray]], *, source: str,
                       scoring: str = "cosine", voices: dict | None = None):
    """A :class:`~asit_embed.calibration.Calibration` from the impostor trials of several dev sets,
    ``[(set name, scores, speaker of each trial's probe)]`` as :func:`protocol_trials` gives them: each set
    weighted equally, its speakers kept apart from other sets' by the set's name. ``voices``: what
    :func:`dev_voices` measures, for adapting it to a registry's voices."""
    from asit_embed.calibration import Calibration

    return Calibration.fit(np.concatenate([scores for _, scores, _ in trials]),
                           np.concatenate([[f"{name}/{w}" for w in who] for name, _, who in trials]),
                           groups=np.concatenate([[name] * len(scores) for name, scores, _ in trials]),
                           source=source, scoring=scoring, **(voices or {}))


def dev_voices(sets: Sequence[tuple], names: Sequence[Sequence[str] | None] | None = None) -> dict:
    """What a cosine calibration records so that a registry can adapt it to its own voices
    (:meth:`~asit_embed.calibration.Calibration.adapted`), from dev sets ``[(x, speakers, enroll, probe)]``
    (each set's speakers ``names[i]``, default all it enrolls): ``reference``, the
    :func:`~asit_embed.calibration.impostor_scores` of their enrollment clips, as a registry enrolled from them
    would score them, and ``cross_mean``, the :func:`~asit_embed.calibration.cross_speaker_mean` of all their
    clips (sets weighted equally)."""
    from asit_embed.calibration import cross_speaker_mean, impostor_scores

    means, impostors = [], []
    for i, (x, speakers, enroll, probe) in enumerate(sets):
        keep = set(speakers[j] for j in enroll) if names is None or names[i] is None else set(names[i])
        clips = [j for j in (*enroll, *probe) if speakers[j] in keep]
        means.append(cross_speaker_mean(x[clips], [speakers[j] for j in clips]))
        enrolled = [j for j in enroll if speakers[j] in keep]
        impostors.append(impostor_scores(x[enrolled], [speakers[j] for j in enrolled])[0])
    return {"cross_mean": float(np.mean(means)), "reference": np.concatenate(impostors)}


def calibrated_open_set(sets: dict[str, tuple], *, sizes: Sequence[int] = (5, 10, 25, 100), fpir: float = 0.01,
                        splits: int = 50, draws: int = 10, seed: int = 0, shipped=None,
                        calibrate_on: Sequence[str] | None = None, normalize: Callable | None = None,
                        scoring: str = "cosine", halve: bool = True) -> dict:
    """Open-set identification at the *calibrated* operating point, by enrolled-set size, cross-validated.

    ``sets``: ``{name: (x, speakers, enroll, probe)}`` (unit embeddings and :func:`enrollment_split` indices).
    In each of ``splits`` random halvings of every set's speakers, half A calibrates and half B measures:

    - ``shipped``: one calibration from the protocol's impostor trials among the A halves of the sets named
      in ``calibrate_on`` (default: all), weighted equally (how ``tools/calibrate.py`` makes the shipped one,
      from all their dev speakers); or, when a :class:`~asit_embed.calibration.Calibration` is passed as
      ``shipped``, that one (e.g. a checkpoint's);
    - ``adapted``: ``shipped`` moved to the N enrolled speakers' voices
      (:meth:`~asit_embed.calibration.Calibration.adapted`, from their enrollment clips): what a registry
      does by default;
    - ``own``: a calibration from the A half of this set alone, from its enrollment clips, leave-one-out (what
      :meth:`enroll.SpeakerRegistry.calibrate` does with a registry's enrolled speakers).

    For each size N that leaves at least 2 strangers in B, ``draws`` random draws of N enrolled speakers from
    B; the rest of B call in as strangers. FPIR: share of stranger probes accepted as anyone; TPIR: share of
    enrolled speakers' probes answered with the right name and accepted. Returns ``{set: {N: {...}}}`` with
    means over splits and draws, and ``det`` (FNIR/FPIR pairs at the largest N) for a DET plot.
    ``normalize(scores, queries, templates)`` scores with another scoring than cosine (e.g. AS-norm), named
    ``scoring`` (``"as-norm"``) for the calibrations fitted here.
    ``halve=False`` (with a ``shipped`` calibration, for sets it was not fitted on): no halving, N of *all*
    the set's speakers enrolled and all the others calling in; no ``own`` rows.
    """
    from asit_embed.calibration import Calibration, CalibrationError, cross_speaker_mean, impostor_scores

    def fit_or_none(fit, *args, **kw) -> Calibration | None:
        try:
            return fit(*args, **kw)
        except CalibrationError:  # too few speakers in a half: that calibration is left out
            return None

    rng = np.random.default_rng(seed)
    acc: dict = {}
    det: dict = {}
    for _ in range(splits):
        halves, trials = {}, []
        for name, (x, speakers, enroll, probe) in sets.items():
            names = sorted({speakers[i] for i in enroll})
            perm = rng.permutation(names).tolist()
            a, b = (sorted(perm[: len(names) // 2]), perm[len(names) // 2:]) if halve else ([], perm)
            halves[name] = (a, b)
            if shipped is None and (calibrate_on is None or name in calibrate_on):
                trials.append((name, *protocol_trials(x, speakers, enroll, probe, a, normalize=normalize)[1:]))
        on = [n for n in sets if calibrate_on is None or n in calibrate_on]
        cv_shipped = shipped or fit_or_none(  # only a cosine calibration records what to adapt it by
            pooled_calibration, trials, source="dev halves", scoring=scoring, voices=None if normalize else dev_voices(
                [sets[n] for n in on], [halves[n][0] for n in on]))
        for name, (x, speakers, enroll, probe) in sets.items():
            a, b = halves[name]
            own_clips = [i for i in enroll if speakers[i] in set(a)]
            own = fit_or_none(Calibration.fit, *impostor_scores(x[own_clips], [speakers[i] for i in own_clips],
                                                                normalize=normalize), source="own half",
                              scoring=scoring) if a else None
            for size in sizes:
                if size > len(b) - 2:
                    continue
                for _ in range(draws):
                    perm = rng.permutation(b).tolist()
                    known, strangers = sorted(perm[:size]), set(perm[size:])
                    templates = enrollment_templates(x, speakers, [i for i in enroll if speakers[i] in set(known)], known)
                    genuine = [i for i in probe if speakers[i] in set(known)]
                    g = template_scores(x[genuine], templates, normalize)
                    right = np.array(known)[g.argmax(1)] == np.array([speakers[i] for i in genuine])
                    g_best = np.where(right, g.max(1), -np.inf)
                    calls = [i for i in probe if speakers[i] in strangers]
                    s_best = template_scores(x[calls], templates, normalize).max(1)
                    row = acc.setdefault(name, {}).setdefault(size, {})
                    row.setdefault("draws", []).append(1)
                    known_clips = [i for i in enroll if speakers[i] in set(known)]
                    who = [speakers[i] for i in known_clips]
                    adapted = None if cv_shipped is None or not cv_shipped.adaptable else cv_shipped.adapted(
                        cross_speaker_mean(x[known_clips], who), size, impostor_scores(x[known_clips], who)[0])
                    for kind, cal in (("shipped", cv_shipped), ("adapted", adapted), ("own", own)):
                        if cal is None:
                            continue
                        t = cal.identify_threshold(size, fpir)
                        row.setdefault(f"fpir_{kind}", []).append(float((s_best >= t).mean()))
                        row.setdefault(f"tpir_{kind}", []).append(float((g_best >= t).mean()))
                        row.setdefault(f"threshold_{kind}", []).append(t)
                    d = det.setdefault(name, {}).setdefault(size, ([], []))
                    d[0].append(g_best)
                    d[1].append(s_best)
    out = {name: {size: {k: (len(v) if k == "draws" else round(float(np.mean(v)), 4)) for k, v in row.items()}
                  for size, row in rows.items()} for name, rows in acc.items()}
    for name, by_size in det.items():
        size = max(by_size)
        g, s = np.concatenate(by_size[size][0]), np.concatenate(by_size[size][1])
        grid = np.quantile(s, np.linspace(0.5, 1, 101))
        out[name]["det"] = {"size": size, "fpir": [round(float((s >= t).mean()), 5) for t in grid],
                            "fnir": [round(float((g < t).mean()), 5) for t in grid]}
    return out


def plot_open_set_det(result: dict, path, *, fpir: float = 0.01):
    """PNG of FNIR against FPIR (normal-deviate axes) for each set of a :func:`calibrated_open_set` result,
    at its largest enrolled-set size, with the calibrated operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    deviate = lambda p: norm.ppf(np.clip(np.asarray(p, dtype=float), 1e-4, 1 - 1e-4))  # noqa: E731
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    for name, rows in result.items():
        det = rows["det"]
        line, = ax.plot(deviate(det["fpir"]), deviate(det["fnir"]), label=f"{name} (N = {det['size']})")
        point = rows[det["size"]]
        for kind, marker in (("shipped", "o"), ("own", "s")):
            if f"fpir_{kind}" not in point:
                continue
            ax.plot(deviate(point[f"fpir_{kind}"]), deviate(1 - point[f"tpir_{kind}"]), marker, color=line.get_color(),
                    label=f"  {kind} calibration: FPIR {point[f'fpir_{kind}']:.2%}")
    ax.axvline(deviate(fpir), color="k", ls=":", lw=1)
    ticks = [0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95]
    ax.set_xticks(deviate(ticks), [f"{t:.1%}" for t in ticks], rotation=45)
    ax.set_yticks(deviate(ticks), [f"{t:.1%}" for t in ticks])
    ax.set_xlabel("FPIR (strangers accepted)")
    ax.set_ylabel("FNIR (enrolled speakers missed or misnamed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
