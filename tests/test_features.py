"""The front-end on its own: Kaldi fbank, normalisation, the band limit the shipped model uses (3.8 kHz)."""

import pytest
import torch
import torchaudio
from torchaudio.compliance import kaldi

from asit_embed import load_audio
from asit_embed.config import FrontEndConfig
from asit_embed.features import band_mask, fbank, features, normalize, num_frames, samples_for_frames

SHIPPED = FrontEndConfig(max_freq_hz=3800.0)


@pytest.fixture(scope="module")
def speech(clip_rows):
    return torch.from_numpy(load_audio(clip_rows[0]["path"]))


def test_fbank_is_kaldi_fbank(speech):
    ours = fbank(speech, FrontEndConfig())
    ref = kaldi.fbank(speech[None], num_mel_bins=128, sample_frequency=16000, window_type="hanning", dither=0.0)
    assert ours.shape == (num_frames(speech.shape[0], FrontEndConfig()), 128)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("frames", [1, 2, 98, 200, 1001])
def test_frame_counts_invert(frames):
    cfg = FrontEndConfig()
    n = samples_for_frames(frames, cfg)
    assert num_frames(n, cfg) == frames and num_frames(n - 1, cfg) == frames - 1
    assert fbank(torch.randn(n), cfg).shape[0] == frames


def test_normalisation_removes_the_channel_and_scales(speech):
    cfg = FrontEndConfig(feat_mean=1.5, feat_std=4.0)
    raw = fbank(speech, cfg)
    out = normalize(raw, cfg)
    # CMN: a constant gain (a channel) shifts every log-mel bin equally and is removed (except where the
    # quietest frames sit on fbank's energy floor).
    louder = normalize(fbank(speech * 2.0, cfg), cfg)
    clear = raw.min(0).values > -14  # mel bins never on the energy floor (log of float32 eps: -15.9)
    assert clear.sum() > 50 and torch.allclose(louder[:, clear], out[:, clear], atol=1e-3)
    assert torch.allclose(out.mean(0), torch.full((128,), -1.5 / 4.0), atol=1e-4)
    assert torch.allclose(out * 4.0 + 1.5, raw - raw.mean(0), atol=1e-4)
    batch = normalize(torch.stack([raw, raw]), cfg)  # (batch, frames, n_mels) works the same
    assert torch.allclose(batch[1], out)


def test_band_mask_keeps_exactly_the_bins_below_the_limit():
    mask = band_mask(SHIPPED)
    # Kaldi's own filterbank: bin i's triangle ends at the centre of bin i + 1. Every kept bin ends at or
    # below 3.8 kHz, the first dropped one above it.
    _, centres = kaldi.get_mel_banks(128, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    centres_hz = centres.ravel()  # torchaudio returns the centres already in Hz
    kept = int(mask.sum())
    assert mask[:kept].all() and not mask[kept:].any()  # a prefix of low bins
    assert centres_hz[kept] <= 3800 < centres_hz[kept + 1]
    assert 90 < kept < 110
    assert band_mask(FrontEndConfig()).all() or FrontEndConfig().max_freq_hz == 0


def test_band_limit_makes_telephone_and_wideband_audio_alike(speech):
    wide = features(speech, SHIPPED)
    assert (wide[:, band_mask(SHIPPED) == 0] == 0).all()
    # The same speech through an 8 kHz channel: full-band features change a lot, band-limited ones little.
    narrow = torchaudio.functional.resample(torchaudio.functional.resample(speech, 16000, 8000), 8000, 16000)
    full_cfg = FrontEndConfig()
    full_gap = (features(narrow, full_cfg) - features(speech, full_cfg)).abs().mean()
    limited_gap = (features(narrow, SHIPPED) - wide).abs().mean()
    assert limited_gap < 0.05 * full_gap and limited_gap < 0.05


def test_long_clips_give_the_same_features_and_resampling_in_blocks():
    """Blockwise fbank and resampling (memory bounded by the block) equal processing in one piece."""
    import numpy as np
    import torchaudio.functional as AF

    from asit_embed.audio import resample
    from asit_embed.config import FrontEndConfig
    from asit_embed.features import FBANK_BLOCK_FRAMES, _kaldi_fbank, fbank

    config = FrontEndConfig()
    wave = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 16000 * 65).astype(np.float32))
    assert fbank(wave, config).shape[0] > 2 * FBANK_BLOCK_FRAMES
    assert torch.equal(fbank(wave, config), _kaldi_fbank(wave, config))
    x = np.random.default_rng(1).normal(0, 0.1, 44100 * 60).astype(np.float32)
    assert np.array_equal(resample(x, 44100, 16000), AF.resample(torch.from_numpy(x), 44100, 16000).numpy())
