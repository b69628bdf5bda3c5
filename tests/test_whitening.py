"""The whitening of clip embeddings: fitted on training speakers, stored in the weights, exact on load."""

import logging

import numpy as np
import pytest
import torch

from asit_embed import CheckpointError, SpeakerEncoder, load_encoder
from asit_embed.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from asit_embed.features import features
from asit_embed.model import ASiTEncoder, asit_tiny
from asit_embed.training.backend import fit_whitening
from asit_embed.training.metrics import eer


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ASiTEncoder(asit_tiny(depth=2)).eval()


def _whiten(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    d = model.config.embedding_dim
    model.set_whitening(0.05 * torch.randn(d, generator=g), torch.eye(d) + 0.1 * torch.randn(d, d, generator=g))
    return model


def test_identity_whitening_keeps_the_direction(model):
    spec = torch.randn(3, 128, 150)
    with torch.no_grad():
        plain = model(spec)
        model.set_whitening(torch.zeros(192), torch.eye(192))
        assert torch.equal(model(spec), plain)  # windows are not whitened: clips are, after averaging
        whitened = model.whiten(plain)
    assert torch.allclose(whitened, torch.nn.functional.normalize(plain, dim=1), atol=1e-6)
    assert sorted(k for k in model.state_dict() if k.startswith("whitening.")) == ["whitening.matrix", "whitening.mean"]
    model.set_whitening(None)
    assert not any(k.startswith("whitening.") for k in model.state_dict())


def test_whitened_checkpoint_round_trips_with_its_own_fingerprint(model, tmp_path):
    plain_fp = SpeakerEncoder.from_model(model).fingerprint
    _whiten(model)
    path = save_checkpoint(tmp_path / "w.pt", model)
    loaded = load_checkpoint(path).build()
    assert loaded.whitening is not None
    spec = torch.randn(2, 128, 150)
    with torch.no_grad():
        assert torch.equal(model.whiten(model(spec)), loaded.whiten(loaded(spec)))
    fp = load_encoder(path).fingerprint
    assert fp == SpeakerEncoder.from_model(model).fingerprint and fp != plain_fp  # a registry tells them apart
    model.set_whitening(None)
    assert SpeakerEncoder.from_model(model).fingerprint == plain_fp  # checkpoints without one keep theirs


def test_whitening_runs_in_float32_under_bfloat16_autocast(model):
    _whiten(model)
    spec = torch.randn(2, 128, 150)
    with torch.no_grad():
        e = model(spec)
        ref = model.whiten(e)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.whiten(e)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)


def test_encoder_whitens_the_average_of_a_clips_windows(model):
    _whiten(model)
    encoder = SpeakerEncoder.from_model(model, precision="float32")
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000 * 7)).astype(np.float32)  # several windows
    feats = features(torch.from_numpy(wave), encoder.config.front_end)
    windows = encoder.windows(feats.shape[0])
    assert len(windows) > 1
    with torch.no_grad():
        plain = torch.stack([torch.nn.functional.normalize(model(feats[a:b].T[None]), dim=1)[0] for a, b in windows])
        expected = torch.nn.functional.normalize(model.whiten(plain.mean(0, keepdim=True)), dim=1)[0]
    got = encoder.embed(wave, 16000)
    assert np.allclose(got, expected.numpy(), atol=1e-4)
    assert float(got @ torch.nn.functional.normalize(plain.mean(0), dim=0).numpy()) < 0.99  # it did whiten


@pytest.mark.parametrize("drop", ["whitening.matrix", "whitening.mean"])
def test_half_a_whitening_is_a_checkpoint_error(model, drop):
    state = {k: v for k, v in _whiten(model).state_dict().items() if k != drop}
    with pytest.raises(CheckpointError, match="do not fit"):
        Checkpoint(model.config, state).build()


def test_whitening_of_the_wrong_size_is_refused(model):
    with pytest.raises(ValueError, match="embedding_dim"):
        model.set_whitening(torch.zeros(10), torch.eye(10))
    with pytest.raises(ValueError, match="matrix"):
        model.set_whitening(torch.zeros(192), torch.eye(10))


def test_fine_tuning_from_a_whitened_checkpoint_drops_the_whitening(model, caplog):
    from asit_embed.training.finetune import load_init

    state = _whiten(model).state_dict()
    fresh = ASiTEncoder(model.config)
    with caplog.at_level(logging.INFO, logger="asit_embed.training.finetune"):
        load_init(fresh, state, "w.pt")
    assert fresh.whitening is None and "whitening" in caplog.text
    assert torch.equal(fresh.head.weight, model.head.weight)


def _anisotropic_speakers(rng, n_speakers, clips, d=16):
    """Speakers whose clips spread 8x wider along a few directions than along the rest."""
    centres = rng.standard_normal((n_speakers, d))
    scale = np.ones(d)
    scale[:4] = 8
    x = np.repeat(centres, clips, axis=0) + 0.15 * rng.standard_normal((n_speakers * clips, d)) * scale
    return x, np.repeat([f"s{i}" for i in range(n_speakers)], clips)


def test_fit_whitening_evens_out_the_spread_of_unseen_speakers():
    rng = np.random.default_rng(0)
    x, speakers = _anisotropic_speakers(rng, 60, 12)
    mean, matrix = fit_whitening(x, speakers)
    assert mean.dtype == matrix.dtype == np.float32 and matrix.shape == (16, 16)

    def trial_eer(emb, labels):
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        s = emb @ emb.T
        same = labels[:, None] == labels[None, :]
        upper = np.triu(np.ones_like(same), 1).astype(bool)
        return eer(s[upper & same], s[upper & ~same])[0]

    unseen, labels = _anisotropic_speakers(rng, 20, 6)  # the same kind of voices, not those of the fit
    unit = unseen / np.linalg.norm(unseen, axis=1, keepdims=True)
    assert trial_eer((unit - mean) @ matrix, labels) < 0.5 * trial_eer(unit, labels)


@pytest.mark.parametrize("x, speakers, match", [
    (np.ones((4, 3)), ["a", "a", "b"], "do not match"),
    (np.full((4, 3), np.nan), ["a", "a", "b", "b"], "NaN"),
    (np.eye(4), ["a", "a", "a", "a"], "at least 2 speakers"),
    (np.eye(4), ["a", "b", "c", "d"], "2\\+ clips"),
])
def test_fit_whitening_refuses_what_it_cannot_fit(x, speakers, match):
    with pytest.raises(ValueError, match=match):
        fit_whitening(x, speakers)


def _prehead(model, k=20, share=0.4, seed=2):
    g = torch.Generator().manual_seed(seed)
    d = 3 * model.config.width
    model.set_prehead(0.01 * torch.randn(d, generator=g), torch.randn(d, k, generator=g), share)
    return model


def test_prehead_joins_the_embedding_with_its_share_of_the_cosine(model):
    _whiten(model)
    plain = SpeakerEncoder.from_model(model, precision="float32")
    both = SpeakerEncoder.from_model(_prehead(model, k=20, share=0.4), precision="float32")
    assert (plain.dim, both.dim, both.model.window_dim) == (192, 212, 192 + 576)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (1, 7)]  # one window, several
    e = np.stack([both.embed(w, 16000) for w in waves])
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    # the first part is the whitened embedding, scaled so that it carries 1 - share of the cosine
    ref = np.stack([plain.embed(w, 16000) for w in waves])
    assert np.allclose(e[:, :192] / np.sqrt(0.6), ref, atol=1e-4)
    assert np.allclose(np.linalg.norm(e[:, 192:], axis=1), np.sqrt(0.4), atol=1e-5)
    assert np.allclose(both.embed_batch(waves, sample_rate=16000), e, atol=1e-5)  # batched as one at a time


def test_prehead_checkpoint_round_trips_in_half_precision_with_its_own_fingerprint(model, tmp_path):
    _whiten(model)
    whitened_fp = SpeakerEncoder.from_model(model).fingerprint
    _prehead(model)
    path = save_checkpoint(tmp_path / "p.pt", model, half=True)
    loaded = load_checkpoint(path).build()
    assert loaded.prehead is not None and loaded.output_dim == 212
    assert float(loaded.prehead.share) == pytest.approx(0.4)
    assert sorted(k for k in loaded.state_dict() if k.startswith("prehead.")) == [
        "prehead.share", "prehead.whitening.matrix", "prehead.whitening.mean"]
    encoder = load_encoder(path, precision="float32")
    assert encoder.fingerprint != whitened_fp
    spec = torch.randn(2, 128, 150)
    with torch.no_grad():
        a, b = model.whiten(model(spec)), loaded.whiten(loaded(spec))
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999  # fp16 storage


def test_prehead_of_the_wrong_shape_or_share_is_refused(model):
    with pytest.raises(ValueError, match="head's input"):
        model.set_prehead(torch.zeros(192), torch.eye(192))
    with pytest.raises(ValueError, match="matrix"):
        model.set_prehead(torch.zeros(576), torch.zeros(576, 600))
    for share in (0.0, 1.0):
        with pytest.raises(ValueError, match="share"):
            model.set_prehead(torch.zeros(576), torch.zeros(576, 10), share)


def test_fine_tuning_from_a_prehead_checkpoint_drops_it(model, caplog):
    from asit_embed.training.finetune import load_init

    state = _prehead(_whiten(model)).state_dict()
    fresh = ASiTEncoder(model.config)
    with caplog.at_level(logging.INFO, logger="asit_embed.training.finetune"):
        load_init(fresh, state, "p.pt")
    assert fresh.whitening is None and fresh.prehead is None and "whitening" in caplog.text
