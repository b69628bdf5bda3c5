"""HTTP service over a :class:`~enroll.SpeakerRegistry`: a JSON API and an upload page, served by waitress.

Endpoints (errors are JSON ``{"error": message}``)::

    GET    /                          upload page: record or choose clips, enroll, identify, list, delete
    GET    /health                    encoder fingerprint, number of speakers, operating points and their
                                      calibration, limits
    GET    /speakers                  enrolled speakers
    GET    /map.png                   the enrolled clips in 2-D, coloured by speaker (404 when empty)
    GET    /speakers/<name>           one speaker
    POST   /speakers/<name>           enroll from multipart field ``files`` (one or more); ``replace=1``
                                      replaces the speaker's clips instead of adding to them; a clip
                                      already enrolled is a 409 unless ``allow_duplicates=1``
    DELETE /speakers/<name>           remove
    POST   /speakers/<name>/rename    ``new_name`` (JSON or form field)
    POST   /identify                  multipart field ``file``, optional ``k`` (form or query), best first
    POST   /verify/<name>             multipart field ``file``

Status codes: 400 bad audio (the encoder's :class:`~asit_embed.AudioError` message), bad name, missing
field or bad ``k``, or a ``Host`` that is not allowed; 401 a missing or wrong token; 403 a write from another
origin; 404 unknown speaker; 409 renaming onto an enrolled name or a clip already enrolled; 413 an upload over ``max_upload_mb``, more
than ``max_files`` files, a clip over ``max_seconds`` or a request over ``max_request_seconds`` of audio;
415 a file that is audio by neither extension nor type; 503 a request whose uploads took longer than
``max_request_wall`` to read and decode.

Access: only the ``Host`` names in ``allowed_hosts`` are served (loopback names by default: a DNS-rebinding
page cannot reach the API); writes (POST, DELETE) carrying an ``Origin`` or ``Sec-Fetch-Site`` header of
another site are refused, so no web page can change the registry from a visitor's browser; with a
``token``, every API call needs ``Authorization: Bearer <token>`` (the upload page asks for it once). The
page may not be framed (``X-Frame-Options``, CSP ``frame-ancestors 'none'``) and loads only its own files.

Uploads are read into memory and decoded from bytes (:mod:`enroll.uploads`); nothing is written under a
name the client chose.
A registry's SQLite connection and index belong to one thread, so each server thread opens its own
registry on the same directory; SQLite's write lock orders their changes as it does across processes.
"""

from __future__ import annotations

import hmac
import io
import logging
import os
import threading
import time
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Request, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, RequestEntityTooLarge, Unauthorized

from asit_embed import AudioError
from enroll.errors import ReadOnlyRegistryError
from enroll.registry import RegistryError, SpeakerRegistry, UnknownSpeakerError, validate_name
from enroll.uploads import audio_uploads

log = logging.getLogger(__name__)

MAX_K = 100
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; media-src 'self' blob:; frame-ancestors 'none'; "
                               "base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}

api = Blueprint("enroll", __name__)


class InMemoryRequest(Request):
    """Multipart file parts kept in memory (bounded by ``MAX_CONTENT_LENGTH``), never spooled to disk."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


class Registries:
    """One :class:`SpeakerRegistry` per thread on one directory, opened on the thread's first request."""

    def __init__(self, path: str | os.PathLike, **options):
        self.path, self.options = path, options
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[SpeakerRegistry] = []
        self.get()  # open one now, so a bad directory or another encoder's registry fails at start-up

    def get(self) -> SpeakerRegistry:
        reg = getattr(self._local, "registry", None)
        if reg is None:
            reg = self._local.registry = SpeakerRegistry(self.path, **self.options)
            with self._lock:
                self._open.append(reg)
        return reg

    def close(self) -> None:
        with self._lock:
            for reg in self._open:
                reg.close()
            self._open.clear()


class Service:
    """What the views need: the registries, the encoder that decodes uploads, and the limits."""

    def __init__(self, registries: Registries, *, max_upload_mb: float, max_seconds: float, max_files: int,
                 max_request_seconds: float, max_request_wall: float, allowed_hosts: frozenset[str] | None,
                 token: str | None):
        self.registries = registries
        self.encoder = registries.get().encoder
        self.max_upload_mb = max_upload_mb
        self.max_seconds = max_seconds
        self.max_files = max_files
        self.max_request_seconds = max_request_seconds
        self.max_request_wall = max_request_wall
        self.allowed_hosts = allowed_hosts  # None: any
        self.token = token

    @property
    def registry(self) -> SpeakerRegistry:
        return self.registries.get()


def create_app(registry_path: str | os.PathLike, *, encoder=None, threshold: float | None = None,
               as_norm: bool | None = None, far: float = 0.01, fpir: float = 0.01, vad: bool | None = None,
               max_upload_mb: float = 20.0,
               max_seconds: float = 60.0, max_files: int = 20, max_request_seconds: float = 300.0,
               allowed_hosts=LOOPBACK_HOSTS, token: str | None = None, readonly: bool = False,
               max_request_wall: float = 60.0, adapt: bool = True) -> Flask:
    """The Flask app serving the registry in directory ``registry_path`` (created if missing).

    Args:
        registry_path: registry directory, as for :class:`SpeakerRegistry`.
        encoder: a :class:`asit_embed.SpeakerEncoder`; default the bundled one.
        threshold, as_norm, far, fpir, vad, adapt: as for :class:`SpeakerRegistry`.
        max_upload_mb: largest request body in MB (all files of one request together); larger is 413.
        max_seconds: longest clip in seconds; longer is 413.
        max_files: most audio files in one request; more is 413 (before any is decoded).
        max_request_seconds: most seconds of audio in one request, all files together; more is 413.
        allowed_hosts: ``Host`` names served (any port); ``None`` or ``"*"`` among them: any.
        token: if set, every API call needs ``Authorization: Bearer <token>``.
        readonly: serve identify/verify/list only; changes answer 403.
        max_request_wall: seconds a request may spend reading and decoding its uploads; past it, 503 (checked
            between files and before the audio is embedded).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     app = create_app(tmp)
    ...     app.test_client().get("/health").get_json()["speakers"]
    ...     app.extensions["enroll"].registries.close()
    0
    """
    if min(max_upload_mb, max_seconds, max_files, max_request_seconds, max_request_wall) <= 0:
        raise ValueError(f"limits must be positive: max_upload_mb {max_upload_mb}, max_seconds {max_seconds}, "
                         f"max_files {max_files}, max_request_seconds {max_request_seconds}")
    hosts = None if allowed_hosts is None or "*" in allowed_hosts else frozenset(
        h.lower().strip("[]") for h in allowed_hosts)
    if encoder is None:
        from asit_embed import load_encoder

        encoder = load_encoder()
    registries = Registries(registry_path, encoder=encoder, threshold=threshold, as_norm=as_norm, far=far, fpir=fpir,
                            vad=vad, readonly=readonly, adapt=adapt)
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 2**20)
    app.config["MAX_FORM_PARTS"] = max_files + 16  # werkzeug stops parsing a form with more parts
    app.json.sort_keys = False
    app.extensions["enroll"] = Service(registries, max_upload_mb=max_upload_mb, max_seconds=max_seconds,
                                       max_files=max_files, max_request_seconds=max_request_seconds,
                                       max_request_wall=max_request_wall, allowed_hosts=hosts, token=token or None)
    app.before_request(_guard)
    app.after_request(_secure_headers)
    app.register_blueprint(api)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(AudioError, lambda err: _error(400, str(err)))
    app.register_error_handler(ValueError, lambda err: _error(400, str(err)))
    app.register_error_handler(UnknownSpeakerError, lambda err: _error(404, str(err)))
    app.register_error_handler(RegistryError, lambda err: _error(409, str(err)))
    app.register_error_handler(ReadOnlyRegistryError, lambda err: _error(403, str(err)))
    app.register_error_handler(Exception, _unexpected_error)
    return app


CONNECTION_LIMIT = 1000  # open connections waitress keeps; idle ones cost a socket each, no thread
IDLE_TIMEOUT = 30        # seconds an idle connection is kept


def make_server(app: Flask, *, host: str = "127.0.0.1", port: int = 8000, threads: int = 4):
    """A waitress server for ``app``: ``.run()`` serves until ``.close()``; ``.effective_port`` is the bound
    port (pass ``port=0`` for a free one). Bodies past the app's upload limit plus 1 MiB of multipart
    overhead are refused by waitress before they are buffered; up to ``CONNECTION_LIMIT`` connections are
    kept open and an idle one is closed after ``IDLE_TIMEOUT`` seconds (waitress's defaults, 100 and 120 s,
    let 100 idle connections lock every client out)."""
    from waitress import create_server

    return create_server(app, host=host, port=port, threads=threads, ident="asit-enroll",
                         max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + 2**20,
                         connection_limit=CONNECTION_LIMIT, channel_timeout=IDLE_TIMEOUT)


def _guard():
    """Before every request: an allowed ``Host``; no write from another origin; the token where one is set."""
    svc = _service()
    g.started = time.monotonic()
    host = urlsplit(f"//{request.host}").hostname or ""
    if svc.allowed_hosts is not None and host not in svc.allowed_hosts:
        raise BadRequest(f"Host {request.host!r} is not served here (allowed: {', '.join(sorted(svc.allowed_hosts))}; "
                         "add it with --allowed-host)")
    if request.method in UNSAFE_METHODS:
        origin, site = request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site")
        own = f"{request.scheme}://{request.host}"
        if (origin is not None and origin != own) or (site is not None and site not in ("same-origin", "none")):
            raise Forbidden(f"cross-origin write refused (Origin {origin!r}); use the page served at {own}/ "
                            "or a client that is not a browser")
    if svc.token is not None and request.endpoint not in ("enroll.index", "static"):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {svc.token}".encode()):
            raise Unauthorized("missing or wrong token: send 'Authorization: Bearer <token>'")


def _secure_headers(response):
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


# --- views --------------------------------------------------------------------------------------------------
def _service() -> Service:
    return current_app.extensions["enroll"]


@api.get("/")
def index():
    return render_template("index.html")


@api.get("/health")
def health():
    svc = _service()
    reg = svc.registry
    points = reg.operating_points()
    return jsonify(status="ok", fingerprint=svc.encoder.fingerprint, speakers=points["speakers"],
                   threshold=points["identify_threshold"], operating_points=points, max_upload_mb=svc.max_upload_mb, max_seconds=svc.max_seconds)


@api.get("/map.png")
def embedding_map():
    from flask import Response

    from enroll.embedding_map import plot_map

    names, x = _service().registry.clip_embeddings()
    if not names:
        return _error(404, "no speaker is enrolled: nothing to map")
    buf = io.BytesIO()
    plot_map(names, x, buf)
    return Response(buf.getvalue(), mimetype="image/png", headers={"Cache-Control": "no-store"})


@api.get("/speakers")
def list_speakers():
    reg = _service().registry
    speakers = []
    for name in reg.names():
        try:
            speakers.append(reg.speaker(name).to_dict())
        except UnknownSpeakerError:  # removed by another request since names() was read: no longer listed
            continue
    return jsonify(speakers=speakers)


@api.get("/speakers/<path:name>")
def get_speaker(name: str):
    return jsonify(_service().registry.speaker(_name(name)).to_dict())


@api.post("/speakers/<path:name>")
def enroll(name: str):
    name = _name(name)
    replace, duplicates = _flag("replace"), _flag("allow_duplicates")
    clips = audio_uploads("files", _service(), many=True)
    svc = _service()
    reg = svc.registry
    created = name not in reg
    speaker = reg.enroll(name, clips, sample_rate=svc.encoder.sample_rate, replace=replace,
                         allow_duplicates=duplicates)
    return jsonify(speaker.to_dict()), 201 if created else 200


@api.delete("/speakers/<path:name>")
def remove(name: str):
    name = _name(name)
    _service().registry.remove(name)
    return jsonify(removed=name)


@api.post("/speakers/<path:name>/rename")
def rename(name: str):
    name = _name(name)
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # JSON nested deeper than the parser's stack
        raise BadRequest("the JSON body is nested too deeply") from None
    new = body.get("new_name") if isinstance(body, dict) else request.form.get("new_name")
    if not isinstance(new, str):
        raise BadRequest("expected the new name in field 'new_name' (JSON body or form)")
    new = _name(new)
    reg = _service().registry
    reg.rename(name, new)
    return jsonify(reg.speaker(new).to_dict())


@api.post("/identify")
def identify():
    k = _k()
    (clip,) = audio_uploads("file", _service(), many=False)
    svc = _service()
    reg = svc.registry
    matches = reg.identify(clip, k=k, sample_rate=svc.encoder.sample_rate)
    return jsonify(matches=[m.to_dict() for m in matches], threshold=round(reg.identify_threshold(), 4))


@api.post("/verify/<path:name>")
def verify(name: str):
    name = _name(name)
    svc = _service()
    reg = svc.registry
    reg.speaker(name)  # an unknown name is a 404 before the upload is decoded
    (clip,) = audio_uploads("file", _service(), many=False)
    return jsonify(**reg.verify(name, clip, sample_rate=svc.encoder.sample_rate).to_dict(),
                   threshold=round(reg.verify_threshold, 4))


# --- request parsing ----------------------------------------------------------------------------------------
def _name(raw: str) -> str:
    """A registry name that is also one URL path segment."""
    name = validate_name(raw)
    if "/" in name or "\\" in name or name in (".", ".."):
        raise BadRequest(f"speaker name {name!r} must not contain '/' or '\\' nor be '.' or '..'")
    return name


def _flag(field: str) -> bool:
    raw = request.values.get(field, "").strip().lower()
    if raw not in _TRUE | _FALSE:
        raise BadRequest(f"{field} must be 1/0 or true/false, got {raw!r}")
    return raw in _TRUE


def _k() -> int:
    raw = request.values.get("k", "5")
    try:
        k = int(raw)
    except ValueError:
        raise BadRequest(f"k must be a whole number of matches, got {raw!r}") from None
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be between 1 and {MAX_K}, got {k}")
    return k


# --- responses ----------------------------------------------------------------------------------------------
def _error(status: int, message: str):
    return jsonify(error=message), status


def _http_error(err: HTTPException):
    message = err.description
    if err.code == 413 and message == RequestEntityTooLarge.description:
        message = f"upload is larger than {_service().max_upload_mb:g} MB"
    return _error(err.code or 500, message)


def _unexpected_error(err: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error(500, f"internal error ({type(err).__name__}); see the server log")
