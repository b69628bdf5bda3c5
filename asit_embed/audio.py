"""Audio loading and validation: any common file or array in, float32 mono at the model's rate out."""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import torch
try:
    import torchaudio.functional as AF
except (ImportError, OSError) as _err:  # a CUDA-linked extension beside a CPU-only torch, most often
    from asit_embed.doctor import HINT

    raise ImportError(f"torchaudio cannot be imported ({_err}); {HINT}") from _err

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_RATE = 16000
# File suffixes read as audio (by soundfile / libsndfile): folder scans and upload checks use this one set.
AUDIO_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff",
                            ".aifc", ".au", ".caf", ".w64", ".rf64"})
SILENCE_PEAK = 1e-4  # peak below -80 dBFS: digital silence, nothing to embed
# Sample rates accepted from files: telephone (8 kHz) up to studio rates. A header claiming 1 Hz would make
# a 4 KB file decode to half an hour of audio once resampled.
MIN_FILE_RATE, MAX_FILE_RATE = 4000, 768000
_PCM_SCALE = {np.dtype(np.int8): 2.0**7, np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


def speaker_folders(root: str | os.PathLike) -> dict[str, list[str]]:
    """``{speaker: [audio file paths]}`` of a folder holding one sub-folder per speaker, the files found at any
    depth below it (by :data:`AUDIO_SUFFIXES`), sorted; speakers without audio are left out."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a folder of speaker sub-folders")
    found = {spk.name: [str(p) for p in sorted(spk.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES]
             for spk in sorted(base.iterdir()) if spk.is_dir()}
    return {name: clips for name, clips in found.items() if clips}


class AudioError(ValueError):
    """Audio that cannot be used: undecodable, empty, non-finite, silent, too short or badly shaped."""


class AudioFileNotFoundError(AudioError, FileNotFoundError):
    """An audio path that does not exist (catchable as ``AudioError`` or ``FileNotFoundError``)."""


def load_audio(source: AudioSource, *, sample_rate: int = DEFAULT_SAMPLE_RATE,
               min_seconds: float = 0.5) -> np.ndarray:
    """Decode an audio file (wav, flac, ogg, mp3, ...) with soundfile and validate it.

    Args:
        source: a path (``str`` / ``os.PathLike``), the encoded file contents (``bytes``, ``bytearray``,
            ``memoryview``), or a binary file object opened with ``"rb"``.
        sample_rate: rate in Hz of the returned waveform; the file is resampled to it if needed.
        min_seconds: shortest accepted duration.

    Returns:
        ``(samples,)`` contiguous float32 mono at ``sample_rate``, nominally in [-1, 1].

    Raises:
        AudioFileNotFoundError: the path does not exist.
        AudioError: the path is a directory, the input is empty or cannot be decoded as audio, or the
            decoded audio fails :func:`prepare_waveform`'s checks.
    """
    name, source = _open(source)
    frames = None
    try:
        with sf.SoundFile(source) as f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            if MIN_FILE_RATE <= rate <= MAX_FILE_RATE:
                data = _read_mono(f)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        # libsndfile names a file object by its repr (``<_io.BytesIO object at 0x...>``): name it as we do
        message = str(err).replace(repr(source), name) if not isinstance(source, str) else str(err)
        if frames is not None and frames >= 2**62:  # libsndfile's "unknown length"
            message += ("; the file does not state its length (written by a streaming encoder?) and libsndfile "
                        "cannot read such a file to its end: re-encode it, e.g. `flac -f -d x.flac -o x.wav`")
        raise AudioError(f"{name} could not be decoded as audio (wav, flac, ogg, mp3, ...): {message}") from err
    if not MIN_FILE_RATE <= rate <= MAX_FILE_RATE:
        raise AudioError(f"{name} declares sample rate {rate} Hz; files from {MIN_FILE_RATE} to {MAX_FILE_RATE} Hz "
                         "are accepted")
    log.debug("decoded %s: %d frames x %d channels (averaged) at %d Hz", name, data.shape[0], channels, rate)
    return prepare_waveform(data, rate, target_rate=sample_rate, min_seconds=min_seconds, source=name)


def prepare_waveform(waveform: np.ndarray | torch.Tensor, sample_rate: int, *,
                     target_rate: int = DEFAULT_SAMPLE_RATE, min_seconds: float = 0.5,
                     source: str = "waveform") -> np.ndarray:
    """Validate a waveform and convert it to float32 mono at ``target_rate``.

    Args:
        waveform: ``(samples,)``, or 2-D multichannel: the smaller axis is taken as channels, so both
            soundfile's ``(samples, channels)`` and torch's ``(channels, samples)`` work, and channels are
            averaged. A leading batch axis of size 1 is dropped. Floating point is used as is; integer
            PCM is scaled to [-1, 1): ``int8 / 128``, ``uint8 (x - 128) / 128``, ``int16 / 32768``,
            ``int32 / 2**31``, and ``int64 / 2**31`` when its values fit in int32.
        sample_rate: the waveform's rate in Hz, a positive ``int``.
        target_rate: rate in Hz to resample to (``torchaudio.functional.resample``).
        min_seconds: shortest accepted duration.
        source: how to name the input in error messages.

    Returns:
        ``(samples,)`` contiguous float32 at ``target_rate``.

    Raises:
        TypeError: a bool, complex, unsigned (other than uint8) or non-numeric dtype.
        AudioError: a bad rate or shape, no samples, NaN/Inf samples, digital silence (peak amplitude
            below 1e-4), int64 values beyond int32, or fewer than ``min_seconds`` of audio.

    >>> t = np.arange(8000) / 8000
    >>> tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    >>> out = prepare_waveform(tone, 8000)
    >>> out.shape, out.dtype, round(float(np.abs(out).max()), 1)
    ((16000,), dtype('float32'), 0.3)
    """
    for what, rate in (("sample rate", sample_rate), ("target rate", target_rate)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise AudioError(f"{what} {rate!r} of {source} is not a positive integer number of Hz")
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu()
        waveform = (waveform.float() if waveform.dtype == torch.bfloat16 else waveform).numpy()
    x = np.asarray(waveform)
    if x.ndim == 3 and x.shape[0] == 1:  # a batch of one, as torch code often carries
        x = x[0]
    if x.ndim not in (1, 2):
        raise AudioError(f"{source} has shape {tuple(np.shape(waveform))}; expected (samples,), "
                         "(samples, channels), (channels, samples) or (1, channels, samples)")
    if x.size == 0:
        raise AudioError(f"{source} contains no samples (shape {x.shape})")
    x = _to_float(x, source)
    if not np.isfinite(x.sum(dtype=np.float64)):  # a NaN or Inf makes the sum non-finite; no temporary array
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        if n_nan or n_inf:
            raise AudioError(f"{source} has {n_nan} NaN and {n_inf} Inf samples out of {x.size}; "
                             "expected finite samples")
    if x.ndim == 2:
        if min(x.shape) > 8:
            log.warning("%s has shape %s: averaging %d channels (is it a batch of clips?)", source, x.shape,
                        min(x.shape))
        x = x.mean(axis=int(np.argmin(x.shape)), dtype=np.float64).astype(np.float32)
    peak = float(max(x.max(), -x.min()))
    if peak < SILENCE_PEAK:
        raise AudioError(f"{source} is digitally silent (peak amplitude {round(peak, 6)}); "
                         f"expected a peak of at least {SILENCE_PEAK:g}")
    if peak > 2.0:
        log.warning("%s peaks at %.3g; float audio is expected in [-1, 1] (integer PCM stored as float?)",
                    source, peak)
    seconds = x.size / sample_rate
    if seconds < min_seconds:
        raise AudioError(f"{source} is {seconds:.3g} s long; at least {min_seconds:g} s is needed")
    if sample_rate != target_rate:
        x = resample(x, int(sample_rate), int(target_rate))
    return np.ascontiguousarray(x, dtype=np.float32)


READ_BLOCK = 1 << 20         # frames decoded at a time
RESAMPLE_BLOCK = 1 << 20     # input samples resampled at a time (about, rounded to the rates' period)
RESAMPLE_CONTEXT = 512       # input samples of context on each side of a block (the filter needs ~20)


def _read_mono(f: sf.SoundFile) -> np.ndarray:
    """The file's samples as float32 mono, decoded a block at a time: channels are averaged per block, so
    a long multichannel file never exists in memory as all its channels at once."""
    # The header's length is not trusted (a streaming FLAC says "unknown", a truncated WAV claims more than it
    # holds): blocks are read until the data ends.
    parts = [downmix(block) for block in f.blocks(blocksize=READ_BLOCK, dtype="float32", always_2d=True)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def downmix(block: np.ndarray) -> np.ndarray:
    """``(frames, channels)`` float32 as ``(frames,)`` mono: the channels' mean."""
    return block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0].copy()


def resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    """``torchaudio.functional.resample`` of a mono signal, a block at a time for long signals: each block
    is resampled with :data:`RESAMPLE_CONTEXT` samples of its neighbours and trimmed, blocks start on the
    rates' common period, so the result equals resampling in one piece (to float rounding) while memory
    stays bounded by the block."""
    if len(x) <= 2 * RESAMPLE_BLOCK:
        return AF.resample(torch.from_numpy(np.ascontiguousarray(x)), orig, new).numpy()
    step, context = resample_blocks(orig, new)
    g = math.gcd(orig, new)
    total = math.ceil(len(x) * (new // g) / (orig // g))  # torchaudio's output length
    out = np.empty(total, dtype=np.float32)
    for start in range(0, len(x), step):
        stop = min(len(x), start + step)
        lo = max(0, start - context)
        y = resample_block(x[lo:min(len(x), stop + context)], lo, start, stop, orig, new, total)
        a = start // (orig // g) * (new // g)
        out[a:a + len(y)] = y
    return out


def resample_blocks(orig: int, new: int) -> tuple[int, int]:
    """``(step, context)`` in input samples for :func:`resample_block`: blocks of about
    :data:`RESAMPLE_BLOCK` samples starting on the rates' common period, with at least
    :data:`RESAMPLE_CONTEXT` samples of context, also a whole number of periods."""
    period = orig // math.gcd(orig, new)
    return max(1, RESAMPLE_BLOCK // period) * period, max(1, RESAMPLE_CONTEXT // period + 1) * period


def resample_block(window: np.ndarray, lo: int, start: int, stop: int, orig: int, new: int,
                   total: int | None = None) -> np.ndarray:
    """Input samples ``[start, stop)`` (``start`` on the rates' common period) resampled from ``window``, the
    input from sample ``lo`` on with context each side: the part of the one-piece result they make, cut
    at ``total`` output samples when given (the signal's end)."""
    g = math.gcd(orig, new)
    period_in, period_out = orig // g, new // g
    y = AF.resample(torch.from_numpy(np.ascontiguousarray(window)), orig, new).numpy()
    first = (start - lo) // period_in * period_out
    a, b = start // period_in * period_out, math.ceil(stop * period_out / period_in)
    if total is not None:
        b = min(total, b)
    return y[first:first + (b - a)]


def _open(source: AudioSource) -> tuple[str, Union[str, BinaryIO]]:
    """Check a source before decoding: its name for messages and what to hand to ``sf.read``."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = repr(path)
        if not os.path.exists(path):
            raise AudioFileNotFoundError(f"audio file {name} does not exist")
        if os.path.isdir(path):
            raise AudioError(f"audio path {name} is a directory; expected an audio file")
        if os.path.getsize(path) == 0:
            raise AudioError(f"audio file {name} is empty (0 bytes)")
        return name, path
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = f"<bytes, {len(data)} bytes>"
        if not data:
            raise AudioError(f"audio {name} is empty")
        return name, io.BytesIO(data)
    if not hasattr(source, "read"):
        raise TypeError(f"audio source of type {type(source).__name__}; expected a path, bytes or a "
                        "binary file object")
    name = repr(getattr(source, "name", f"<{type(source).__name__}>"))
    if isinstance(source, io.TextIOBase):
        raise AudioError(f"audio file object {name} is open in text mode; open it with 'rb'")
    if not (hasattr(source, "seekable") and source.seekable()):
        source = io.BytesIO(source.read())  # libsndfile needs to seek
    start = source.tell()
    empty = source.seek(0, io.SEEK_END) == start
    source.seek(start)
    if empty:
        raise AudioError(f"audio file object {name} is empty (0 bytes left to read)")
    return name, source


def _to_float(x: np.ndarray, source: str) -> np.ndarray:
    """Integer PCM scaled to [-1, 1), floats as float32; other dtypes raise ``TypeError``."""
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)  # always a copy: the caller's array is never aliased
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    if x.dtype in _PCM_SCALE:
        return x.astype(np.float32) / np.float32(_PCM_SCALE[x.dtype])
    if x.dtype == np.int64:
        lo, hi = int(x.min()), int(x.max())
        if lo < -2**31 or hi >= 2**31:
            raise AudioError(f"{source} is int64 with values in [{lo}, {hi}]; expected 32-bit PCM "
                             f"[{-2**31}, {2**31 - 1}] (convert to float in [-1, 1] first)")
        return (x.astype(np.float64) / 2.0**31).astype(np.float32)
    raise TypeError(f"{source} has dtype {x.dtype}; expected float16/32/64 or int8/uint8/int16/int32/int64 PCM")
