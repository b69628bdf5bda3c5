"""Long files as a stream: decoded, resampled and turned into features a block at a time, twice.

:func:`~asit_embed.audio.load_audio` holds a file's whole 16 kHz signal, and the encoder its whole feature
matrix: memory grows with the file (about 11 MB a minute). For files longer than :data:`STREAM_SECONDS` the
encoder reads them as a stream instead, so memory is bounded by a block, whatever the length:

1. **First pass**: decode, validate (finite samples, not silent, long enough) and sum the log-mel frames,
   for the per-utterance mean that the features subtract (``cmn``), and count them.
2. **Second pass**: decode again, normalise each block of frames with that mean, cut the same windows as
   in one piece, and embed them a batch at a time, summing their unit embeddings.

Each stage works on blocks that reproduce what the whole-signal path computes: the resampler's blocks start
on the rates' common period with the same context (:func:`asit_embed.audio.resample`), fbank frames depend
only on their own samples (:func:`asit_embed.features.fbank`). Embeddings equal the in-memory path's to float
rounding. torchaudio, soundfile and SpeechBrain read and resample whole signals; none streams a file through
a windowed encoder, hence this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import torch

from asit_embed.audio import (MAX_FILE_RATE, MIN_FILE_RATE, READ_BLOCK, SILENCE_PEAK, AudioError, _open, downmix,
                              resample_block, resample_blocks)
from asit_embed.config import FrontEndConfig
from asit_embed.features import FBANK_BLOCK_FRAMES, _kaldi_fbank, normalize, num_frames, samples_for_frames

STREAM_SECONDS = 60.0  # files longer than this are embedded as a stream


def stream_seconds(clip) -> float | None:
    """The duration a file's header states, when ``clip`` is a file (path, bytes, seekable binary file)
    that should be streamed: longer than :data:`STREAM_SECONDS`, of an accepted rate and a stated length.
    None otherwise, including anything the header does not make clear (the in-memory path then decodes it
    and raises the precise error)."""
    if not isinstance(clip, (str, os.PathLike, bytes, bytearray, memoryview)) and not (
            hasattr(clip, "read") and hasattr(clip, "seekable") and clip.seekable()):
        return None
    try:
        _, source = _open(clip)
        start = source.tell() if hasattr(source, "tell") else None
        try:
            with sf.SoundFile(source) as f:
                rate, frames = f.samplerate, f.frames
        finally:
            if start is not None:
                source.seek(start)
    except (AudioError, sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    if not MIN_FILE_RATE <= rate <= MAX_FILE_RATE or frames <= 0 or frames >= 2**62:
        return None
    seconds = frames / rate
    return seconds if seconds > STREAM_SECONDS else None


class FileStream:
    """One audio file read as blocks of float32 mono at ``sample_rate``, as often as needed.

    Validation happens as blocks pass: NaN/Inf samples raise :class:`~asit_embed.AudioError` at once; after a
    complete pass, :meth:`check` raises for silence or too short a file, as
    :func:`~asit_embed.audio.prepare_waveform` does.
    """

    def __init__(self, clip, sample_rate: int):
        self.name, self._source = _open(clip)
        if isinstance(self._source, io.IOBase):
            self._start = self._source.tell()
        self.sample_rate = sample_rate
        self.peak = 0.0
        self.file_samples = 0
        self.samples = 0           # at sample_rate, after the last complete pass
        self.sha256 = ""           # of the float32 samples at sample_rate (what enrollment records)

    def _file_blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        """``(mono block, file rate)``: the file decoded :data:`~asit_embed.audio.READ_BLOCK` frames at a time."""
        if isinstance(self._source, io.IOBase):
            self._source.seek(self._start)
        try:
            with sf.SoundFile(self._source) as f:
                rate = f.samplerate
                if not MIN_FILE_RATE <= rate <= MAX_FILE_RATE:
                    raise AudioError(f"{self.name} declares sample rate {rate} Hz; files from {MIN_FILE_RATE} to "
                                     f"{MAX_FILE_RATE} Hz are accepted")
                for block in f.blocks(blocksize=READ_BLOCK, dtype="float32", always_2d=True):
                    yield downmix(block), rate
        except (sf.LibsndfileError, RuntimeError, TypeError) as err:
            raise AudioError(f"{self.name} could not be decoded as audio (wav, flac, ogg, mp3, ...): {err}") from err

    def blocks(self) -> Iterator[np.ndarray]:
        """The signal at ``sample_rate`` in consecutive blocks (resampled with the context
        :func:`asit_embed.audio.resample` uses, so the blocks join into what it returns)."""
        peak, file_samples, out_samples = 0.0, 0, 0
        digest = hashlib.sha256()
        pending = np.zeros(0, np.float32)  # input not yet resampled, starting at `offset` in the file
        offset = 0                         # file sample index of pending[0]
        start = 0                          # next block's first input sample
        rate = step = context = None
        for block, rate in self._file_blocks():
            if not np.isfinite(block.sum(dtype=np.float64)):
                raise AudioError(f"{self.name} has NaN or Inf samples; expected finite samples")
            if block.size:
                peak = max(peak, float(np.abs(block).max()))
            file_samples += block.size
            pending = np.concatenate([pending, block])
            if rate == self.sample_rate:
                out = pending
                pending, offset = np.zeros(0, np.float32), file_samples
                out_samples += out.size
                digest.update(out.tobytes())
                yield out
                continue
            if step is None:
                step, context = resample_blocks(rate, self.sample_rate)
            while offset + pending.size >= start + step + context:  # a block with its full right context
                out = self._resample(pending, offset, start, start + step, context, rate, None)
                out_samples += out.size
                digest.update(out.tobytes())
                yield out
                start += step
                keep = max(0, start - context) - offset
                pending, offset = pending[keep:], offset + keep
        if rate is None:
            raise AudioError(f"{self.name} contains no samples")
        if rate != self.sample_rate:
            total = math.ceil(file_samples * self.sample_rate / rate)
            while start < file_samples:
                out = self._resample(pending, offset, start, min(file_samples, start + step), context, rate, total)
                out_samples += out.size
                digest.update(out.tobytes())
                yield out
                start += step
        self.peak, self.file_samples, self.samples, self.sha256 = peak, file_samples, out_samples, digest.hexdigest()

    def _resample(self, pending, offset, start, stop, context, rate, total) -> np.ndarray:
        """Input ``[start, stop)`` at ``sample_rate``, from ``pending`` (the input from sample ``offset`` on)."""
        lo, hi = max(0, start - context), min(offset + pending.size, stop + context)
        return resample_block(pending[lo - offset: hi - offset], lo, start, stop, rate, self.sample_rate, total)

    def check(self, min_seconds: float) -> None:
        """After a complete pass: raise :class:`~asit_embed.AudioError` for silence or too short a file."""
        if self.peak < SILENCE_PEAK:
            raise AudioError(f"{self.name} is digitally silent (peak amplitude {round(self.peak, 6)}); "
                             f"expected a peak of at least {SILENCE_PEAK:g}")
        if self.samples < min_seconds * self.sample_rate:
            raise AudioError(f"{self.name} is {self.samples / self.sample_rate:.3g} s long; at least "
                             f"{min_seconds:g} s is needed")


def fbank_blocks(signal: Iterator[np.ndarray], config: FrontEndConfig) -> Iterator[torch.Tensor]:
    """Log-mel frames of a signal given in blocks: ``(frames, n_mels)`` tensors, in order, equal to
    :func:`asit_embed.features.fbank` of the joined signal (frames are computed
    :data:`~asit_embed.features.FBANK_BLOCK_FRAMES` at a time from their own samples)."""
    shift = int(config.sample_rate * config.frame_shift_ms / 1000)
    need = samples_for_frames(FBANK_BLOCK_FRAMES, config)
    buffer = np.zeros(0, np.float32)
    for block in signal:
        buffer = np.concatenate([buffer, block])
        while buffer.size >= need:
            yield _kaldi_fbank(torch.from_numpy(np.ascontiguousarray(buffer[:need])), config)
            buffer = buffer[FBANK_BLOCK_FRAMES * shift:]
    if num_frames(buffer.size, config) > 0:
        yield _kaldi_fbank(torch.from_numpy(np.ascontiguousarray(buffer)), config)


def normalized_windows(stream: FileStream, config: FrontEndConfig, windows: list[tuple[int, int]],
                       mean: torch.Tensor) -> Iterator[torch.Tensor]:
    """The normalised features of each ``(start, stop)`` frame window, in order, from a second pass over
    ``stream``; frames before the next window's start are dropped as it goes."""
    frames = torch.zeros(0, config.n_mels)
    first = 0  # frame index of frames[0]
    i = 0
    for block in fbank_blocks(stream.blocks(), config):
        frames = torch.cat([frames, block])
        while i < len(windows) and windows[i][1] <= first + frames.shape[0]:
            a, b = windows[i]
            yield _normalize_with(frames[a - first: b - first], mean, config)
            i += 1
        drop = (windows[i][0] if i < len(windows) else first + frames.shape[0]) - first
        frames, first = frames[drop:], first + drop


def _normalize_with(frames: torch.Tensor, mean: torch.Tensor, config: FrontEndConfig) -> torch.Tensor:
    """:func:`asit_embed.features.normalize` with the whole file's mean in place of this stretch's."""
    if config.cmn:
        frames = frames - mean
    return normalize(frames, dataclasses.replace(config, cmn=False))
