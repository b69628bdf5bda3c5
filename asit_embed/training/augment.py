"""Training augmentation: SpeechBrain's waveform augmentations plus SpecAugment-style masking on the fbank,
and reverberation in rooms simulated by pyroomacoustics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from speechbrain.augment.time_domain import AddNoise, DropChunk, DropFreq, SpeedPerturb
from speechbrain.processing.signal_processing import reverberate
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
    p_reverb: float = 0.0       # simulated rooms, one per clip (needs pyroomacoustics: pip install 'asit-embed[train]')
    rt60_low: float = 0.2       # reverberation time range of the simulated rooms, seconds
    rt60_high: float = 0.8
    rooms: int = 200            # size of the simulated room bank (made once, from the seed below)
    room_seed: int = 0


def simulated_rirs(count: int, sample_rate: int, rt60_low: float = 0.2, rt60_high: float = 0.8,
                   seed: int = 0) -> list[torch.Tensor]:
    """``count`` room impulse responses of random shoebox rooms (image source method, pyroomacoustics).

    Rooms are 3–10 × 3–8 × 2.5–4 m with a reverberation time drawn from ``rt60_low``–``rt60_high`` s, a source
    and a microphone at random places at least 0.5 m from the walls. SpeechBrain's ``AddReverb`` can only
    read impulse responses from files listed in a CSV and no RIR corpus is shipped, so the rooms are simulated
    here and applied with the function ``AddReverb`` uses (``reverberate``).
    """
    try:
        import pyroomacoustics as pra
    except ImportError as e:
        raise ImportError("reverberation (p_reverb > 0) simulates rooms with pyroomacoustics: "
                          "pip install 'asit-embed[train]'") from e
    if count < 1 or not 0 < rt60_low <= rt60_high:
        raise ValueError(f"need count >= 1 and 0 < rt60_low <= rt60_high, got {count}, {rt60_low}, {rt60_high}")
    rng = np.random.default_rng(seed)
    rirs = []
    while len(rirs) < count:
        room_dim = rng.uniform([3.0, 3.0, 2.5], [10.0, 8.0, 4.0])
        try:
            absorption, max_order = pra.inverse_sabine(rng.uniform(rt60_low, rt60_high), room_dim)
        except ValueError:  # a reverberation time this room cannot have (too short for its size): draw again
            continue
        # the order is capped: beyond ~30 reflections the image sources cost much and add only a faint tail
        room = pra.ShoeBox(room_dim, fs=sample_rate, materials=pra.Material(absorption), max_order=min(max_order, 30))
        room.add_source(rng.uniform(0.5, room_dim - 0.5))
        room.add_microphone(rng.uniform(0.5, room_dim - 0.5))
        room.compute_rir()
        rirs.append(torch.from_numpy(np.asarray(room.rir[0][0], dtype=np.float32)))
    return rirs


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
        self.rirs = (simulated_rirs(config.rooms, sample_rate, config.rt60_low, config.rt60_high, config.room_seed)
                     if config.p_reverb > 0 else [])

    def _on(self, p: float) -> bool:
        return p > 0 and float(torch.rand(())) < p

    def reverb(self, x: torch.Tensor) -> torch.Tensor:
        """Each waveform of ``x`` in a room drawn from the bank, at its own average amplitude, aligned on the
        direct path (``AddReverb`` uses one room for a whole batch)."""
        picks = torch.randint(len(self.rirs), (x.shape[0],)).tolist()
        return torch.cat([reverberate(x[i:i + 1], self.rirs[j], rescale_amp="avg") for i, j in enumerate(picks)])

    def wave(self, x: torch.Tensor) -> torch.Tensor:
        c, n = self.config, x.shape[1]
        lengths = torch.ones(x.shape[0])
        if self._on(c.p_speed):
            x = self.speed(x)
            x = x[:, :n] if x.shape[1] >= n else torch.cat([x, x[:, : n - x.shape[1]]], dim=1)
        if self._on(c.p_reverb):
            x = self.reverb(x)
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
