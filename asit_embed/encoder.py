"""The public speaker encoder: audio in, unit-norm float32 embeddings out."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch

from asit_embed.audio import load_audio, prepare_waveform
from asit_embed.checkpoint import Checkpoint, fingerprint, load_checkpoint
from asit_embed.features import features
from asit_embed.model import ASiTEncoder

log = logging.getLogger(__name__)

Clip = Union[str, os.PathLike, bytes, BinaryIO, np.ndarray, torch.Tensor]


def default_checkpoint_path() -> Path:
    """Path of the checkpoint bundled with the package (trained on speechocean762 ``train`` speakers)."""
    return Path(str(resources.files("asit_embed") / "pretrained" / "default.pt"))


BACKENDS = ("torch", "onnx")
PRECISIONS = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}  # alias -> name


def _cpu_has_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (AVX512-BF16, AMX, ...)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def load_encoder(path: str | os.PathLike | None = None, *, device: str = "cpu", backend: str = "torch",
                 precision: str = "float32") -> SpeakerEncoder:
    """Load a speaker encoder from a checkpoint; ``None`` loads the bundled default.

    Args:
        backend: what runs the network. ``"torch"`` (eager PyTorch, the reference); ``"onnx"`` (ONNX
            Runtime on CPU: the graph is exported once per checkpoint into ``~/.cache/asit-embed``;
            needs ``pip install 'asit-embed[onnx]'``). Both give the same embeddings (cosine >= 0.9999).
            When onnxruntime is missing, ``"onnx"`` falls back to ``"torch"`` with a warning.
        precision: ``"float32"`` (the reference) or ``"bfloat16"`` (``"bf16"``): the torch backend runs
            the network's matrix products in bfloat16 (``torch.autocast``), about twice as fast on CPUs with
            native bf16 (AVX512-BF16 / AMX) and on GPUs; embeddings match float32 to cosine >= 0.9999, so
            registries built either way are interchangeable. Where the CPU lacks native bf16 it falls back to
            float32 with a warning (emulated bf16 would be slower).

    >>> encoder = load_encoder()
    >>> encoder.dim, encoder.backend
    (192, 'torch')
    """
    ckpt = load_checkpoint(default_checkpoint_path() if path is None else path)
    return SpeakerEncoder(ckpt, device=device, backend=backend, precision=precision)


class SpeakerEncoder:
    """Turns speech into speaker embeddings with an :class:`~asit_embed.model.ASiTEncoder`.

    Clips longer than ``config.window_frames`` are cut into windows (``hop_frames`` apart, the last one
    aligned to the end); the unit-norm window embeddings are averaged and renormalised, so memory stays
    bounded for any length. Windows of many clips are batched together, padded and masked.
    """

    def __init__(self, checkpoint: Checkpoint, *, device: str = "cpu", backend: str = "torch",
                 precision: str = "float32"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if PRECISIONS[precision] == "bfloat16" and backend != "torch":
            raise ValueError(f"precision={precision!r} needs backend='torch', not {backend!r}")
        self.device = torch.device(device)
        self.model: ASiTEncoder = checkpoint.build().to(self.device)
        self.config = checkpoint.config
        self.metadata = checkpoint.metadata
        self.fingerprint = fingerprint(checkpoint.config, checkpoint.state_dict)
        self.backend, self._network = self._select_backend(backend)
        self.precision = self._select_precision(PRECISIONS[precision])

    def _select_backend(self, backend: str):
        if backend == "onnx":
            from asit_embed.export import BackendUnavailableError, OnnxModel, cached_onnx

            if self.device.type != "cpu":
                warnings.warn(f"the ONNX backend runs on the CPU only; using torch on {self.device}", stacklevel=3)
                return "torch", self.model
            try:
                return "onnx", OnnxModel(cached_onnx(self.model, self.fingerprint))
            except BackendUnavailableError as err:
                warnings.warn(f"{err}; using the torch backend", stacklevel=3)
                return "torch", self.model
        return "torch", self.model

    def _select_precision(self, precision: str) -> str:
        if precision == "float32":
            return "float32"
        if self.device.type == "cpu" and not _cpu_has_bf16():
            warnings.warn("this CPU has no native bfloat16 support; using float32", stacklevel=4)
            return "float32"
        return "bfloat16"

    def _run(self, spec: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            return self._network(spec, lengths)

    @classmethod
    def from_model(cls, model: ASiTEncoder, *, metadata: dict | None = None, device: str = "cpu") -> SpeakerEncoder:
        """Wrap an in-memory model (e.g. during training); its weights are copied."""
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(Checkpoint(model.config, state, dict(metadata or {})), device=device)

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.config.embedding_dim

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def load(self, clip: Clip, sample_rate: int | None = None) -> np.ndarray:
        """Decode and validate a path / bytes / file object, or validate an array (needs ``sample_rate``).

        Returns ``(samples,)`` float32 mono at the model's rate; raises :class:`~asit_embed.AudioError`.
        """
        if isinstance(clip, (np.ndarray, torch.Tensor)):
            if sample_rate is None:
                raise TypeError("a waveform array needs its sample_rate")
            return prepare_waveform(clip, sample_rate, target_rate=self.sample_rate,
                                    min_seconds=self.config.min_seconds)
        return load_audio(clip, sample_rate=self.sample_rate, min_seconds=self.config.min_seconds)

    def embed(self, waveform: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        """Embedding of one waveform (any rate, mono or multichannel): ``(dim,)`` float32, unit norm.

        >>> encoder = load_encoder()
        >>> t = np.arange(16000) / 16000
        >>> e = encoder.embed(0.1 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t), 16000)
        >>> e.shape, e.dtype, round(float(np.linalg.norm(e)), 4)
        ((192,), dtype('float32'), 1.0)
        """
        return self.embed_waveforms([self.load(waveform, sample_rate)])[0]

    def embed_clip(self, clip: Clip, sample_rate: int | None = None) -> np.ndarray:
        """Embedding of a path, encoded bytes, a file object, or a waveform array (with ``sample_rate``)."""
        return self.embed_waveforms([self.load(clip, sample_rate)])[0]

    def embed_file(self, path: str | os.PathLike) -> np.ndarray:
        """Embedding of one audio file: ``(dim,)`` float32, unit norm."""
        return self.embed_clip(path)

    def embed_files(self, paths: Sequence[str | os.PathLike], *, batch_size: int = 16,
                    progress: bool = False) -> np.ndarray:
        """Embeddings of many files: ``(n, dim)`` float32, each row unit norm, in the order given.

        Files are decoded ``batch_size`` at a time, so memory stays bounded for long lists.
        """
        out = np.empty((len(paths), self.dim), dtype=np.float32)
        starts = range(0, len(paths), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="embedding", unit="batch")
        for i in starts:
            chunk = paths[i:i + batch_size]
            out[i:i + len(chunk)] = self.embed_waveforms([self.load(p) for p in chunk], batch_size=batch_size)
        return out

    @torch.inference_mode()
    def embed_waveforms(self, waveforms: Iterable[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
        """Embeddings of validated mono waveforms at the model's rate: ``(n, dim)`` float32, unit norm."""
        windows, owner = [], []
        for i, wave in enumerate(waveforms):
            feats = features(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), self.config)
            for start, stop in self._windows(feats.shape[0]):
                windows.append(feats[start:stop])
                owner.append(i)
        n = owner[-1] + 1 if owner else 0
        sums = torch.zeros(n, self.dim)
        # Longest first so each batch pads little; results do not depend on the grouping (masks).
        order = sorted(range(len(windows)), key=lambda j: -windows[j].shape[0])
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            lengths = torch.tensor([windows[j].shape[0] for j in idx])
            spec = torch.zeros(len(idx), int(lengths.max()), self.config.n_mels)
            for row, j in enumerate(idx):
                spec[row, : lengths[row]] = windows[j]
            emb = self._run(spec.transpose(1, 2).to(self.device), lengths.to(self.device)).float().cpu()
            emb = torch.nn.functional.normalize(emb, dim=1)
            sums.index_add_(0, torch.tensor([owner[j] for j in idx]), emb)
        return torch.nn.functional.normalize(sums, dim=1).numpy()

    def _windows(self, frames: int) -> list[tuple[int, int]]:
        c = self.config
        if frames < c.min_frames:
            raise ValueError(f"clip has {frames} feature frames; at least {c.min_frames} are needed")
        if frames <= c.window_frames:
            return [(0, frames)]
        starts = list(range(0, frames - c.window_frames + 1, c.hop_frames))
        if starts[-1] + c.window_frames < frames:
            starts.append(frames - c.window_frames)
        return [(s, s + c.window_frames) for s in starts]


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (``(dim,)`` each), in [-1, 1].

    >>> similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    0.7071...
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in size: {a.shape[0]} vs {b.shape[0]}")
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    if denom == 0:
        raise ValueError("cannot compare a zero vector")
    return float(a @ b / denom)
