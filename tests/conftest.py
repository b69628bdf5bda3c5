import csv
from pathlib import Path

import pytest

CLIPS = Path(__file__).resolve().parents[1] / "examples" / "clips"


@pytest.fixture(scope="session")
def clip_rows():
    """The bundled real-speech clips: dicts with path (absolute), speaker, seconds."""
    rows = list(csv.DictReader(open(CLIPS / "manifest.csv")))
    for r in rows:
        r["path"] = str(CLIPS / r["path"])
    return rows


@pytest.fixture(scope="session")
def clips_manifest():
    return CLIPS / "manifest.csv"


@pytest.fixture(scope="session")
def encoder():
    from asit_embed import load_encoder

    return load_encoder(precision="float32")  # the reference; tests that need bfloat16 ask for it


@pytest.fixture
def cli_registry(tmp_path, clip_rows):
    """A registry made with ``asit-enroll add``: alice (speaker 0036) and bob (1027) from three clips each.
    Returns the ``--registry`` arguments and each speaker's clip paths."""
    from enroll.cli import main as enroll_main

    reg = ["--registry", str(tmp_path / "reg")]
    a = [r["path"] for r in clip_rows if r["speaker"] == "0036"]
    b = [r["path"] for r in clip_rows if r["speaker"] == "1027"]
    assert enroll_main(reg + ["add", "alice", *a[:3]]) == 0
    assert enroll_main(reg + ["add", "bob", *b[:3]]) == 0
    return reg, a, b
