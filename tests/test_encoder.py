import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from asit_embed import AudioError, SpeakerEncoder, similarity
from asit_embed.audio import load_audio
from asit_embed.windowing import even_spans


def test_embeddings_are_unit_norm_float32_and_deterministic(encoder, clip_rows):
    a = encoder.embed(clip_rows[0]["path"])
    b = encoder.embed(clip_rows[0]["path"])
    assert a.shape == (encoder.dim,) and a.dtype == np.float32
    assert abs(np.linalg.norm(a) - 1) < 1e-5 and np.isfinite(a).all()
    assert np.array_equal(a, b)


def test_batch_equals_one_by_one(encoder, clip_rows):
    paths = [r["path"] for r in clip_rows[:10]]  # 2.3 … 7.6 s: short clips padded, long ones windowed
    batched = encoder.embed_batch(paths, batch_size=4)
    single = np.stack([encoder.embed(p) for p in paths])
    assert batched.shape == (10, encoder.dim)
    assert (np.sum(batched * single, axis=1) >= 0.999).all()


@pytest.mark.parametrize("rate", [8000, 44100])
def test_resampled_copies_embed_alike(encoder, clip_rows, rate):
    import torchaudio.functional as AF

    wave = load_audio(clip_rows[1]["path"])
    other = AF.resample(torch.from_numpy(wave), 16000, rate).numpy()
    assert similarity(encoder.embed(wave, 16000), encoder.embed(other, rate)) >= 0.98


def test_stereo_and_integer_input(encoder, clip_rows):
    wave = load_audio(clip_rows[2]["path"])
    mono = encoder.embed(wave, 16000)
    stereo = np.stack([wave, wave], axis=1)  # (samples, channels)
    assert similarity(mono, encoder.embed(stereo, 16000)) > 0.9999
    pcm16 = np.round(wave * 32767).astype(np.int16)
    assert similarity(mono, encoder.embed(pcm16, 16000)) > 0.999


def test_long_file_is_windowed_in_bounded_memory(encoder, clip_rows, tmp_path):
    # 3 minutes of one speaker's clips back to back: many windows, averaged.
    speaker = clip_rows[0]["speaker"]
    waves = [load_audio(r["path"]) for r in clip_rows if r["speaker"] == speaker]
    long = np.tile(np.concatenate(waves), 8)[: 16000 * 180]
    path = tmp_path / "long.flac"
    sf.write(path, long, 16000)
    emb = encoder.embed(path)
    assert emb.shape == (encoder.dim,) and np.isfinite(emb).all()
    assert len(encoder.windows(18000)) >= 18000 // encoder.config.window_frames
    # still the same speaker as one of its clips
    assert similarity(emb, encoder.embed(waves[0], 16000)) > 0.5


def windowed(encoder, window, hop):
    """The same weights with other inference windows."""
    from asit_embed.checkpoint import Checkpoint

    config = encoder.config.replace(window_frames=window, hop_frames=hop)
    return SpeakerEncoder(Checkpoint(config, encoder.model.state_dict()), precision="float32")


@pytest.mark.parametrize("window, hop", [(200, 100), (200, 150), (300, 300), (None, None)])
def test_windows_cover_the_clip(encoder, window, hop):
    enc = encoder if window is None else windowed(encoder, window, hop)  # None: the shipped windows
    c = enc.config
    assert enc.windows(c.window_frames) == [(0, c.window_frames)]
    total = c.window_frames * 3 + 7
    wins = enc.windows(total)
    assert wins[0][0] == 0 and wins[-1][1] == total
    if c.hop_frames < c.window_frames:  # overlapping windows of the full length, the last aligned to the end
        assert all(b - a == c.window_frames for a, b in wins)
    else:                               # an even split
        assert wins == even_spans(total, c.window_frames)


@pytest.mark.parametrize("total", [201, 298, 399, 400, 401, 998, 1999, 18000])
def test_even_spans_are_the_fewest_equal_windows_that_cover(total):
    wins = even_spans(total, 200)
    sizes = {b - a for a, b in wins}
    assert len(sizes) == 1 and sizes.pop() <= 200          # one size (batches without padding), within the limit
    assert len(wins) == -(-total // 200)                    # the fewest that can cover
    assert wins[0][0] == 0 and wins[-1][1] == total
    assert all(0 <= a2 - b1 + 1 <= 1 for (_, b1), (a2, _) in zip(wins, wins[1:]))  # no gap, at most 1 frame shared


def test_hop_equal_to_window_splits_long_clips_evenly(encoder, clip_rows):
    even, overlapping = windowed(encoder, 200, 200), windowed(encoder, 200, 100)
    assert even.windows(200) == [(0, 200)]
    assert even.windows(298) == [(0, 149), (149, 298)] and len(overlapping.windows(298)) == 2
    assert len(even.windows(998)) == 5 < len(overlapping.windows(998))  # fewer than with overlapping windows
    # the same model, fewer windows: the same speaker, nearly the same vector
    path = max((r["path"] for r in clip_rows), key=lambda p: sf.info(p).duration)
    assert similarity(even.embed(path), overlapping.embed(path)) > 0.95


def test_bad_input_is_an_audio_error(encoder, tmp_path):
    with pytest.raises(AudioError):
        encoder.embed(np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(AudioError):
        encoder.embed(np.full(16000, np.nan, dtype=np.float32), 16000)
    bad = tmp_path / "x.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioError):
        encoder.embed(bad)
    with pytest.raises(TypeError, match="needs its sample_rate"):
        encoder.embed(np.ones(16000))
    with pytest.raises(TypeError, match="arrays only"):
        encoder.embed(bad, sample_rate=16000)


def test_every_kind_of_clip_gives_the_same_embedding(encoder, clip_rows):
    path = clip_rows[0]["path"]
    ref = encoder.embed(path)
    wave, rate = sf.read(path, dtype="float32")
    data = Path(path).read_bytes()
    with open(path, "rb") as f:
        from_file = encoder.embed(f)
    for e in (encoder.embed(Path(path)), encoder.embed(data), from_file, encoder.embed(wave, sample_rate=rate),
              encoder.embed(torch.from_numpy(wave), sample_rate=rate)):
        assert similarity(ref, e) > 0.9999
    # An array at another rate is resampled, never embedded as if it were 16 kHz.
    wave8k = torchaudio.functional.resample(torch.from_numpy(wave), rate, 8000).numpy()
    assert similarity(ref, encoder.embed(wave8k, sample_rate=8000)) > 0.9
    batch = encoder.embed_batch(iter([path, data, wave8k]), sample_rate=8000)  # rate applies to the array only
    assert batch.shape == (3, encoder.dim)
    assert similarity(batch[0], ref) > 0.9999 and similarity(batch[1], ref) > 0.9999
    assert similarity(batch[2], ref) > 0.9


def test_old_names_warn_and_still_work(encoder, clip_rows):
    path = clip_rows[0]["path"]
    ref = encoder.embed(path)
    with pytest.warns(DeprecationWarning, match="use embed\\(\\)"):
        assert similarity(encoder.embed_file(path), ref) > 0.9999
    with pytest.warns(DeprecationWarning, match="use embed\\(\\)"):
        assert similarity(encoder.embed_clip(path), ref) > 0.9999
    with pytest.warns(DeprecationWarning, match="use embed_batch\\(\\)"):
        assert similarity(encoder.embed_files([path])[0], ref) > 0.9999


def test_similarity_checks_shapes():
    assert similarity(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == 0.0
    with pytest.raises(ValueError, match="differ"):
        similarity(np.ones(3), np.ones(4))


def test_from_model_wraps_in_memory_models():
    from asit_embed.model import ASiTEncoder, asit_tiny

    torch.manual_seed(0)
    model = ASiTEncoder(asit_tiny(depth=1))
    enc = SpeakerEncoder.from_model(model)
    t = np.arange(16000) / 16000
    e = enc.embed(0.1 * np.sin(2 * np.pi * 200 * t), 16000)
    assert e.shape == (192,) and len(enc.fingerprint) == 16


def test_model_card_describes_the_bundled_checkpoint(encoder):
    """The card's fingerprint and operating points are those of the checkpoint that ships beside it."""
    from asit_embed import encoder as encoder_module
    from asit_embed.calibration import Calibration

    card = (Path(encoder_module.__file__).parent / "pretrained" / "MODEL_CARD.md").read_text()
    assert re.search(r"\| fingerprint \| `([0-9a-f]{16})`", card).group(1) == encoder.fingerprint
    scoring = encoder.metadata.get("scoring", "cosine")  # what a registry scores with by default
    assert f"| default scoring | {scoring}" in card
    cal = Calibration.from_dict(encoder.metadata["calibrations"][scoring])
    verify = re.search(r"Verify threshold \(1 % of impostor trials\): (-?\d+\.\d+)", card).group(1)
    identify = re.search(r"identify threshold with 5 speakers enrolled \(FPIR 1 %\): (-?\d+\.\d+)", card).group(1)
    assert verify == f"{cal.verify_threshold(0.01):.3f}" and identify == f"{cal.identify_threshold(5, 0.01):.3f}"
