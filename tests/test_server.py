import io
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from enroll import SpeakerRegistry
from enroll.server import create_app

ADA, BOB, CARL = "0036", "1027", "0070"  # bundled speakers


def upload(path, name=None):
    path = Path(path)
    return io.BytesIO(path.read_bytes()), name or path.name


@pytest.fixture(scope="module")
def clips(clip_rows):
    """speaker -> [(path, seconds)], in manifest order."""
    out = {}
    for r in clip_rows:
        out.setdefault(r["speaker"], []).append((r["path"], float(r["seconds"])))
    return out


@pytest.fixture(scope="module")
def app(encoder, tmp_path_factory, clips):
    # one fixed accept score: the API's behaviour, not the calibration (tests/test_calibration.py), is tested here
    app = create_app(tmp_path_factory.mktemp("reg"), encoder=encoder, threshold=0.5)
    client = app.test_client()
    for name, spk in (("ada", ADA), ("bob", BOB)):
        r = client.post(f"/speakers/{name}", data={"files": [upload(p) for p, _ in clips[spk][:3]]})
        assert r.status_code == 201, r.get_json()
    yield app
    app.extensions["enroll"].registries.close()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def names(client):
    r = client.get("/speakers")
    assert r.status_code == 200
    return [s["name"] for s in r.get_json()["speakers"]]


def test_health(client, encoder):
    r = client.get("/health")
    body = r.get_json()
    assert r.status_code == 200 and body["status"] == "ok"
    assert body["fingerprint"] == encoder.fingerprint
    assert body["speakers"] == len(names(client))
    assert body["max_seconds"] == 60 and body["max_upload_mb"] == 20


def test_enroll_adds_clips_and_replace_resets_them(client, clips):
    (a, sa), (b, sb), (c, sc) = clips[CARL][:3]
    r = client.post("/speakers/carl", data={"files": [upload(a), upload(b)]})
    assert r.status_code == 201
    body = r.get_json()
    assert list(body) == ["name", "n_clips", "seconds", "created", "updated"]
    assert body["name"] == "carl" and body["n_clips"] == 2 and body["seconds"] == pytest.approx(sa + sb, abs=0.05)
    r = client.post("/speakers/carl", data={"files": upload(c)})  # an existing name gains the clip
    assert r.status_code == 200 and r.get_json()["n_clips"] == 3
    r = client.post("/speakers/carl?replace=1", data={"files": upload(c)})
    assert r.status_code == 200 and r.get_json()["n_clips"] == 1
    assert r.get_json()["seconds"] == pytest.approx(sc, abs=0.05)
    assert "carl" in names(client)
    got = client.get("/speakers/carl").get_json()
    assert got["n_clips"] == 1 and got["created"] <= got["updated"]
    assert client.post("/speakers/carl?replace=maybe", data={"files": upload(c)}).status_code == 400


def test_identify_ranks_the_speaker_first_and_agrees_with_the_registry(client, app, clips, encoder):
    held_out = clips[ADA][4][0]
    r = client.post("/identify", data={"file": upload(held_out), "k": "2"})
    assert r.status_code == 200
    body = r.get_json()
    matches = body["matches"]
    assert list(body) == ["matches", "threshold"] and all(list(m) == ["name", "score", "accepted"] for m in matches)
    assert matches[0]["name"] == "ada" and matches[1]["name"] in {"bob", "carl"}  # carl if enrolled by now
    assert matches[0]["score"] >= body["threshold"] > matches[1]["score"]
    assert matches[0]["accepted"] is True and matches[1]["accepted"] is False  # ada accepted, the next rejected
    with SpeakerRegistry(app.extensions["enroll"].registries.path, encoder=encoder, threshold=0.5) as reg:
        direct = reg.identify(held_out, k=2)
    assert [m["name"] for m in matches] == [m.name for m in direct]
    assert np.allclose([m["score"] for m in matches], [m.score for m in direct], atol=1e-4)
    r = client.post("/identify?k=1", data={"file": upload(held_out)})  # k from the query string
    assert len(r.get_json()["matches"]) == 1


def test_verify_accepts_the_right_speaker_over_another(client, clips):
    held_out = clips[BOB][4][0]
    same = client.post("/verify/bob", data={"file": upload(held_out)}).get_json()
    other = client.post("/verify/ada", data={"file": upload(held_out)}).get_json()
    assert list(same) == ["name", "score", "accepted", "threshold"]
    assert same["name"] == "bob" and other["name"] == "ada"
    assert same["score"] >= same["threshold"] > other["score"]
    assert same["accepted"] is True and other["accepted"] is False


def test_delete_then_the_speaker_is_unknown(client, clips):
    path = clips[CARL][5][0]
    assert client.post("/speakers/dora", data={"files": upload(path)}).status_code == 201
    r = client.delete("/speakers/dora")
    assert r.status_code == 200 and r.get_json() == {"removed": "dora"}
    assert "dora" not in names(client)
    for r in (client.get("/speakers/dora"), client.delete("/speakers/dora"),
              client.post("/verify/dora", data={"file": upload(path)})):
        assert r.status_code == 404
        assert r.get_json() == {"error": "no speaker named 'dora' is enrolled"}


def test_rename(client, clips):
    assert client.post("/speakers/eve", data={"files": upload(clips[CARL][4][0])}).status_code == 201
    r = client.post("/speakers/eve/rename", json={"new_name": "eva"})
    assert r.status_code == 200 and r.get_json()["name"] == "eva"
    assert "eva" in names(client) and "eve" not in names(client)
    r = client.post("/speakers/eva/rename", data={"new_name": "ada"})  # form field; name taken
    assert r.status_code == 409 and "already enrolled" in r.get_json()["error"]
    assert client.post("/speakers/eve/rename", json={"new_name": "x"}).status_code == 404
    assert client.post("/speakers/eva/rename", json={}).status_code == 400
    assert client.post("/speakers/eva/rename", json={"new_name": "../x"}).status_code == 400
    assert client.delete("/speakers/eva").status_code == 200


def corrupt(path):
    data = Path(path).read_bytes()
    return data[:200] + bytes(range(256)) * 8  # a FLAC header, then garbage


@pytest.mark.parametrize("kind", ["corrupt", "empty", "text"])
def test_bad_audio_is_400_with_the_encoder_message(client, clips, kind):
    path = clips[ADA][5][0]
    data, message = {"corrupt": (corrupt(path), "could not be decoded as audio"),
                     "empty": (b"", "is empty"),
                     "text": (b"this is not audio at all\n" * 40, "could not be decoded as audio")}[kind]
    before = client.get("/speakers/ada").get_json()
    for r in (client.post("/identify", data={"file": (io.BytesIO(data), "clip.flac")}),
              client.post("/verify/ada", data={"file": (io.BytesIO(data), "clip.wav")}),
              client.post("/speakers/ada", data={"files": [upload(path), (io.BytesIO(data), "clip.wav")]}),
              client.post("/speakers/newbie", data={"files": (io.BytesIO(data), "clip.ogg")})):
        assert r.status_code == 400
        assert message in r.get_json()["error"] and "clip." in r.get_json()["error"]
    assert client.get("/speakers/ada").get_json() == before  # one bad clip: nothing of the request is stored
    assert "newbie" not in names(client)


@pytest.mark.parametrize("filename", ["notes.txt", "photo.png", "no_extension"])
def test_non_audio_type_is_415(client, clips, filename):
    data = Path(clips[ADA][5][0]).read_bytes()
    r = client.post("/identify", data={"file": (io.BytesIO(data), filename, "application/octet-stream")})
    assert r.status_code == 415 and filename in r.get_json()["error"]
    r = client.post("/speakers/ada", data={"files": (io.BytesIO(data), filename)})
    assert r.status_code == 415


def test_audio_content_type_without_audio_extension_is_accepted(client, clips):
    data = Path(clips[ADA][5][0]).read_bytes()
    r = client.post("/identify", data={"file": (io.BytesIO(data), "recording", "audio/flac")})
    assert r.status_code == 200 and r.get_json()["matches"][0]["name"] == "ada"


@pytest.mark.parametrize("url,field", [("/identify", "files"), ("/verify/ada", "clip"), ("/speakers/ada", "file")])
def test_missing_field_is_400(client, clips, url, field):
    for r in (client.post(url), client.post(url, data={field: upload(clips[ADA][5][0])})):
        assert r.status_code == 400
        assert "multipart form field" in r.get_json()["error"]


@pytest.mark.parametrize("k", ["abc", "0", "-3", "101", "2.5"])
def test_bad_k_is_400(client, clips, k):
    r = client.post("/identify", data={"file": upload(clips[ADA][5][0]), "k": k})
    assert r.status_code == 400 and "k must be" in r.get_json()["error"]


@pytest.mark.parametrize("url", ["/speakers/../x", "/speakers/..%2Fx", "/speakers/%2E%2E", "/speakers/a%00b",
                                 "/speakers/%20padded", "/speakers/" + "n" * 101])
def test_bad_names_are_400_and_nothing_is_stored(client, clips, url):
    before = names(client)
    r = client.post(url, data={"files": upload(clips[CARL][0][0])})
    assert r.status_code == 400 and "speaker name" in r.get_json()["error"]
    assert client.get(url).status_code == 400
    assert client.delete(url).status_code == 400
    assert names(client) == before


def test_limits_are_413(encoder, tmp_path, clips):
    long_path = max(clips[ADA], key=lambda c: c[1])[0]
    assert Path(long_path).stat().st_size > 0.06 * 2**20
    app = create_app(tmp_path / "small", encoder=encoder, max_upload_mb=0.06, max_seconds=3.0)
    client = app.test_client()
    r = client.post("/identify", data={"file": upload(long_path)})
    assert r.status_code == 413 and r.get_json() == {"error": "upload is larger than 0.06 MB"}
    wave, rate = sf.read(long_path, dtype="int16")
    buf = io.BytesIO()
    sf.write(buf, wave[::2], rate // 2, format="FLAC")  # the same seconds at 8 kHz: a small file
    assert len(buf.getvalue()) < 0.06 * 2**20
    seconds = len(wave[::2]) / (rate // 2)
    r = client.post("/speakers/x", data={"files": (io.BytesIO(buf.getvalue()), "long.flac")})
    assert r.status_code == 413
    assert r.get_json() == {"error": f"'long.flac' is {seconds:.1f} s long; at most 3 s per clip is accepted"}
    assert client.get("/speakers").get_json() == {"speakers": []}
    app.extensions["enroll"].registries.close()


def test_uploads_stay_in_memory(client, clips, monkeypatch):
    import tempfile

    import werkzeug.formparser

    def no_disk(*args, **kwargs):
        raise AssertionError("upload spooled to disk")

    for module in (werkzeug.formparser, tempfile):  # werkzeug's default spools every file part
        monkeypatch.setattr(module, "SpooledTemporaryFile", no_disk, raising=False)
        monkeypatch.setattr(module, "TemporaryFile", no_disk, raising=False)
    wave, rate = sf.read(clips[BOB][5][0], dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, np.repeat(wave, 3), 3 * rate, format="WAV", subtype="FLOAT")  # 48 kHz float: > 500 KB
    assert len(buf.getvalue()) > 600_000
    r = client.post("/identify", data={"file": (io.BytesIO(buf.getvalue()), "big.wav")})
    assert r.status_code == 200 and r.get_json()["matches"][0]["name"] == "bob"


def test_unknown_route_and_method_are_json(client):
    r = client.get("/nowhere")
    assert r.status_code == 404 and "error" in r.get_json()
    r = client.put("/identify")
    assert r.status_code == 405 and "error" in r.get_json()


def test_unexpected_error_is_json_500_without_traceback(client, monkeypatch):
    def boom(self):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(SpeakerRegistry, "names", boom)
    r = client.get("/speakers")
    assert r.status_code == 500
    assert r.get_json() == {"error": "internal error (RuntimeError); see the server log"}


def test_page_is_self_contained(client):
    r = client.get("/")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and r.mimetype == "text/html"
    for element_id in ("enroll-name", "enroll-files", "enroll-record", "identify-file", "identify-record",
                       "matches", "speakers"):
        assert f'id="{element_id}"' in html
    assert '<label for="enroll-name">' in html and '<label for="identify-file">' in html
    js = client.get("/static/app.js").get_data(as_text=True)
    css = client.get("/static/style.css").get_data(as_text=True)
    assert "MediaRecorder" in js and "encodeWav" in js
    for text in (html, js, css):  # nothing fetched from another host
        assert "http://" not in text and "https://" not in text and 'src="//' not in text


def test_enroll_and_identify_concurrently(app, clips):
    errors, enrolled = [], []

    def identify(path):
        client = app.test_client()
        for _ in range(3):
            r = client.post("/identify", data={"file": upload(path)})
            if r.status_code != 200 or not r.get_json()["matches"]:
                errors.append(r.get_json())

    def enroll():
        client = app.test_client()
        for i in range(3):
            r = client.post(f"/speakers/conc{i}", data={"files": upload(clips[CARL][i][0]), "allow_duplicates": "1"})
            if r.status_code == 201:
                enrolled.append(f"conc{i}")
            else:
                errors.append(r.get_json())

    threads = [threading.Thread(target=identify, args=(clips[s][5][0],)) for s in (ADA, BOB, ADA)]
    threads.append(threading.Thread(target=enroll))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(enrolled) == {"conc0", "conc1", "conc2"} <= set(names(app.test_client()))


@pytest.mark.slow
def test_serve_command_runs_waitress(tmp_path):
    import json
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    cmd = [sys.executable, "-m", "enroll.cli", "serve", "--registry", str(tmp_path / "reg"), "--port", "0",
           "--threads", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "(waitress, 2 threads)" in line, (line, proc.poll())
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url + "health", timeout=60) as r:
            assert r.headers["Server"] == "asit-enroll" and json.load(r)["speakers"] == 0
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0


def test_cli_still_requires_a_registry(capsys):
    from enroll.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["list"])
    assert exit_info.value.code == 2 and "--registry" in capsys.readouterr().err
