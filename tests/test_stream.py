"""Long files embedded as a stream (two passes, memory bounded by a block) give what the in-memory path gives."""

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import asit_embed.stream as stream
from asit_embed import AudioError
from asit_embed.audio import resample
from enroll import SpeakerRegistry
from enroll.errors import DuplicateClipError


@pytest.fixture(scope="module")
def speech(clip_rows):
    """About 40 s of real speech of one speaker at 16 kHz (bundled clips joined)."""
    return np.concatenate([sf.read(r["path"], dtype="float32")[0] for r in clip_rows if r["speaker"] == "0036"])


@pytest.fixture
def stream_from(monkeypatch):
    """Make files longer than ``seconds`` stream (the default threshold is a minute)."""
    def set_threshold(seconds):
        monkeypatch.setattr(stream, "STREAM_SECONDS", seconds)
    return set_threshold


@pytest.mark.parametrize("rate, channels", [(16000, 1), (48000, 2), (44100, 1), (8000, 1)])
def test_a_streamed_file_embeds_as_in_one_piece(encoder, speech, stream_from, tmp_path, rate, channels):
    x = speech if rate == 16000 else resample(speech, 16000, rate)
    data = np.stack([x, 0.5 * x[::-1]], 1) if channels == 2 else x
    path = tmp_path / "long.wav"
    sf.write(path, data, rate, subtype="FLOAT")
    whole = encoder.prepare(path)
    expected = encoder.embed(path)  # a minute threshold: this ~40 s file is decoded whole
    stream_from(5.0)
    assert encoder._streams(str(path), None, None)
    [(embedding, seconds, sha256)] = encoder._embed_described([path])
    assert np.abs(embedding - expected).max() < 1e-5 and float(embedding @ expected) > 0.99999
    assert seconds == whole.shape[0] / 16000
    assert sha256 == hashlib.sha256(whole.tobytes()).hexdigest()  # what enrollment records, as in one piece
    assert np.array_equal(encoder.embed(path), embedding)
    assert np.array_equal(encoder.embed(path.read_bytes()), embedding)  # bytes and file objects stream too
    with open(path, "rb") as f:
        assert np.array_equal(encoder.embed_batch([f, str(path)])[0], embedding)


def test_short_files_arrays_and_speech_detection_do_not_stream(encoder, speech, stream_from, tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, speech, 16000)
    stream_from(5.0)
    assert encoder._streams(path, None, None)
    assert not encoder._streams(speech, 16000, None)      # an array is in memory already
    assert not encoder._streams(path, None, True)         # speech detection needs the whole signal
    stream_from(3600.0)
    assert not encoder._streams(path, None, None)
    assert not encoder._streams(io.BytesIO(b"not audio at all"), None, None)  # left to the precise error


def test_bad_long_files_fail_as_in_one_piece(encoder, speech, stream_from, tmp_path):
    stream_from(5.0)
    nan = speech.copy()
    nan[len(nan) // 2] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or Inf"):
        encoder.embed(tmp_path / "nan.wav")
    sf.write(tmp_path / "silent.wav", np.zeros_like(speech), 16000)
    with pytest.raises(AudioError, match="digitally silent"):
        encoder.embed(tmp_path / "silent.wav")


def test_a_registry_enrolls_a_streamed_file_and_knows_it_again(encoder, speech, stream_from, tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, speech, 16000)
    reg = SpeakerRegistry(encoder=encoder)
    in_memory = reg.enroll("ada", path)
    stream_from(5.0)
    with pytest.raises(DuplicateClipError, match="already enrolled"):  # the same clip's hash, streamed
        reg.enroll("bob", path)
    streamed = reg.enroll("ada", path, replace=True)
    assert streamed.seconds == pytest.approx(in_memory.seconds)
    [best] = reg.identify(path, k=1)
    assert best.name == "ada" and best.score > 0.9999


MEMORY_PROBE = """
import re, sys
from asit_embed import load_encoder

def kb(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

e = load_encoder()
e.embed(sys.argv[2])
for path in sys.argv[1].split(","):
    before = kb("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # the peak restarts from the current size
    e.embed(path)
    print((kb("VmHWM") - before) / 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-memory reset")
def test_memory_does_not_grow_with_the_file(speech, tmp_path):
    """Peak memory of embedding a 48 kHz stereo file: 6 minutes take no more than 2 (the in-memory path
    would hold 6 minutes of signal and features, about +90 MB more)."""
    paths = []
    for minutes in (2, 6):
        mono = np.tile(speech, int(np.ceil(minutes * 60 * 16000 / len(speech))))[: minutes * 60 * 16000]
        paths.append(tmp_path / f"{minutes}.wav")
        sf.write(paths[-1], np.repeat(np.stack([mono, mono[::-1]], 1), 3, axis=0), 48000, subtype="PCM_16")
    sf.write(tmp_path / "warm.flac", speech[:48000], 16000)
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, ",".join(map(str, paths)), str(tmp_path / "warm.flac")],
                         capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    short, long = map(float, out.stdout.split())
    assert long < short + 40, (short, long)
