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

    return load_encoder()
