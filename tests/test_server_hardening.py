"""The service left running: no cross-site writes, allowed hosts only, tokens, bounded requests, safe shutdown."""

import io
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from enroll import SpeakerRegistry
from enroll.server import create_app


def wav_bytes(seconds=1.0, rate=16000, freq=220.0):
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(7 * t))).astype(np.float32), rate,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture
def make_app(encoder, tmp_path):
    apps = []

    def make(**options):
        app = create_app(tmp_path / f"reg{len(apps)}", encoder=encoder, **options)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["enroll"].registries.close()


def files(n, seconds=1.0, first=0):
    """``n`` distinct synthetic clips (clip ``first`` onwards), as a multipart ``files`` field."""
    return {"files": [(io.BytesIO(wav_bytes(seconds, freq=200 + 10 * i)), f"c{i}.wav") for i in range(first, first + n)]}


def test_cross_origin_writes_are_refused(make_app):
    client = make_app()
    evil = client.post("/speakers/victim", data=files(1), headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-origin" in evil.get_json()["error"]
    fetch_meta = client.post("/speakers/victim", data=files(1), headers={"Sec-Fetch-Site": "cross-site"})
    assert fetch_meta.status_code == 403
    assert client.get("/speakers").get_json()["speakers"] == []  # nothing was written
    same = client.post("/speakers/victim", data=files(1), headers={"Origin": "http://localhost",
                                                                   "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 201
    renamed = client.post("/speakers/victim/rename", json={"new_name": "x"}, headers={"Origin": "http://evil.example"})
    deleted = client.delete("/speakers/victim", headers={"Origin": "null"})
    assert renamed.status_code == deleted.status_code == 403
    assert client.post("/speakers/script", data=files(1, first=1)).status_code == 201  # no Origin: curl, scripts
    again = client.post("/speakers/other", data=files(1, first=1))
    assert again.status_code == 409 and "already enrolled as 'script'" in again.get_json()["error"]


def test_unknown_host_is_refused_and_hosts_are_configurable(make_app):
    client = make_app()
    assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 400
    assert client.get("/health", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert client.get("/health", headers={"Host": "[::1]:8000"}).status_code == 200
    named = make_app(allowed_hosts=["voice.lan"])
    assert named.get("/health", headers={"Host": "voice.lan:8000"}).status_code == 200
    assert named.get("/health", headers={"Host": "localhost"}).status_code == 400


def test_token_guards_the_api_not_the_page(make_app):
    client = make_app(token="s3cret")
    assert client.get("/").status_code == 200  # the page loads and asks for the token
    assert client.get("/health").status_code == 401
    assert client.get("/speakers", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/speakers/a", data=files(1), headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 201


def test_page_cannot_be_framed_and_loads_only_its_own_files(make_app):
    r = make_app().get("/")
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]


def test_request_budgets(make_app):
    client = make_app(max_files=3, max_request_seconds=5)
    many = client.post("/speakers/a", data=files(4))
    assert many.status_code == 413 and "at most 3" in many.get_json()["error"]
    long = client.post("/speakers/a", data=files(3, seconds=2.0))
    assert long.status_code == 413 and "5 s of audio" in long.get_json()["error"]
    parts = {"files": [(io.BytesIO(b"x"), f"{i}.wav") for i in range(1000)]}
    flood = client.post("/speakers/a", data=parts)
    assert flood.status_code == 413
    assert client.get("/speakers").get_json()["speakers"] == []


def test_a_tiny_file_declaring_a_tiny_rate_is_refused(make_app):
    buf = io.BytesIO()
    sf.write(buf, np.full(60, 0.5, dtype=np.float32), 1, format="WAV", subtype="PCM_16")  # 60 s at 1 Hz
    r = make_app().post("/identify", data={"file": (io.BytesIO(buf.getvalue()), "tiny.wav")})
    assert r.status_code == 400 and "sample rate 1 Hz" in r.get_json()["error"] and "tiny.wav" in r.get_json()["error"]


def test_deeply_nested_json_is_a_400(make_app):
    client = make_app()
    client.post("/speakers/a", data=files(1))
    body = "[" * 100000 + "]" * 100000
    r = client.post("/speakers/a/rename", data=body, content_type="application/json")
    assert r.status_code == 400


@pytest.mark.slow
def test_sigterm_leaves_a_whole_database_file(tmp_path):
    """SIGTERM, as service managers stop a process: every registry is closed, so ``registry.sqlite`` alone
    (copied without its ``-wal``) holds the enrolled speaker."""
    cmd = [sys.executable, "-m", "enroll.cli", "serve", "--registry", str(tmp_path / "reg"), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.wav\"\r\n"
                f"Content-Type: audio/wav\r\n\r\n").encode() + wav_bytes() + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(url + "speakers/ada", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, proc.stderr.read()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "reg" / "registry.sqlite", copy / "registry.sqlite")
    names = [r[0] for r in sqlite3.connect(copy / "registry.sqlite").execute("SELECT name FROM speakers")]
    assert names == ["ada"]


def test_serving_beyond_loopback_needs_a_token(tmp_path, capsys, monkeypatch):
    from enroll.cli import main

    monkeypatch.delenv("ASIT_ENROLL_TOKEN", raising=False)
    assert main(["serve", "--registry", str(tmp_path / "r"), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err


def test_registry_from_the_server_is_a_normal_registry(make_app, encoder, tmp_path):
    client = make_app()
    assert client.post("/speakers/ada", data=files(2)).status_code == 201
    client.application.extensions["enroll"].registries.close()
    with SpeakerRegistry(tmp_path / "reg0", encoder=encoder) as reg:
        assert reg.names() == ["ada"] and reg.speaker("ada").n_clips == 2
        assert json.loads(json.dumps(reg.operating_points()))["speakers"] == 1


@pytest.mark.slow
def test_idle_connections_do_not_lock_clients_out(tmp_path):
    """120 connections holding an unfinished request (waitress's default limit is 100) leave room for others."""
    import socket

    cmd = [sys.executable, "-m", "enroll.cli", "serve", "--registry", str(tmp_path / "reg"), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    idle = []
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        for _ in range(120):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            idle.append(sock)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=20) as r:
            assert r.status == 200 and json.load(r)["speakers"] == 0
    finally:
        for sock in idle:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)


def test_request_wall_time_budget(make_app):
    client = make_app(max_request_wall=1e-6)  # any upload takes longer than a microsecond to decode
    r = client.post("/speakers/a", data=files(2))
    assert r.status_code == 503 and "took more than" in r.get_json()["error"]
    assert client.get("/speakers").get_json()["speakers"] == []
