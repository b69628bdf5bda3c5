"""Training augmentation: SpeechBrain's waveform augmentations plus SpecAugment-style masking on the fbank."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from speechbrain.augment.time_domain import AddNoise, DropChunk, DropFreq, SpeedPerturb
from torchaudio.transforms import FrequencyMasking, TimeMasking


@dataclass(frozen=True)
class AugmentConfig:
    """Each augmentation is applied to a batch with its probability ``p_*``; 0 switches it off."""

    p_noise: float = 0.5        # white noise at 5–20 dB SNR (no noise corpus is shipped)
    snr_low: float = 5.0
    snr_high: float = 20.0
    p_speed: float = 0.3        # 95 / 105 % speed
    p_drop_chunk: float = 0.3
    p_drop_freq: float = 0.3
    p_gain: float = 0.5         # random gain −6…+6 dB (the fbank's CMN removes most of it; kept for the noise floor)
    p_specaug: float = 0.8
    freq_mask: int = 16         # max mel bins per mask (two masks)
    time_mask: int = 20         # max frames per mask (two masks)


class Augmenter(torch.nn.Module):
    """``wave(batch)`` augments ``(batch, samples)`` waveforms; ``spec(batch)`` masks ``(batch, n_mels, frames)``."""

    def __init__(self, config: AugmentConfig, sample_rate: int):
        super().__init__()
        self.config = config
        self.noise = AddNoise(snr_low=config.snr_low, snr_high=config.snr_high)
        self.speed = SpeedPerturb(orig_freq=sample_rate, speeds=[95, 105])
        self.drop_chunk = DropChunk(drop_length_low=800, drop_length_high=3200, drop_count_low=1, drop_count_high=3)
        self.drop_freq = DropFreq(drop_freq_count_low=1, drop_freq_count_high=3)
        self.freq_masks = torch.nn.Sequential(*[FrequencyMasking(config.freq_mask, iid_masks=True)] * 2)
        self.time_masks = torch.nn.Sequential(*[TimeMasking(config.time_mask, iid_masks=True)] * 2)

    def _on(self, p: float) -> bool:
        return p > 0 and float(torch.rand(())) < p

    def wave(self, x: torch.Tensor) -> torch.Tensor:
        c, n = self.config, x.shape[1]
        lengths = torch.ones(x.shape[0])
        if self._on(c.p_speed):
            x = self.speed(x)
            x = x[:, :n] if x.shape[1] >= n else torch.cat([x, x[:, : n - x.shape[1]]], dim=1)
        if self._on(c.p_drop_freq):
            x = self.drop_freq(x)
        if self._on(c.p_drop_chunk):
            x = self.drop_chunk(x, lengths)
        if self._on(c.p_gain):
            x = x * 10 ** (torch.empty(x.shape[0], 1).uniform_(-6, 6) / 20)
        if self._on(c.p_noise):
            x = self.noise(x, lengths)
        return x

    def spec(self, x: torch.Tensor) -> torch.Tensor:
        if self._on(self.config.p_specaug):
            x = self.time_masks(self.freq_masks(x.unsqueeze(1))).squeeze(1)
        return x
