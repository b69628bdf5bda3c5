"""Speech detection, per-segment embeddings, who-spoke-when, the embedding map, and the CLI's global options."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asit_embed import AudioError, load_encoder
from enroll import SpeakerRegistry, Turn
from enroll.cli import main as enroll_main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONVERSATION = EXAMPLES / "conversation.flac"  # 0036 0-4.5 s, 1027 4.8-8.5 s, 9611 8.8-14.8 s, 0036 15.1-18.2 s

pytest.importorskip("silero_vad")


@pytest.fixture(scope="module")
def vad_encoder():
    return load_encoder(precision="float32", vad=True)


@pytest.fixture(scope="module")
def by_speaker(clip_rows):
    out = {}
    for r in clip_rows:
        out.setdefault(r["speaker"], []).append(r["path"])
    return out


def tone(seconds=3.0, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("make", [
    lambda: tone(),                                                             # a pure tone
    lambda: np.full(48000, 0.2, dtype=np.float32),                              # a constant (DC) signal
    lambda: np.random.default_rng(0).normal(0, 0.05, 48000).astype(np.float32),  # hiss
])
def test_no_speech_is_an_error_with_vad_and_embeds_without(vad_encoder, encoder, make):
    wave = make()
    with pytest.raises(AudioError, match="no speech found"):
        vad_encoder.embed(wave, 16000)
    assert encoder.embed(wave, 16000).shape == (encoder.dim,)  # without speech detection it is embedded
    with pytest.raises(AudioError, match="no speech found"):
        encoder.embed(wave, 16000, vad=True)  # per call, too


def test_vad_drops_silence_around_speech(vad_encoder, encoder, by_speaker):
    speech, rate = sf.read(by_speaker["0036"][0], dtype="float32")
    padded = np.concatenate([np.zeros(3 * rate, np.float32), speech, 0.3 * tone(2.0)])
    kept = vad_encoder.prepare(padded, rate)
    assert 0.6 * len(speech) < len(kept) < 1.1 * len(speech)
    # the speech decides the embedding: close to that of the clip alone, unlike the padded clip without VAD
    alone = encoder.embed(speech, rate)
    assert float(vad_encoder.embed(padded, rate) @ alone) > float(encoder.embed(padded, rate) @ alone)


def test_registry_with_vad_counts_speech_seconds(vad_encoder, by_speaker):
    speech, rate = sf.read(by_speaker["1027"][0], dtype="float32")
    padded = np.concatenate([np.zeros(4 * rate, np.float32), speech])
    reg = SpeakerRegistry(encoder=vad_encoder, threshold=0.5)
    assert reg.vad
    spk = reg.enroll("bob", padded, sample_rate=rate)
    assert spk.seconds < len(speech) / rate + 0.5  # the 4 s of silence are not speech
    with pytest.raises(AudioError, match="no speech"):
        reg.identify(tone(), sample_rate=16000)


def test_embed_segments_cover_the_clip(encoder):
    wave, rate = sf.read(CONVERSATION, dtype="float32")
    segments = encoder.embed_segments(wave, rate, window=2.0, hop=1.0)
    assert segments[0].start == 0.0 and segments[-1].end == pytest.approx(len(wave) / rate, abs=1e-3)
    assert all(s.end - s.start == pytest.approx(2.0) for s in segments)
    assert all(b.start - a.start <= 1.0 + 1e-9 for a, b in zip(segments, segments[1:]))
    e = np.stack([s.embedding for s in segments])
    assert e.shape == (len(segments), encoder.dim) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        encoder.embed_segments(wave, rate, window=0.1)


def test_track_labels_who_spoke_when(encoder, by_speaker):
    # A fixed threshold below the 2 s segment scores that name the speakers, in the shipped model's default
    # scoring (AS-norm): the weakest that names bob scores 1.65. The stranger sounds like ada to this model:
    # two lone segments of his stretch score 1.60 and 1.83 against her, and are smoothed over as single dips.
    reg = SpeakerRegistry(encoder=encoder, threshold=1.6)
    assert reg.scoring == "as-norm"
    reg.enroll_many({"ada": by_speaker["0036"][:3], "bob": by_speaker["1027"][:3], "carl": by_speaker["0070"][:3]})
    turns = reg.track(CONVERSATION)
    assert all(isinstance(t, Turn) for t in turns)
    assert turns[0].start == 0.0 and turns[-1].end == pytest.approx(18.2, abs=0.01)
    assert all(a.end == b.start and a.name != b.name for a, b in zip(turns, turns[1:]))  # merged, contiguous

    # right names in order, each change of speaker within 0.5 s of the silence between the two clips
    assert [t.name for t in turns] == ["ada", "bob", None, "ada"], turns
    for turn, (gap_start, gap_end) in zip(turns[1:], [(4.52, 4.82), (8.54, 8.84), (14.81, 15.11)]):
        assert gap_start - 0.5 <= turn.start <= gap_end + 0.5, turns


def test_cli_track_map_and_global_options_after_the_command(tmp_path, by_speaker, capsys):
    reg = str(tmp_path / "reg")
    assert enroll_main(["add", "ada", *by_speaker["0036"][:3], "--registry", reg]) == 0
    assert enroll_main(["add", "bob", *by_speaker["1027"][:3], "--registry", reg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["name"] == "bob"
    assert enroll_main(["track", str(CONVERSATION), "--registry", reg, "--threshold", "0.5", "--json"]) == 0
    timeline = json.loads(capsys.readouterr().out)
    assert timeline["turns"][0]["name"] == "ada" and {"start", "end", "name", "score"} == set(timeline["turns"][0])
    assert enroll_main(["--registry", reg, "map", "--out", str(tmp_path / "map.png")]) == 0
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert enroll_main(["identify", by_speaker["0036"][4], "--json", "--registry", reg]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])[0]["matches"][0]["name"] == "ada"


def test_map_endpoint(encoder, tmp_path, by_speaker):
    from enroll.server import create_app

    app = create_app(tmp_path / "reg", encoder=encoder)
    client = app.test_client()
    assert client.get("/map.png").status_code == 404
    with open(by_speaker["0036"][0], "rb") as f:
        assert client.post("/speakers/ada", data={"files": [(f, "a.flac")]}).status_code == 201
    r = client.get("/map.png")
    assert r.status_code == 200 and r.mimetype == "image/png" and r.data[:4] == b"\x89PNG"
    app.extensions["enroll"].registries.close()


def test_progress_bars_count_clips_for_add_and_identify(tmp_path, by_speaker, capsys):
    reg = str(tmp_path / "reg")
    assert enroll_main(["add", "ada", *by_speaker["0036"][:3], "--registry", reg, "--progress"]) == 0
    assert "3/3" in capsys.readouterr().err
    assert enroll_main(["identify", *by_speaker["0036"][3:5], "--registry", reg, "--progress"]) == 0
    assert "2/2" in capsys.readouterr().err
    assert enroll_main(["identify", by_speaker["0036"][5], "--registry", reg]) == 0  # not a terminal: no bar
    assert "1/1" not in capsys.readouterr().err
