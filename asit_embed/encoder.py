"""The public speaker encoder: audio in, unit-norm float32 embeddings out."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch

from asit_embed.audio import AudioError, load_audio, prepare_waveform
from asit_embed.checkpoint import Checkpoint, fingerprint, load_checkpoint
from asit_embed.features import features
from asit_embed.model import ASiTEncoder
from asit_embed.stream import FileStream, fbank_blocks, normalized_windows, stream_seconds
from asit_embed.windowing import even_spans, spans

log = logging.getLogger(__name__)

Clip = Union[str, os.PathLike, bytes, BinaryIO, np.ndarray, torch.Tensor]


def default_checkpoint_path() -> Path:
    """Path of the checkpoint bundled with the package (trained on speechocean762 ``train`` speakers)."""
    return Path(str(resources.files("asit_embed") / "pretrained" / "default.pt"))


BACKENDS = ("torch", "onnx")
WINDOW_BATCH = 16  # windows per forward pass, at least: a long clip's windows are a batch even one clip at a time
PRECISIONS = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
              "bf16": "bfloat16"}  # alias -> name


def native_bfloat16() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (AVX512-BF16, AMX, ...)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def load_encoder(path: str | os.PathLike | None = None, *, device: str = "cpu", backend: str = "torch",
                 precision: str = "auto", vad: bool = False) -> SpeakerEncoder:
    """Load a speaker encoder from a checkpoint; ``None`` loads the bundled default.

    Args:
        backend: what runs the network. ``"torch"`` (eager PyTorch, the reference); ``"onnx"`` (ONNX
            Runtime on CPU: the graph is exported once per checkpoint into ``~/.cache/asit-embed``;
            needs ``pip install 'asit-embed[onnx]'``). Both give the same embeddings (cosine >= 0.9999).
            When onnxruntime is missing, ``"onnx"`` falls back to ``"torch"`` with a warning.
        precision: ``"auto"`` (the default: bfloat16 where the hardware runs it natively, else float32),
            ``"float32"`` (the reference) or ``"bfloat16"`` (``"bf16"``): the torch backend runs the
            network's matrix products in bfloat16 (``torch.autocast``), about twice as fast on CPUs with
            native bf16 (AVX512-BF16 / AMX) and on GPUs; embeddings match float32 to cosine >= 0.999, so
            registries built either way are interchangeable. An explicit ``"bfloat16"`` where the CPU lacks
            native bf16 falls back to float32 with a warning (emulated bf16 would be slower).
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ...: where the torch backend runs.
        vad: cut every clip down to its speech (Silero VAD, ``pip install 'asit-embed[vad]'``) before
            embedding it; a clip without speech raises :class:`~asit_embed.AudioError` ("no speech found").

    >>> encoder = load_encoder()
    >>> encoder.dim, encoder.backend
    (192, 'torch')
    """
    ckpt = load_checkpoint(default_checkpoint_path() if path is None else path)
    return SpeakerEncoder(ckpt, device=device, backend=backend, precision=precision, vad=vad)


@dataclass(frozen=True)
class Segment:
    """A stretch of a clip and its embedding: ``start`` and ``end`` in seconds, ``embedding`` ``(dim,)``."""

    start: float
    end: float
    embedding: np.ndarray


class SpeakerEncoder:
    """Turns speech into speaker embeddings with an :class:`~asit_embed.model.ASiTEncoder`.

    Clips longer than ``config.window_frames`` are cut into windows (:meth:`windows`); the unit-norm window
    embeddings are averaged, through the checkpoint's whitening if it has one
    (:class:`~asit_embed.model.Whitening`, and :class:`~asit_embed.model.PreHead`), and renormalised. Windows of many clips
    are batched together, padded and masked.
    """

    def __init__(self, checkpoint: Checkpoint, *, device: str = "cpu", backend: str = "torch",
                 precision: str = "auto", vad: bool = False):
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
        self.vad = bool(vad)
        if self.vad:
            from asit_embed.vad import _load

            _load()  # fail now, with the install hint, rather than at the first clip

    def _select_backend(self, backend: str):
        if backend == "onnx":
            from asit_embed.export import BackendUnavailableError, cached_onnx

            if self.device.type != "cpu":
                warnings.warn(f"the ONNX backend runs on the CPU only; using torch on {self.device}", stacklevel=3)
                return "torch", self.model
            try:
                return "onnx", cached_onnx(self.model, self.fingerprint)
            except BackendUnavailableError as err:
                warnings.warn(f"{err}; using the torch backend", stacklevel=3)
                return "torch", self.model
        return "torch", self.model

    def _select_precision(self, precision: str) -> str:
        native = self.device.type != "cpu" or native_bfloat16()
        if precision == "auto":
            return "bfloat16" if self.backend == "torch" and native else "float32"
        if precision == "float32":
            return "float32"
        if not native:
            warnings.warn("this CPU has no native bfloat16 support; using float32", stacklevel=4)
            return "float32"
        return "bfloat16"

    def _run(self, spec: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.backend == "torch" and bool((lengths == spec.shape[-1]).all()):
            lengths = None  # nothing padded: the same embeddings without the cost of masking
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            return self._network(spec, lengths)

    @classmethod
    def from_model(cls, model: ASiTEncoder, *, metadata: dict | None = None, device: str = "cpu",
                   precision: str = "auto") -> SpeakerEncoder:
        """Wrap an in-memory model (e.g. during training); its weights are copied."""
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(Checkpoint(model.config, state, dict(metadata or {})), device=device, precision=precision)

    @property
    def dim(self) -> int:
        """Embedding size: ``config.embedding_dim``, plus the size of the checkpoint's pre-head analysis if it
        has one (:class:`~asit_embed.model.PreHead`)."""
        return self.model.output_dim

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def prepare(self, clip: Clip, sample_rate: int | None = None, *, vad: bool | None = None) -> np.ndarray:
        """Decode and validate one clip into what the network embeds: ``(samples,)`` float32 mono at the
        model's rate. ``clip``: a path, encoded bytes, a binary file object, or a waveform array with its
        ``sample_rate`` (any rate, mono or ``(channels, samples)``). With speech detection (``vad``, default
        the encoder's setting) only the speech is kept. Raises :class:`~asit_embed.AudioError`.
        """
        if isinstance(clip, (np.ndarray, torch.Tensor)):
            if sample_rate is None:
                raise TypeError("a waveform array needs its sample_rate, e.g. encoder.embed(wave, sample_rate=16000)")
            wave = prepare_waveform(clip, sample_rate, target_rate=self.sample_rate, min_seconds=self.config.min_seconds)
            source = f"waveform of shape {tuple(clip.shape)}"
        else:
            if sample_rate is not None:
                raise TypeError("sample_rate applies to waveform arrays only; an encoded file carries its own rate")
            wave = load_audio(clip, sample_rate=self.sample_rate, min_seconds=self.config.min_seconds)
            source = repr(os.fspath(clip)) if isinstance(clip, (str, os.PathLike)) else "the clip"
        if self.vad if vad is None else vad:
            from asit_embed.vad import keep_speech

            wave = keep_speech(wave, self.sample_rate, source=source)
            if wave.shape[0] < self.config.min_seconds * self.sample_rate:
                raise AudioError(f"{source} holds {wave.shape[0] / self.sample_rate:.2f} s of speech; at least "
                                 f"{self.config.min_seconds:g} s are needed")
        return wave

    def embed_segments(self, clip: Clip, sample_rate: int | None = None, *, window: float = 2.0,
                       hop: float = 1.0, vad: bool | None = None) -> list[Segment]:
        """One embedding per stretch of a clip, for who-spoke-when: :class:`Segment` ``(start, end,
        embedding)`` with times in seconds, windows of ``window`` seconds every ``hop`` seconds (the last one
        ends with the clip). With speech detection on, segments less than half speech are left out.

        >>> encoder = load_encoder()
        >>> t = np.arange(5 * 16000) / 16000
        >>> wave = 0.1 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)
        >>> [(s.start, s.end) for s in encoder.embed_segments(wave, 16000)]
        [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0)]
        """
        if not (window >= self.config.min_seconds and hop > 0):
            raise ValueError(f"window must be at least {self.config.min_seconds:g} s and hop positive, "
                             f"got window={window}, hop={hop}")
        wave = self.prepare(clip, sample_rate, vad=False)  # keep the timeline; VAD decides per segment below
        rate, n = self.sample_rate, wave.shape[0]
        size = min(int(round(window * rate)), n)
        starts = [a for a, _ in spans(n, size, int(round(hop * rate)))]
        if self.vad if vad is None else vad:
            from asit_embed.vad import speech_regions

            speech = np.zeros(n, dtype=bool)
            for a, b in speech_regions(wave, rate):
                speech[a:b] = True
            starts = [s for s in starts if speech[s:s + size].mean() >= 0.5]
        pieces = [wave[s:s + size] for s in starts]
        embeddings = self._embed_prepared(pieces) if pieces else np.zeros((0, self.dim), np.float32)
        return [Segment(round(s / rate, 3), round((s + size) / rate, 3), e) for s, e in zip(starts, embeddings)]

    def embed(self, clip: Clip, sample_rate: int | None = None, *, vad: bool | None = None) -> np.ndarray:
        """Embedding of one clip: ``(dim,)`` float32, unit norm.

        ``clip``: a path, encoded bytes, a binary file object, or a waveform array (any rate, mono or
        multichannel, float or integer PCM) with its ``sample_rate``; arrays are resampled to the model's rate.

        >>> encoder = load_encoder()
        >>> t = np.arange(16000) / 16000
        >>> e = encoder.embed(0.1 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t), sample_rate=16000)
        >>> e.shape, e.dtype, round(float(np.linalg.norm(e)), 4)
        ((192,), dtype('float32'), 1.0)
        """
        if self._streams(clip, sample_rate, vad):
            return self._embed_stream(clip)[0]
        return self._embed_prepared([self.prepare(clip, sample_rate, vad=vad)])[0]

    def embed_batch(self, clips: Iterable[Clip], *, sample_rate: int | None = None, batch_size: int = 16,
                    progress: bool = False, vad: bool | None = None) -> np.ndarray:
        """Embeddings of many clips: ``(n, dim)`` float32, each row unit norm, in the order given.

        ``clips``: any iterable of what :meth:`embed` takes (``sample_rate`` applies to every array among
        them). Clips are decoded ``batch_size`` at a time, so memory stays bounded for long lists, and their
        windows go through the network ``max(batch_size, 16)`` at a time; the vectors equal those of one clip
        at a time. ``progress``: a progress bar counting clips.
        """
        described = self._embed_described(clips, sample_rate=sample_rate, batch_size=batch_size,
                                          progress=progress, vad=vad)
        return np.stack([e for e, _, _ in described]) if described else np.empty((0, self.dim), np.float32)

    def _embed_described(self, clips: Iterable[Clip], *, sample_rate: int | None = None, batch_size: int = 16,
                         progress: bool = False, vad: bool | None = None) -> list[tuple[np.ndarray, float, str]]:
        """``(embedding, seconds at the model's rate, sha256 of those float32 samples)`` of each clip, as
        :meth:`embed_batch` embeds them (what a registry records of an enrolled clip); long files are
        streamed (:mod:`asit_embed.stream`)."""
        clips = list(clips)
        window_batch = max(batch_size, WINDOW_BATCH)
        out: list = [None] * len(clips)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(clips), desc="embedding", unit="clip")
        for i in range(0, len(clips), batch_size):
            waves = {}
            for j in range(i, min(i + batch_size, len(clips))):
                rate = _rate_for(clips[j], sample_rate)
                if self._streams(clips[j], rate, vad):
                    out[j] = self._embed_stream(clips[j], batch_size=window_batch)
                else:
                    waves[j] = self.prepare(clips[j], rate, vad=vad)
            embeddings = self._embed_prepared(waves.values(), batch_size=window_batch)
            for (j, wave), emb in zip(waves.items(), embeddings):
                out[j] = (emb, wave.shape[0] / self.sample_rate, hashlib.sha256(wave.tobytes()).hexdigest())
            if bar is not None:
                bar.update(min(batch_size, len(clips) - i))
        if bar is not None:
            bar.close()
        return out

    def _streams(self, clip: Clip, sample_rate: int | None, vad: bool | None) -> bool:
        """Whether ``clip`` is a long file to embed as a stream (speech detection needs the whole signal)."""
        return sample_rate is None and not (self.vad if vad is None else vad) and stream_seconds(clip) is not None

    @torch.inference_mode()
    def _embed_stream(self, clip: Clip, *, batch_size: int = WINDOW_BATCH) -> tuple[np.ndarray, float, str]:
        """:meth:`_embed_described` of one long file, read twice as a stream with memory bounded by a block:
        once for validation and the features' mean, once to embed its windows (:mod:`asit_embed.stream`)."""
        front_end = self.config.front_end
        stream = FileStream(clip, self.sample_rate)
        total, count = torch.zeros(front_end.n_mels, dtype=torch.float64), 0
        for block in fbank_blocks(stream.blocks(), front_end):
            total += block.sum(0, dtype=torch.float64)
            count += block.shape[0]
        stream.check(self.config.min_seconds)
        windows = self.windows(count)
        sums, batch = torch.zeros(self.model.window_dim, dtype=torch.float64), []
        for i, window in enumerate(normalized_windows(stream, front_end, windows, (total / count).float())):
            batch.append(window)
            if len(batch) == batch_size or i == len(windows) - 1:
                spec = torch.stack(batch).transpose(1, 2).to(self.device)
                lengths = torch.full((len(batch),), spec.shape[-1], device=self.device)
                emb = self.model.unit_windows(self._run(spec, lengths).cpu())
                sums += emb.sum(0, dtype=torch.float64)
                batch = []
        embedding = self._finish(sums.float()[None])[0].numpy()
        return embedding, stream.samples / self.sample_rate, stream.sha256

    # Deprecated names (one release): embed() and embed_batch() take every kind of clip.
    def embed_clip(self, clip: Clip, sample_rate: int | None = None) -> np.ndarray:
        """Deprecated: use :meth:`embed`."""
        _deprecated("embed_clip", "embed")
        return self.embed(clip, sample_rate)

    def embed_file(self, path: str | os.PathLike) -> np.ndarray:
        """Deprecated: use :meth:`embed`."""
        _deprecated("embed_file", "embed")
        return self.embed(path)

    def embed_files(self, paths: Sequence[str | os.PathLike], *, batch_size: int = 16,
                    progress: bool = False) -> np.ndarray:
        """Deprecated: use :meth:`embed_batch`."""
        _deprecated("embed_files", "embed_batch")
        return self.embed_batch(paths, batch_size=batch_size, progress=progress)

    @torch.inference_mode()
    def _embed_prepared(self, waveforms: Iterable[np.ndarray], *, batch_size: int = WINDOW_BATCH) -> np.ndarray:
        """Embeddings of waveforms already through :meth:`prepare`: ``(n, dim)`` float32, unit norm; their
        windows go through the network ``batch_size`` at a time."""
        windows, owner = [], []
        for i, wave in enumerate(waveforms):
            feats = features(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), self.config.front_end)
            for start, stop in self.windows(feats.shape[0]):
                windows.append(feats[start:stop])
                owner.append(i)
        n = owner[-1] + 1 if owner else 0
        sums = torch.zeros(n, self.model.window_dim)
        # Longest first so each batch pads little; results do not depend on the grouping (masks).
        order = sorted(range(len(windows)), key=lambda j: -windows[j].shape[0])
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            lengths = torch.tensor([windows[j].shape[0] for j in idx])
            spec = torch.zeros(len(idx), int(lengths.max()), self.config.n_mels)
            for row, j in enumerate(idx):
                spec[row, : lengths[row]] = windows[j]
            emb = self._run(spec.transpose(1, 2).to(self.device), lengths.to(self.device)).cpu()
            emb = self.model.unit_windows(emb)
            sums.index_add_(0, torch.tensor([owner[j] for j in idx]), emb)
        return self._finish(sums).numpy()

    def _finish(self, sums: torch.Tensor) -> torch.Tensor:
        """Clip embeddings from the sums of their unit-norm window embeddings: whitened (where the checkpoint
        has a whitening), beside their pre-head analysis (where it has one), and unit norm. The whitening maps
        the average, not each window: on the dev sets that scores better for clips of several windows (README,
        "Whitening")."""
        return torch.nn.functional.normalize(self.model.whiten(sums.to(self.device)).cpu(), dim=1)

    def windows(self, frames: int) -> list[tuple[int, int]]:
        """``(start, stop)`` feature-frame windows a clip of ``frames`` frames is embedded in: one window up to
        ``config.window_frames``; longer clips in windows ``hop_frames`` apart, the last one aligned to the
        clip's end, or, when ``hop_frames == window_frames``, split evenly (:func:`even_spans`): every frame
        is embedded once, which costs the least per second of audio."""
        c = self.config
        if frames < c.min_frames:
            raise ValueError(f"clip has {frames} feature frames; at least {c.min_frames} are needed")
        if frames > c.window_frames and c.hop_frames == c.window_frames:
            return even_spans(frames, c.window_frames)
        return spans(frames, min(frames, c.window_frames), c.hop_frames)


def _rate_for(clip: Clip, sample_rate: int | None) -> int | None:
    return sample_rate if isinstance(clip, (np.ndarray, torch.Tensor)) else None


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"SpeakerEncoder.{old}() is deprecated and will be removed in the next release; use {new}()",
                  DeprecationWarning, stacklevel=3)


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
