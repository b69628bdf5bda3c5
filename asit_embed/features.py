"""Kaldi-compatible log-mel filterbank features and their normalisation.

Every setting comes from the encoder's :class:`~asit_embed.config.FrontEndConfig`, so an encoder always sees the
front-end it was trained with.
"""

from __future__ import annotations

import math

import torch
try:
    from torchaudio.compliance import kaldi
except (ImportError, OSError) as _err:  # a CUDA-linked extension beside a CPU-only torch, most often
    from asit_embed.doctor import HINT

    raise ImportError(f"torchaudio cannot be imported ({_err}); {HINT}") from _err

from asit_embed.config import FrontEndConfig


FBANK_BLOCK_FRAMES = 3000  # frames (30 s) computed at a time: Kaldi's framing and FFT of a whole long clip
                           # would hold ~40 bytes per sample of intermediates (400 MB for 10 minutes)


def fbank(waveform: torch.Tensor, config: FrontEndConfig) -> torch.Tensor:
    """Log-mel filterbank of one mono waveform, without normalisation.

    Long waveforms are computed :data:`FBANK_BLOCK_FRAMES` frames at a time; every frame depends only on its
    own samples (no dither), so the result is the same as in one piece, with memory bounded by the block.

    Args:
        waveform: ``(samples,)`` float32 in [-1, 1] at ``config.sample_rate``.
        config: the encoder's front-end settings (``n_mels``, frame length and shift).

    Returns:
        ``(frames, n_mels)`` float32 log-mel energies (Kaldi ``fbank``, Hanning window, no dither).

    >>> fbank(torch.zeros(16000) + 0.01 * torch.randn(16000), FrontEndConfig()).shape
    torch.Size([98, 128])
    """
    frames = num_frames(waveform.shape[-1], config)
    if frames <= FBANK_BLOCK_FRAMES:
        return _kaldi_fbank(waveform, config)
    shift = int(config.sample_rate * config.frame_shift_ms / 1000)
    blocks = []
    for first in range(0, frames, FBANK_BLOCK_FRAMES):
        n = min(FBANK_BLOCK_FRAMES, frames - first)
        blocks.append(_kaldi_fbank(waveform[first * shift: first * shift + samples_for_frames(n, config)], config))
    return torch.cat(blocks)


def _kaldi_fbank(waveform: torch.Tensor, config: FrontEndConfig) -> torch.Tensor:
    return kaldi.fbank(
        waveform.unsqueeze(0),
        sample_frequency=config.sample_rate,
        num_mel_bins=config.n_mels,
        frame_length=config.frame_length_ms,
        frame_shift=config.frame_shift_ms,
        window_type="hanning",
        dither=0.0,
    )


def normalize(features: torch.Tensor, config: FrontEndConfig) -> torch.Tensor:
    """Apply the model's feature normalisation.

    Per-utterance cepstral mean normalisation (when ``config.cmn``) removes the channel; the global
    ``feat_mean`` / ``feat_std`` (measured on the training set and stored in the config) scale the result.

    Args:
        features: ``(frames, n_mels)`` or ``(batch, frames, n_mels)`` log-mel energies.
        config: the encoder's front-end settings.

    Returns:
        Tensor of the same shape.
    """
    if config.cmn:
        features = features - features.mean(dim=-2, keepdim=True)
    features = (features - config.feat_mean) / config.feat_std
    if config.max_freq_hz > 0:
        features = features * band_mask(config).to(features.dtype)
    return features


def band_mask(config: FrontEndConfig) -> torch.Tensor:
    """``(n_mels,)`` 1 for mel bins whose triangle lies wholly below ``config.max_freq_hz``, else 0.

    Kaldi spaces the bins evenly in mel between 20 Hz and Nyquist; bin ``i`` spans edges ``i`` to ``i + 2``.
    """
    def mel(f):
        return 1127.0 * math.log(1 + f / 700.0)

    lo, hi = mel(20.0), mel(config.sample_rate / 2)
    delta = (hi - lo) / (config.n_mels + 1)
    upper_hz = [700.0 * (math.exp((lo + (i + 2) * delta) / 1127.0) - 1) for i in range(config.n_mels)]
    return torch.tensor([float(u <= config.max_freq_hz) for u in upper_hz])


def features(waveform: torch.Tensor, config: FrontEndConfig) -> torch.Tensor:
    """Normalised log-mel features of one waveform: :func:`fbank` then :func:`normalize`.

    Args:
        waveform: ``(samples,)`` float32 at ``config.sample_rate``.
        config: the encoder's front-end settings.

    Returns:
        ``(frames, n_mels)`` float32.
    """
    return normalize(fbank(waveform, config), config)


def num_frames(num_samples: int, config: FrontEndConfig) -> int:
    """Number of fbank frames Kaldi produces for ``num_samples`` samples (``snip_edges=True``)."""
    window = int(config.sample_rate * config.frame_length_ms / 1000)
    shift = int(config.sample_rate * config.frame_shift_ms / 1000)
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


def samples_for_frames(frames: int, config: FrontEndConfig) -> int:
    """Fewest samples that give exactly ``frames`` fbank frames (the inverse of :func:`num_frames`)."""
    window = int(config.sample_rate * config.frame_length_ms / 1000)
    shift = int(config.sample_rate * config.frame_shift_ms / 1000)
    return window + (frames - 1) * shift
