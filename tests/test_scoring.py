"""AS-norm (asit_embed/scoring.py), the cohort the shipped checkpoint carries, and the registry scoring with it."""

import numpy as np
import pytest

from asit_embed.scoring import DEFAULT_TOP_N, ASNorm, cohort_clips
from enroll import RegistryError, SpeakerRegistry


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_score_is_the_symmetric_normalisation_of_each_side():
    rng = np.random.default_rng(0)
    cohort, q, t = unit(rng.standard_normal((40, 8))), unit(rng.standard_normal((3, 8))), unit(rng.standard_normal((2, 8)))
    asn = ASNorm(cohort, top_n=10)
    raw = q @ t.T
    out = asn.score(raw, q, t)
    for i in range(3):
        for j in range(2):
            qs, ts = np.sort(cohort @ q[i])[-10:], np.sort(cohort @ t[j])[-10:]
            want = 0.5 * ((raw[i, j] - qs.mean()) / qs.std() + (raw[i, j] - ts.mean()) / ts.std())
            assert out[i, j] == pytest.approx(want, rel=1e-4)


def test_a_query_near_the_cohort_loses_its_lead():
    """What AS-norm is for: a 'hub' query, close to many cohort voices, scores high against every template by
    cosine; normalised, its score counts only what stands out from its cohort scores, and it falls behind a
    query far from every voice."""
    rng = np.random.default_rng(1)
    centre = unit(rng.standard_normal(16))
    cohort = unit(centre + 0.6 * rng.standard_normal((200, 16)))
    hub, loner = unit(centre + 0.1 * rng.standard_normal(16)), unit(rng.standard_normal(16))
    template = unit(centre + 0.6 * rng.standard_normal(16))
    asn = ASNorm(cohort, top_n=20)
    cos = np.array([[hub @ template], [loner @ template]])
    normed = asn.score(cos, np.stack([hub, loner]), template[None])
    assert cos[0, 0] > cos[1, 0] and normed[0, 0] < normed[1, 0]


def test_from_metadata_takes_the_shipped_cohort_and_its_top_n():
    cohort = unit(np.random.default_rng(2).standard_normal((300, 8)))
    shipped = ASNorm.from_metadata({"cohort": cohort, "cohort_top_n": 200})
    assert shipped.top_n == 200 and shipped.cohort.shape == (300, 8)
    assert ASNorm.from_metadata({"cohort": cohort}).top_n == DEFAULT_TOP_N   # checkpoints that do not say
    own = ASNorm.from_metadata({"cohort": cohort, "cohort_top_n": 200}, cohort[:30])
    assert own.cohort.shape == (30, 8) and own.top_n == min(DEFAULT_TOP_N, 30)  # a cohort of the user's
    assert ASNorm.from_metadata({}) is None
    with pytest.raises(ValueError, match="cohort"):
        ASNorm(cohort[:1])


def test_registry_scores_with_the_shipped_cohort(encoder, clip_rows):
    meta = encoder.metadata
    assert meta["cohort"].shape[1] == encoder.dim
    speakers = sorted({r["speaker"] for r in clip_rows})[:6]
    clips = {s: [r["path"] for r in clip_rows if r["speaker"] == s] for s in speakers}
    emb = {s: encoder.embed_batch(p) for s, p in clips.items()}
    with SpeakerRegistry(encoder=encoder, as_norm=True) as reg:
        assert reg.scoring == "as-norm" and reg.as_norm.top_n == min(meta.get("cohort_top_n", DEFAULT_TOP_N),
                                                                     len(meta["cohort"]))
        for s in speakers:   # three clips each, as in the demo (from two, one of 24 later clips is a near miss)
            reg.enroll_embeddings(s, emb[s][:3])
        for s in speakers:   # every later clip of an enrolled speaker is named first
            for row in reg.identify_embeddings(emb[s][3:], k=3):
                assert row[0].name == s and row[0].score > row[1].score


def test_registry_without_a_cohort_says_so(encoder):
    from asit_embed import SpeakerEncoder
    from asit_embed.checkpoint import Checkpoint

    bare = SpeakerEncoder(Checkpoint(encoder.config, encoder.model.state_dict()), precision="float32")
    with pytest.raises(RegistryError, match="needs a cohort"):
        SpeakerRegistry(encoder=bare, as_norm=True)
    with SpeakerRegistry(encoder=bare, as_norm=True, cohort=encoder.metadata["cohort"][:20]) as reg:
        assert reg.as_norm.top_n == 20


def test_the_checkpoint_names_the_default_scoring(encoder):
    from asit_embed import SpeakerEncoder
    from asit_embed.checkpoint import Checkpoint

    with SpeakerRegistry(encoder=encoder) as reg:  # the shipped checkpoint's, or cosine where it names none
        assert reg.scoring == encoder.metadata.get("scoring", "cosine")
    meta = {k: v for k, v in encoder.metadata.items() if k != "scoring"}
    with SpeakerRegistry(encoder=SpeakerEncoder(Checkpoint(encoder.config, encoder.model.state_dict(), meta),
                                                precision="float32")) as reg:
        assert reg.scoring == "cosine" and reg.as_norm is None
    meta = {**meta, "scoring": "as-norm"}
    recommends = SpeakerEncoder(Checkpoint(encoder.config, encoder.model.state_dict(), meta), precision="float32")
    with SpeakerRegistry(encoder=recommends) as reg:
        assert reg.scoring == "as-norm" and reg.as_norm is not None
        assert reg.calibration.scoring == "as-norm"  # and the operating points of that scoring
    with SpeakerRegistry(encoder=recommends, as_norm=False) as reg:  # the caller decides over it
        assert reg.scoring == "cosine" and reg.calibration.scoring == "cosine"


def test_cohort_takes_evenly_spaced_clips_of_every_speaker():
    paths = [f"b/{i:02d}.wav" for i in range(20)] + ["a/2.wav", "a/1.wav"]
    speakers = ["b"] * 20 + ["a", "a"]
    chosen = cohort_clips(paths, speakers, 4)
    assert [paths[i] for i in chosen] == ["a/1.wav", "a/2.wav", "b/00.wav", "b/05.wav", "b/10.wav", "b/15.wav"]
    assert len(cohort_clips(paths, speakers, 1)) == 2
