import numpy as np
import pytest

from asit_embed.training.metrics import eer, enrollment_split, evaluate_embeddings, min_dcf, plot_evaluation


def brute_force_eer(tgt, non):
    best = (2.0, None)
    for t in np.unique(np.r_[tgt, non]):
        frr, far = (tgt < t).mean(), (non >= t).mean()
        if abs(frr - far) < best[0]:
            best = (abs(frr - far), (frr + far) / 2)
    return best[1]


def test_eer_separable_and_overlapping():
    assert eer(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2, 0.3]))[0] == 0.0
    rng = np.random.default_rng(0)
    tgt, non = rng.normal(1, 1, 400), rng.normal(-1, 1, 4000)
    assert abs(eer(tgt, non)[0] - brute_force_eer(tgt, non)) < 0.005
    assert abs(eer(tgt, non)[0] - 0.1587) < 0.03  # two unit Gaussians 2 apart: EER = Φ(-1)


def test_min_dcf_is_normalised():
    assert min_dcf(np.array([0.9, 0.8]), np.array([0.1, 0.2]))[0] == 0.0
    rng = np.random.default_rng(1)
    value = min_dcf(rng.normal(0, 1, 300), rng.normal(0, 1, 3000))[0]
    assert 0.8 <= value <= 1.0  # chance-level scores: no better than always rejecting


def test_enrollment_split_sorts_by_key_and_checks_counts():
    keys = ["b3", "a1", "b1", "a2", "b2", "a3"]
    spk = ["b", "a", "b", "a", "b", "a"]
    enroll, probe = enrollment_split(keys, spk, n_enroll=2)
    assert [keys[i] for i in enroll] == ["a1", "a2", "b1", "b2"]
    assert [keys[i] for i in probe] == ["a3", "b3"]
    with pytest.raises(ValueError, match="speaker 'a' has 3 clips"):
        enrollment_split(keys, spk, n_enroll=3)


def test_evaluate_counts_and_a_swapped_label():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((4, 32))
    emb = np.repeat(centres, 7, axis=0) + 0.05 * rng.standard_normal((28, 32))
    spk = [s for s in "abcd" for _ in range(7)]
    keys = [f"{i:03d}" for i in range(28)]
    res = evaluate_embeddings(emb, spk, keys, n_enroll=5)
    assert (res.top1, res.eer, res.n_probes) == (1.0, 0.0, 8)
    assert res.target_scores.shape == (8,) and res.nontarget_scores.shape == (24,)
    spk[13] = "a"  # the last clip of "b" (key 013, still a probe) now claims to be "a"
    res = evaluate_embeddings(emb, spk, keys, n_enroll=5)
    assert res.n_probes == 8 and res.top1 == pytest.approx(7 / 8)


def test_evaluate_rejects_bad_input(tmp_path):
    emb = np.ones((4, 3))
    with pytest.raises(ValueError, match="do not match"):
        evaluate_embeddings(emb, ["a"] * 3, ["k"] * 3)
    with pytest.raises(ValueError, match="at least 2 speakers"):
        evaluate_embeddings(emb, ["a"] * 4, list("wxyz"), n_enroll=2)
    emb[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_embeddings(emb, list("aabb"), list("wxyz"), n_enroll=1)


def test_plot_writes_png(tmp_path):
    rng = np.random.default_rng(3)
    emb = np.repeat(rng.standard_normal((3, 8)), 6, axis=0) + 0.5 * rng.standard_normal((18, 8))
    res = evaluate_embeddings(emb, [s for s in "xyz" for _ in range(6)], [f"{i:02d}" for i in range(18)], n_enroll=3)
    fig = plot_evaluation(res, tmp_path / "eval.png")
    hist, det = fig.axes
    # The histograms hold every trial once (densities integrate to 1), the DET axis the EER point.
    assert len(hist.patches) == 2 * 59
    assert det.get_xlabel() == "false accept rate" and f"EER {res.eer:.2%}" in det.get_legend_handles_labels()[1]
    assert f"{res.top1:.1%}" in fig._suptitle.get_text()
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "eval.png")
    assert image.shape[:2] == (round(4.2 * 110), 11 * 110) and image.std() > 0.05  # drawn, not blank


def test_plot_histograms_cover_scores_beyond_the_cosine_range(tmp_path):
    """AS-norm scores run past 1: every trial still lands in a bar, labelled with the scoring's name."""
    rng = np.random.default_rng(4)
    emb = np.repeat(rng.standard_normal((3, 8)), 6, axis=0) + 0.5 * rng.standard_normal((18, 8))
    res = evaluate_embeddings(emb, [s for s in "xyz" for _ in range(6)], [f"{i:02d}" for i in range(18)], n_enroll=3,
                              normalize=lambda cos, q, t: 5 * cos)  # a scale like AS-norm's
    assert res.target_scores.max() > 1
    fig = plot_evaluation(res, tmp_path / "eval.png", score_name="as-norm score")
    hist = fig.axes[0]
    heights = [p.get_height() for p in hist.patches]
    widths = hist.patches[0].get_width()
    scores = np.r_[res.target_scores, res.nontarget_scores]
    assert hist.patches[0].get_x() <= scores.min() and hist.patches[58].get_x() + widths >= scores.max()
    assert sum(heights[:59]) * widths == pytest.approx(1) and sum(heights[59:]) * widths == pytest.approx(1)
    assert hist.get_xlabel() == "as-norm score"


def test_word_protocol_drops_small_speakers_and_caps_probes():
    speakers = ["a"] * 30 + ["b"] * 9 + ["c"] * 5
    keys = [f"{s}{i:02d}" for s, i in zip(speakers, range(44))]
    enroll, probe = enrollment_split(keys, speakers, n_enroll=3, max_probes=20, min_clips=8)
    assert len(enroll) == 6 and {speakers[i] for i in enroll} == {"a", "b"}  # c (5 clips) is left out
    assert sum(speakers[i] == "a" for i in probe) == 20 and sum(speakers[i] == "b" for i in probe) == 6


def test_open_set_separates_good_from_random_embeddings():
    rng = np.random.default_rng(0)
    n_spk, per = 20, 12
    speakers = [f"s{k:02d}" for k in range(n_spk) for _ in range(per)]
    keys = [f"{i:03d}" for i in range(n_spk * per)]
    good = np.repeat(rng.standard_normal((n_spk, 32)), per, axis=0) + 0.2 * rng.standard_normal((n_spk * per, 32))
    res = evaluate_embeddings(good, speakers, keys, n_enroll=3, open_set=True)
    assert res.open_set["tpir_at_fpir"] == 1.0 and res.open_set["open_set_eer"] == 0.0
    assert res.summary()["tpir_at_fpir"] == 1.0
    noise = rng.standard_normal((n_spk * per, 32))
    bad = evaluate_embeddings(noise, speakers, keys, n_enroll=3, open_set=True).open_set
    # Random vectors: at 1 % FPIR almost no genuine caller is both right and accepted; EER near chance.
    assert bad["tpir_at_fpir"] < 0.1 and bad["open_set_eer"] > 0.3


@pytest.mark.parametrize("ties", [False, True])
def test_eer_and_min_dcf_equal_speechbrains(ties):
    """The counting implementation gives SpeechBrain's EER and minDCF exactly (theirs needs O(n²) memory)."""
    import torch
    from speechbrain.utils.metric_stats import EER, minDCF

    from asit_embed.training.metrics import eer, min_dcf

    rng = np.random.default_rng(3)
    pos, neg = rng.normal(0.6, 0.15, 200), rng.normal(0.1, 0.2, 2000)
    if ties:
        pos, neg = np.round(pos, 2), np.round(neg, 2)
    assert eer(pos, neg) == EER(torch.as_tensor(pos), torch.as_tensor(neg))
    cost, threshold = minDCF(torch.as_tensor(pos), torch.as_tensor(neg))
    assert min_dcf(pos, neg) == (pytest.approx(cost / 0.01), pytest.approx(threshold))
