"""The audio files of an HTTP request (:mod:`enroll.server`), read into memory and decoded from bytes, each
checked against the service's limits before and after decoding; nothing is written under a name the client
chose."""

from __future__ import annotations

import io
import time
from pathlib import PureWindowsPath
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
from flask import g, request
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, ServiceUnavailable, UnsupportedMediaType

from asit_embed import AudioError
from asit_embed.audio import AUDIO_SUFFIXES

if TYPE_CHECKING:  # the server imports this module
    from enroll.server import Service


def audio_uploads(field: str, svc: Service, *, many: bool) -> list[np.ndarray]:
    """The audio files of the current request's multipart ``field``, decoded to ``(samples,)`` float32 at the
    encoder's rate, within ``svc``'s limits (files per request, seconds per clip and per request, wall time)."""
    files = [f for f in request.files.getlist(field) if f.filename]  # a form's empty file input has no name
    if not files:
        what = "one or more audio files" if many else "an audio file"
        raise BadRequest(f"expected {what} in multipart form field {field!r}")
    if not many and len(files) > 1:
        raise BadRequest(f"expected one audio file in field {field!r}, got {len(files)}")
    if len(files) > svc.max_files:
        raise RequestEntityTooLarge(f"{len(files)} files in one request; at most {svc.max_files} are accepted")
    waves, total = [], 0.0
    for f in files:
        waves.append(decode_upload(f, svc))
        total += waves[-1].shape[0] / svc.encoder.sample_rate
        if total > svc.max_request_seconds:
            raise RequestEntityTooLarge(f"more than {svc.max_request_seconds:g} s of audio in one request")
        if time.monotonic() - g.started > svc.max_request_wall:
            raise ServiceUnavailable(f"the request's uploads took more than {svc.max_request_wall:g} s to read "
                                     "and decode; send fewer or shorter files")
    return waves


def decode_upload(upload: FileStorage, svc: Service) -> np.ndarray:
    """One uploaded file: audio by extension or type, and no longer than ``svc.max_seconds``."""
    label = repr(upload.filename)
    suffix = PureWindowsPath(upload.filename).suffix.lower()  # splits on both '/' and '\'
    if suffix not in AUDIO_SUFFIXES and not upload.mimetype.startswith("audio/"):
        raise UnsupportedMediaType(f"{label} ({upload.mimetype or 'no content type'}) is not an audio file; "
                                   "send wav, flac, ogg or mp3")
    data = upload.read()
    seconds = header_seconds(data)  # refuse a long clip before decoding it
    if seconds is None or seconds <= svc.max_seconds:
        try:
            wave = svc.encoder.prepare(data)
        except AudioError as err:
            raise AudioError(f"{label}: {err}") from err
        seconds = wave.shape[0] / svc.encoder.sample_rate
    if seconds > svc.max_seconds:
        raise RequestEntityTooLarge(f"{label} is {seconds:.1f} s long; at most {svc.max_seconds:g} s per clip "
                                    "is accepted")
    return wave


def header_seconds(data: bytes) -> float | None:
    """Duration from the file's header, or None where the header does not tell (decoding will)."""
    try:
        return float(sf.info(io.BytesIO(data)).duration)
    except (RuntimeError, ValueError, TypeError):
        return None
