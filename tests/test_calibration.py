"""Operating points: the calibration table, the registry's two thresholds, calibrating on one's own voices."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from asit_embed.calibration import CONFIDENCE, Calibration, CalibrationError, cross_speaker_mean, impostor_scores
from enroll import SpeakerRegistry


def voices(n_speakers, n_clips, dim, *, spread=0.6, seed=0, common=0.0):
    """Clip embeddings of ``n_speakers`` synthetic voices: a centre each plus noise; ``common`` adds a
    direction shared by all (voices of one domain sound more alike: every score rises)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_speakers, dim))
    x = np.repeat(centres, n_clips, axis=0) + spread * rng.standard_normal((n_speakers * n_clips, dim))
    x[:, 0] += common * np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), [
        f"s{i:02d}" for i in range(n_speakers) for _ in range(n_clips)]


def gaussian_trials(n=20000, speakers=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.1, 0.1, n), rng.integers(0, speakers, n)


def test_thresholds_follow_the_impostor_distribution():
    scores, who = gaussian_trials()
    cal = Calibration.fit(scores, who, source="test", replicates=0)
    for rate in (0.2, 0.05, 0.01):  # inside the measured range: the empirical quantile
        assert cal.verify_threshold(rate) == pytest.approx(np.quantile(scores, 1 - rate), abs=0.01)
    assert cal.false_accept_rate(cal.verify_threshold(0.01)) == pytest.approx(0.01, rel=0.05)
    # past the measured trials (1 in 20,000) the Pareto tail extrapolates near the true quantile
    from scipy.stats import norm

    for rate in (1e-3, 1e-4):
        assert cal.verify_threshold(rate) == pytest.approx(0.1 + 0.1 * norm.isf(rate), abs=0.03)


def test_identification_threshold_rises_with_the_registry_size():
    cal = Calibration.fit(*gaussian_trials(), source="test")
    sizes = [1, 2, 5, 25, 100, 1000, 100000]
    thresholds = [cal.identify_threshold(n, 0.01) for n in sizes]
    assert all(a < b for a, b in zip(thresholds, thresholds[1:])), thresholds
    assert cal.identify_threshold(1, 0.01) == pytest.approx(cal.verify_threshold(0.01))  # one speaker: 1:1
    # at N the per-trial rate is 1 - (1 - FPIR)^(1/N)
    assert cal.false_accept_rate(cal.identify_threshold(100, 0.01)) == pytest.approx(1 - 0.99 ** 0.01, rel=0.05)


def test_the_speaker_bootstrap_errs_towards_rejecting():
    scores, who = gaussian_trials(n=2000, speakers=8)
    median = Calibration.fit(scores, who, source="test", confidence=0.5)
    cautious = Calibration.fit(scores, who, source="test", confidence=0.9)
    assert cautious.verify_threshold(0.001) > median.verify_threshold(0.001)


def test_groups_weigh_equally():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.0, 0.1, 20000), rng.normal(0.3, 0.1, 2000)
    scores, who = np.r_[low, high], np.r_[rng.integers(0, 40, 20000), 100 + rng.integers(0, 40, 2000)]
    pooled = Calibration.fit(scores, who, source="test", replicates=0)
    balanced = Calibration.fit(scores, who, groups=np.r_[np.zeros(20000), np.ones(2000)], source="test",
                               replicates=0)
    mix = np.r_[low, high[rng.integers(0, 2000, 20000)]]  # both groups at the same size
    assert balanced.verify_threshold(0.1) == pytest.approx(np.quantile(mix, 0.9), abs=0.01)
    assert balanced.verify_threshold(0.1) > pooled.verify_threshold(0.1) + 0.05


def test_too_little_data_is_refused_with_the_reason():
    scores, who = gaussian_trials(n=120, speakers=10)
    with pytest.raises(CalibrationError, match=r"120 impostor trials.*at least 4 speakers and 150 trials"):
        Calibration.fit(scores, who, source="test")
    scores, who = gaussian_trials(n=1000, speakers=3)
    with pytest.raises(CalibrationError, match="3 speakers"):
        Calibration.fit(scores, who, source="test")
    with pytest.raises(CalibrationError, match="NaN"):
        Calibration.fit(np.r_[np.nan, np.zeros(500)], np.arange(501) % 10, source="test")


def test_round_trip_through_json():
    cal = Calibration.fit(*gaussian_trials(), source="test", scoring="as-norm")
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal and back.identify_threshold(25, 0.01) == cal.identify_threshold(25, 0.01)


def test_cross_speaker_mean_is_the_mean_over_pairs_of_different_speakers():
    x, names = voices(5, 3, 16, common=0.5)
    who = np.array(names)
    brute = (x @ x.T)[who[:, None] != who[None, :]].mean()
    assert cross_speaker_mean(x, names) == pytest.approx(brute, abs=1e-6)
    assert np.isnan(cross_speaker_mean(x[:3], names[:3]))  # one speaker: no pairs


def test_adapting_moves_every_threshold_by_the_shift_of_the_voices():
    cal = Calibration.fit(*gaussian_trials(), source="dev", cross_mean=0.1)
    moved = cal.adapted(0.3, 12)
    assert moved.shift == pytest.approx(0.2) and moved.scale == 1 and "adapted to 12 enrolled speakers" in moved.source
    assert moved.identify_threshold(12, 0.01) == pytest.approx(cal.identify_threshold(12, 0.01) + 0.2, abs=1e-5)
    assert moved.verify_threshold(0.01) == pytest.approx(cal.verify_threshold(0.01) + 0.2, abs=1e-5)
    assert cal.adapted(0.3, 4) is cal                   # too few speakers to measure their voices by
    assert cal.adapted(float("nan"), 12) is cal
    plain = Calibration.fit(*gaussian_trials(), source="dev")
    assert plain.adapted(0.3, 12) is plain              # recorded nothing to compare with
    assert Calibration.from_dict(json.loads(json.dumps(moved.to_dict()))) == moved


def test_with_enough_trials_adapting_maps_the_median_and_the_tail():
    """Impostor scores that are ``0.2 + 0.95 * s`` of the calibration data's: the table follows, tail included."""
    rng = np.random.default_rng(3)
    reference = rng.normal(0.1, 0.1, 20000)
    cal = Calibration.fit(*gaussian_trials(), source="dev", cross_mean=0.1, reference=reference)
    assert len(cal.reference) == 6 and cal.reference[0] == pytest.approx(0.1, abs=0.01)
    mine = 0.2 + 0.95 * rng.normal(0.1, 0.1, 3000)
    moved = cal.adapted(0.5, 20, mine)                  # the affine map, not the mean shift (0.4)
    assert moved.scale == pytest.approx(0.95, abs=0.03) and moved.shift == pytest.approx(0.2, abs=0.02)
    for n in (20, 200):
        assert moved.identify_threshold(n, 0.01) == pytest.approx(0.2 + 0.95 * cal.identify_threshold(n, 0.01),
                                                                  abs=0.02)
    steep = cal.adapted(0.5, 20, 0.2 + 2 * rng.normal(0.1, 0.1, 3000))
    assert steep.scale == 1.1                           # kept within 0.9-1.1
    few = cal.adapted(0.5, 20, mine[:100])              # under 150 trials: the mean shift
    assert few.scale == 1 and few.shift == pytest.approx(0.4)
    assert Calibration.from_dict(json.loads(json.dumps(moved.to_dict()))) == moved


def test_adapting_brings_strangers_of_another_domain_back_to_the_target():
    """Calibrated on one domain, used on voices that all sound more alike (every score higher): as it is, the
    calibration lets five times too many strangers through; adapted to the enrolled voices, it comes back
    near the target (a little under it: here the shared direction also narrows the impostor scores)."""
    dim, fpir = 64, 0.01
    x, names = voices(60, 6, dim, spread=0.9, common=0.4)
    cal = Calibration.fit(*impostor_scores(x, names), source="domain A", cross_mean=cross_speaker_mean(x, names))
    y, who = voices(410, 4, dim, spread=0.9, seed=1, common=0.6)
    who = np.array(who)
    rates = {"as shipped": [], "adapted": []}
    for draw in range(10):
        known = [f"s{i:02d}" for i in range(20 * draw, 20 * draw + 10)]
        enrolled = np.isin(who, known) & (np.arange(len(who)) % 4 < 2)   # two clips each enroll
        templates = np.stack([y[enrolled & (who == k)].mean(0) for k in known])
        templates /= np.linalg.norm(templates, axis=1, keepdims=True)
        strangers = y[~np.isin(who, [f"s{i:02d}" for i in range(200)])]   # speakers 200-409 call in
        best = (strangers @ templates.T).max(1)
        adapted = cal.adapted(cross_speaker_mean(y[enrolled], who[enrolled]), len(known))
        rates["as shipped"].append((best >= cal.identify_threshold(10, fpir)).mean())
        rates["adapted"].append((best >= adapted.identify_threshold(10, fpir)).mean())
    shipped, adapted = np.mean(rates["as shipped"]), np.mean(rates["adapted"])
    assert shipped > 0.04 and 0.001 < adapted < 0.02
    assert abs(np.log(adapted / fpir)) < abs(np.log(shipped / fpir))


def test_impostor_scores_pair_each_clip_with_every_other_speaker():
    x, names = voices(5, 4, 16)
    scores, who = impostor_scores(x, names)
    assert len(scores) == 20 * 4 and sorted(set(who)) == sorted(set(names))
    assert scores.max() < 0.9  # never a clip against its own speaker


# --- the registry ---------------------------------------------------------------------------------------------
def test_the_shipped_calibration_gives_both_operating_points(encoder):
    assert "calibrations" in encoder.metadata, "the bundled checkpoint ships a calibration"
    reg = SpeakerRegistry(encoder=encoder, adapt=False)
    cal = reg.calibration
    assert cal is not None and cal.source.startswith("dev speakers")
    assert reg.verify_threshold == pytest.approx(cal.verify_threshold(0.01))
    assert reg.threshold == reg.identify_threshold() == pytest.approx(cal.identify_threshold(1, 0.01))  # N <= 1
    x, names = voices(30, 1, encoder.dim)
    reg.enroll_many(zip(names, x), embeddings=True)
    assert reg.identify_threshold() == pytest.approx(cal.identify_threshold(30, 0.01))
    assert reg.identify_threshold() > reg.verify_threshold  # 1:N is stricter than 1:1 at the same rate
    points = reg.operating_points()
    assert points["speakers"] == 30 and points["calibration"]["kind"] == "shipped"


def test_the_registry_adapts_the_shipped_calibration_to_its_voices(encoder, tmp_path):
    shipped = SpeakerRegistry(encoder=encoder, as_norm=False, adapt=False).calibration
    assert shipped.cross_mean is not None and shipped.reference is not None, \
        "the bundled calibration records what a registry adapts it by"
    x, names = voices(8, 3, encoder.dim, common=0.6)
    who = np.array(names)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False) as reg:
        for s in sorted(set(names))[:4]:
            reg.enroll_embeddings(s, x[who == s][:2])
        assert reg.calibration == shipped        # 4 speakers: too few to measure their voices by
        reg.enroll_embeddings("s04", x[who == "s04"][:2])
        two = np.isin(who, sorted(set(names))[:5]) & (np.arange(len(who)) % 3 < 2)
        shift = cross_speaker_mean(x[two], who[two]) - shipped.cross_mean   # 40 impostor trials: the mean shift
        assert abs(shift) > 0.05
        assert reg.identify_threshold() == pytest.approx(shipped.identify_threshold(5, 0.01) + shift, abs=1e-4)
        assert reg.verify_threshold == pytest.approx(shipped.verify_threshold(0.01) + shift, abs=1e-4)
        points = reg.operating_points()["calibration"]
        assert points["kind"] == "shipped" and points["shift"] == pytest.approx(shift, abs=1e-4)
        for s in sorted(set(names)):             # 8 speakers of 3 clips: 168 trials, the affine map
            reg.enroll_embeddings(s, x[who == s], replace=True)
        expected = shipped.adapted(cross_speaker_mean(x, names), 8, impostor_scores(x, names)[0])
        assert expected.scale != 1
        assert reg.identify_threshold() == pytest.approx(expected.identify_threshold(8, 0.01), abs=1e-4)
        reg.remove("s07")                        # follows the enrolled speakers
        assert reg.calibration.shift == pytest.approx(shipped.adapted(
            cross_speaker_mean(x[who != "s07"], who[who != "s07"]), 7,
            impostor_scores(x[who != "s07"], who[who != "s07"])[0]).shift, abs=1e-4)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, adapt=False) as reg:
        assert reg.calibration is not None and reg.calibration.shift == 0
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False) as reg:
        own = reg.calibrate(dict((s, x[who == s]) for s in sorted(set(names))), embeddings=True)
        assert reg.calibration == own and own.shift == 0  # one's own calibration is used as it is


def test_an_as_norm_registry_uses_the_shipped_table_as_fitted(encoder, tmp_path):
    shipped = SpeakerRegistry(encoder=encoder, as_norm=True, adapt=False).calibration
    assert shipped.scoring == "as-norm" and shipped.confidence == CONFIDENCE["as-norm"] > CONFIDENCE["cosine"]
    assert not shipped.adaptable  # AS-norm scores against a cohort already; mapping its table overshot on dev
    x, names = voices(8, 3, encoder.dim, common=0.6)
    who = np.array(names)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=True) as reg:
        for s in sorted(set(names)):  # 8 speakers of 3 clips: 168 trials, enough to adapt a cosine table
            reg.enroll_embeddings(s, x[who == s])
        assert reg.calibration == shipped
        assert reg.identify_threshold() == pytest.approx(shipped.identify_threshold(8, 0.01))
    # even a table that recorded reference trials is not mapped when it describes AS-norm scores
    cal = Calibration.fit(*gaussian_trials(), source="dev", scoring="as-norm",
                          reference=np.random.default_rng(0).normal(0.1, 0.1, 2000))
    assert cal.reference is not None and not cal.adaptable
    assert cal.adapted(float("nan"), 8, impostor_scores(x, names)[0]) is cal


def test_verify_and_identify_decide_at_their_own_thresholds(encoder):
    reg = SpeakerRegistry(encoder=encoder, as_norm=False)  # a query built to a cosine between the thresholds
    x, names = voices(40, 1, encoder.dim, seed=1)
    reg.enroll_many(zip(names, x), embeddings=True)
    lo, hi = reg.verify_threshold, reg.identify_threshold()
    # a query scoring between the two thresholds against s00: enough for 1:1, not for 1:40
    rng = np.random.default_rng(2)
    noise = rng.standard_normal(encoder.dim)
    noise -= noise @ x[0] * x[0]
    noise /= np.linalg.norm(noise)
    target = (lo + hi) / 2
    query = target * x[0] + np.sqrt(1 - target ** 2) * noise
    [best] = reg.identify_embeddings(query, k=1)[0]
    assert best.name == "s00" and best.score == pytest.approx(target, abs=1e-4) and not best.accepted

    reg._embed_query = lambda clip, rate, caller: query.astype(np.float32)  # verify() embeds a clip: this one
    match = reg.verify("s00", "any.wav")
    assert match.accepted and match.score == pytest.approx(target, abs=1e-4)


def test_one_speaker_registry_behaves_like_verification(encoder):
    reg = SpeakerRegistry(encoder=encoder, far=0.02, fpir=0.02)
    x, _ = voices(1, 3, encoder.dim)
    reg.enroll_embeddings("solo", x)
    assert reg.identify_threshold() == pytest.approx(reg.verify_threshold)


def test_calibrate_on_enrolled_speakers_persists_and_survives_other_writers(encoder, tmp_path):
    x, names = voices(10, 5, encoder.dim, spread=0.9)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder) as reg:
        for s in sorted(set(names)):
            reg.enroll_embeddings(s, x[[i for i, n in enumerate(names) if n == s]])
        shipped = reg.verify_threshold
        cal = reg.calibrate()
        assert cal.n_speakers == 10 and cal.n_trials == 50 * 9 and "enrolled" in cal.source
        assert reg.calibration == cal and reg.verify_threshold != pytest.approx(shipped)
        assert reg.operating_points()["calibration"]["kind"] == "registry"
    # another process enrolls more speakers: the calibration stays, and applies to the new size
    code = textwrap.dedent(f"""
        import numpy as np
        from enroll import SpeakerRegistry
        with SpeakerRegistry({str(tmp_path / 'r')!r}) as reg:
            assert reg.operating_points()["calibration"]["kind"] == "registry"
            reg.enroll_embeddings("late", np.ones(reg.dim, dtype=np.float32))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder) as reg:
        assert reg.calibration == cal and len(reg) == 11
        assert reg.identify_threshold() == pytest.approx(cal.identify_threshold(11, 0.01))
        reg.reset_calibration()
        assert reg.calibration.source.startswith("dev speakers")


def test_another_process_calibrating_is_seen_by_an_open_registry(encoder, tmp_path):
    x, names = voices(8, 5, encoder.dim, spread=0.9)
    reader = SpeakerRegistry(tmp_path / "r", encoder=encoder)
    writer = SpeakerRegistry(tmp_path / "r", encoder=encoder)
    cal = writer.calibrate(dict((s, x[[i for i, n in enumerate(names) if n == s]]) for s in set(names)),
                           embeddings=True)
    assert "labelled" in cal.source and len(writer) == 0  # labelled clips calibrate; they are not enrolled
    assert reader.calibration == cal
    reader.close(), writer.close()


def test_calibrate_refuses_too_little_data(encoder):
    reg = SpeakerRegistry(encoder=encoder)
    with pytest.raises(CalibrationError, match="too little data"):
        reg.calibrate()
    x, names = voices(3, 4, encoder.dim)
    for s in sorted(set(names)):
        reg.enroll_embeddings(s, x[[i for i, n in enumerate(names) if n == s]])
    with pytest.raises(CalibrationError, match="3 speakers and 24 impostor trials; at least 4 speakers"):
        reg.calibrate()
    assert reg.operating_points()["calibration"]["kind"] == "shipped"  # nothing was stored


def test_fixed_threshold_overrides_both(encoder):
    reg = SpeakerRegistry(encoder=encoder, threshold=0.42)
    assert reg.calibration is None and reg.verify_threshold == reg.identify_threshold(1000) == 0.42
    with pytest.raises(ValueError, match="fpir"):
        SpeakerRegistry(encoder=encoder, fpir=0)


def test_cli_calibrate(cli_registry, clip_rows, tmp_path, capsys):
    from enroll.cli import main

    reg, _, _ = cli_registry
    assert main(reg + ["calibrate"]) == 2  # two speakers: refused, with the reason
    assert "too little data" in capsys.readouterr().err
    labelled = tmp_path / "labelled"
    for row in clip_rows:
        (labelled / row["speaker"]).mkdir(parents=True, exist_ok=True)
        (labelled / row["speaker"] / row["path"].rsplit("/", 1)[1]).symlink_to(row["path"])
    assert main(reg + ["--json", "calibrate", "--from", str(labelled)]) == 0
    points = json.loads(capsys.readouterr().out)
    assert points["calibration"]["kind"] == "registry" and points["calibration"]["n_speakers"] == 6
    assert main(reg + ["calibrate", "--show"]) == 0
    out = capsys.readouterr().out
    assert "registry: labelled clips (6 speakers" in out and "identify     threshold" in out
    assert main(reg + ["calibrate", "--reset"]) == 0
    assert "shipped" in capsys.readouterr().out


def test_cross_validated_open_set_adapts_cosine_tables_only():
    from asit_embed.training.open_set import calibrated_open_set

    x, names = voices(24, 6, 32)
    enroll = [i for i in range(len(names)) if i % 6 < 3]
    probe = [i for i in range(len(names)) if i % 6 >= 3]
    sets = {"set": (x, names, enroll, probe)}
    cosine = calibrated_open_set(sets, sizes=[10], splits=2, draws=2)["set"][10]
    assert cosine["threshold_adapted"] != cosine["threshold_shipped"]  # 10 speakers of 3 clips: 270 trials
    double = lambda scores, queries, templates: 2 * scores + 1  # noqa: E731  (a scoring on another scale)
    other = calibrated_open_set(sets, sizes=[10], splits=2, draws=2, normalize=double, scoring="as-norm")["set"][10]
    assert {"fpir_shipped", "fpir_own"} <= set(other) and "fpir_adapted" not in other
    # on the doubled scale, at AS-norm's higher bootstrap quantile
    assert other["threshold_shipped"] > 2 * cosine["threshold_shipped"] + 1