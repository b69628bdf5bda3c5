"""`pip install '.[server]'` into a fresh virtual environment, as the README's Installation section says, then
embed, enroll and serve from it (outside the source tree, so only the installed package is used).

Slow (a few minutes: it installs torch and the rest into a new environment) and needs the package index;
``ASIT_SKIP_INSTALL_TEST=1`` skips it.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "examples" / "clips"

pytestmark = pytest.mark.skipif(os.environ.get("ASIT_SKIP_INSTALL_TEST") == "1",
                                reason="ASIT_SKIP_INSTALL_TEST=1")


def sh(args, **kw):
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=1800, **kw)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pip_install_server_extra_in_a_fresh_venv_embeds_enrolls_and_serves(tmp_path):
    venv = tmp_path / "venv"
    sh([sys.executable, "-m", "venv", venv])
    bin_ = venv / "bin"
    # the README's commands: the install, then the documented fix (a no-op where torchaudio loads)
    sh([bin_ / "pip", "install", "-q", f"{ROOT}[server]", "-c", ROOT / "constraints.txt"])
    sh([bin_ / "asit-embed", "doctor", "--fix"])
    work = tmp_path / "work"  # not the source tree: only the installed package can be imported
    work.mkdir()
    where = sh([bin_ / "python", "-c", "import asit_embed, enroll; print(asit_embed.__file__, enroll.__file__)"],
               cwd=work).stdout
    assert str(ROOT) not in where and str(venv) in where

    alice = sorted((CLIPS / "0036").glob("*.flac"))
    bob = sorted((CLIPS / "1027").glob("*.flac"))
    sh([bin_ / "asit-embed", "embed", alice[0], "--out", work / "e.npy"], cwd=work)
    shape = sh([bin_ / "python", "-c", "import numpy; print(numpy.load('e.npy').shape)"], cwd=work).stdout
    assert shape.strip() in ("(1, 192)", "(192,)")

    reg = ["--registry", work / "reg"]
    sh([bin_ / "asit-enroll", *reg, "add", "alice", *alice[:3]], cwd=work)
    sh([bin_ / "asit-enroll", *reg, "add", "bob", *bob[:3]], cwd=work)
    answer = json.loads(sh([bin_ / "asit-enroll", *reg, "identify", alice[4], "--json"], cwd=work).stdout)
    assert answer[0]["matches"][0]["name"] == "alice"

    port = free_port()
    server = subprocess.Popen([bin_ / "asit-enroll", *reg, "serve", "--port", str(port)], cwd=work,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = None
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.5)
        assert health is not None and health["speakers"] == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200 and b"<form" in r.read()  # the upload page
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert server.returncode == 0
