"""Speech detection with Silero VAD (``pip install 'asit-embed[vad]'``; its weights ship inside the wheel).

A clip is cut down to its speech before it is embedded, so silence, music or a hum does not shape a voice's
embedding, and a clip with no speech at all is an :class:`~asit_embed.AudioError` rather than a vector.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch

from asit_embed.audio import AudioError

VAD_RATE = 16000          # Silero VAD runs at 16 kHz (or 8 kHz); the encoder's rate is 16 kHz
_lock = threading.Lock()  # the model keeps state between chunks: one clip at a time
_model = None


class VadUnavailableError(ImportError):
    """silero-vad is not installed."""


def _load():
    global _model
    if _model is None:
        try:
            from silero_vad import load_silero_vad
        except ImportError as err:
            raise VadUnavailableError("speech detection needs silero-vad: pip install 'asit-embed[vad]'") from err
        with warnings.catch_warnings():  # its loader uses deprecated importlib / torch.jit calls
            warnings.simplefilter("ignore", DeprecationWarning)
            _model = load_silero_vad()
    return _model


def speech_regions(wave: np.ndarray, sample_rate: int = VAD_RATE, *, threshold: float = 0.5,
                   min_speech_ms: int = 250) -> list[tuple[int, int]]:
    """``(start, stop)`` sample ranges of speech in ``wave`` (``(samples,)`` float32 at ``sample_rate``, 8 or
    16 kHz), as Silero VAD's ``get_speech_timestamps`` finds them."""
    from silero_vad import get_speech_timestamps

    with _lock:
        model = _load()
        found = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), model,
                                      threshold=threshold, sampling_rate=sample_rate,
                                      min_speech_duration_ms=min_speech_ms)
    return [(int(r["start"]), int(r["end"])) for r in found]


def keep_speech(wave: np.ndarray, sample_rate: int = VAD_RATE, *, source: str = "clip") -> np.ndarray:
    """``wave`` with everything but its speech regions cut out; :class:`AudioError` when there is none."""
    regions = speech_regions(wave, sample_rate)
    if not regions:
        raise AudioError(f"no speech found in {source} (speech detection is on)")
    return np.ascontiguousarray(np.concatenate([wave[a:b] for a, b in regions]), dtype=np.float32)
