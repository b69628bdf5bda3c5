"""The encoder's settings: three frozen dataclasses, one per concern, composed into :class:`EncoderConfig`.

- :class:`FrontEndConfig`: how audio becomes features (rate, log-mel filterbank, normalisation, band limit).
- :class:`ArchitectureConfig`: the network (patches, transformer size, embedding head, positional table).
- :class:`InferenceConfig`: how a clip of any length is cut into windows, and the shortest clip accepted.

A checkpoint stores the flat union of their fields (:meth:`EncoderConfig.to_dict`); that dict is also what
the encoder's fingerprint hashes, so checkpoints written before the split load with the same fingerprint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FrontEndConfig:
    """Kaldi-style log-mel features and their normalisation."""

    sample_rate: int = 16000
    n_mels: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    cmn: bool = True
    # > 0: mel bins reaching above this frequency are zeroed after normalisation, so audio recorded at
    # 8 kHz (telephone band) and wideband audio give the same features; 0 uses the full band
    max_freq_hz: float = 0.0
    feat_mean: float = 0.0     # global statistics of the training set, applied after CMN
    feat_std: float = 1.0


@dataclass(frozen=True)
class ArchitectureConfig:
    """The Vision Transformer and its embedding head."""

    # patches: (mel bins, frames); stride == size means non-overlapping
    patch_size: tuple[int, int] = (128, 2)
    patch_stride: tuple[int, int] = (128, 2)
    # transformer
    width: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    # head
    embedding_dim: int = 192
    pool_attention_dim: int = 128
    # frames covered by the learned positional table: the training crop (longer inputs interpolate it)
    crop_frames: int = 200

    def __post_init__(self) -> None:
        # Checkpoints store tuples as lists; normalise so equality and hashing keep working.
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        object.__setattr__(self, "patch_stride", tuple(self.patch_stride))
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.crop_frames < self.patch_size[1]:
            raise ValueError(f"crop_frames {self.crop_frames} is shorter than one patch ({self.patch_size[1]} frames)")


@dataclass(frozen=True)
class InferenceConfig:
    """Windowing of long clips (unit-norm window embeddings are averaged) and the shortest clip accepted.

    ``hop_frames == window_frames`` splits a long clip evenly into the fewest windows of at most
    ``window_frames`` (``SpeakerEncoder.windows``), rather than stepping by the hop.
    """

    window_frames: int = 200
    hop_frames: int = 100
    min_seconds: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.hop_frames <= self.window_frames:
            raise ValueError(f"hop_frames {self.hop_frames} must be in 1..window_frames ({self.window_frames})")


_PARTS = {"front_end": FrontEndConfig, "model": ArchitectureConfig, "inference": InferenceConfig}
_OWNER = {f.name: part for part, cls in _PARTS.items() for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class EncoderConfig:
    """Everything an encoder checkpoint needs: front-end, architecture and inference settings.

    Fields of the parts read through as attributes (``config.n_mels``, ``config.depth``,
    ``config.window_frames``); :meth:`replace` and :meth:`from_dict` take the flat field names.

    >>> c = EncoderConfig.from_dict({"depth": 4, "hop_frames": 200})
    >>> c.model.depth, c.depth, c.inference.hop_frames
    (4, 4, 200)
    """

    front_end: FrontEndConfig = field(default_factory=FrontEndConfig)
    model: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        if self.model.patch_size[0] > self.front_end.n_mels:
            raise ValueError(f"patch height {self.model.patch_size[0]} exceeds n_mels {self.front_end.n_mels}")

    def __getattr__(self, name: str):
        part = _OWNER.get(name)
        if part is None:
            raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")
        return getattr(object.__getattribute__(self, part), name)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        """From the flat dict a checkpoint stores (unknown keys are an error)."""
        unknown = sorted(set(d) - set(_OWNER))
        if unknown:
            raise TypeError(f"unknown encoder setting(s) {unknown}")
        return cls(**{part: part_cls(**{k: v for k, v in d.items() if _OWNER[k] == part})
                      for part, part_cls in _PARTS.items()})

    def to_dict(self) -> dict:
        """The flat dict of every field: the checkpoint format, and what the fingerprint hashes."""
        return {k: v for part in _PARTS for k, v in dataclasses.asdict(getattr(self, part)).items()}

    def replace(self, **changes) -> EncoderConfig:
        """A copy with some fields (flat names) changed."""
        return EncoderConfig.from_dict({**self.to_dict(), **changes})

    @property
    def freq_patches(self) -> int:
        return (self.n_mels - self.patch_size[0]) // self.patch_stride[0] + 1

    def time_patches(self, frames: int) -> int:
        """Number of patch columns for ``frames`` spectrogram frames (0 when shorter than one patch)."""
        if frames < self.patch_size[1]:
            return 0
        return (frames - self.patch_size[1]) // self.patch_stride[1] + 1

    @property
    def min_frames(self) -> int:
        return self.patch_size[1]


def asit_tiny(**overrides) -> EncoderConfig:
    """ViT-Tiny (192 wide, 12 blocks, 3 heads, ≈5.6 M parameters) over frame-like 128×2 patches."""
    return EncoderConfig.from_dict({**dict(width=192, depth=12, num_heads=3), **overrides})


def asit_small(**overrides) -> EncoderConfig:
    """ViT-Small (384 wide, 12 blocks, 6 heads, ≈22 M parameters) over frame-like 128×2 patches."""
    return EncoderConfig.from_dict({**dict(width=384, depth=12, num_heads=6), **overrides})
