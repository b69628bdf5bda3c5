"""Tests for asit_embed.audio: every rejected input, every conversion, on real speech and synthetic tones.

Real speech: the bundled speechocean762 clips (CC BY 4.0, see examples/clips/README.md).
"""

import io
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from asit_embed.audio import (DEFAULT_SAMPLE_RATE, AudioError, AudioFileNotFoundError, load_audio,
                              prepare_waveform)

CLIPS = Path(__file__).resolve().parents[1] / "examples" / "clips"
SR = DEFAULT_SAMPLE_RATE


@pytest.fixture(scope="module")
def speech_path() -> Path:
    return sorted(CLIPS.glob("*/*.flac"))[0]


@pytest.fixture(scope="module")
def speech(speech_path) -> np.ndarray:
    """Real speech as soundfile decodes it: (samples,) float32 at 16 kHz."""
    wave, rate = sf.read(speech_path, dtype="float32")
    assert rate == SR and wave.ndim == 1
    return wave


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write(path: Path, wave: np.ndarray, rate: int = SR, **kw) -> Path:
    sf.write(path, wave, rate, **kw)
    return path


def test_decoded_speech_is_unchanged(speech_path, speech):
    out = load_audio(speech_path)
    assert out.dtype == np.float32 and out.shape == speech.shape and out.flags.c_contiguous
    assert np.array_equal(out, speech)


# --- load_audio errors ------------------------------------------------------------------------------------------
def test_missing_file_is_catchable_both_ways(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioFileNotFoundError, match="nope.wav.*does not exist"):
        load_audio(missing)
    with pytest.raises(FileNotFoundError):
        load_audio(str(missing))
    with pytest.raises(AudioError):
        load_audio(str(missing))


def test_directory(tmp_path):
    with pytest.raises(AudioError, match="is a directory") as info:
        load_audio(tmp_path)
    assert not isinstance(info.value, FileNotFoundError)


def test_empty_file_bytes_and_file_object(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav.*is empty"):
        load_audio(empty)
    with pytest.raises(AudioError, match="is empty"):
        load_audio(b"")
    with pytest.raises(AudioError, match="is empty"):
        load_audio(io.BytesIO())


def test_corrupt_bytes_name_the_source_and_chain_the_cause():
    garbage = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    with pytest.raises(AudioError, match=r"<bytes, 3000 bytes> could not be decoded as audio") as info:
        load_audio(garbage)
    assert isinstance(info.value.__cause__, sf.LibsndfileError)


def test_text_file_named_wav(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is a text file with an audio extension\n" * 20)
    with pytest.raises(AudioError, match="notes.wav.*could not be decoded as audio"):
        load_audio(text)
    with open(text) as f, pytest.raises(AudioError, match="text mode"):
        load_audio(f)


@pytest.mark.parametrize("keep", [200, 0.5])
def test_truncated_flac(tmp_path, speech, keep):
    data = write(tmp_path / "ok.flac", speech).read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(AudioError, match="cut.flac.*could not be decoded"):
        load_audio(cut)


def test_unsupported_source_type():
    with pytest.raises(TypeError, match="int"):
        load_audio(12345)


# --- prepare_waveform errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0,), (0, 2), (2, 0)])
def test_zero_samples(shape):
    with pytest.raises(AudioError, match="clip contains no samples"):
        prepare_waveform(np.zeros(shape, np.float32), SR, source="clip")


def test_nan_and_inf_are_counted(speech):
    x = speech.copy()
    x[[3, 5]] = np.nan
    with pytest.raises(AudioError, match="2 NaN and 0 Inf samples"):
        prepare_waveform(x, SR)
    x[7], x[9], x[11] = np.inf, -np.inf, np.inf
    with pytest.raises(AudioError, match=f"2 NaN and 3 Inf samples out of {x.size}"):
        prepare_waveform(torch.from_numpy(x), SR)


def test_digital_silence(tmp_path):
    with pytest.raises(AudioError, match=r"is digitally silent \(peak amplitude 0\.0\)"):
        prepare_waveform(np.zeros(SR, np.int16), SR)
    with pytest.raises(AudioError, match="silent"):  # -86 dBFS of noise is still silence
        prepare_waveform(np.full(SR, 5e-5, np.float32), SR)
    with pytest.raises(AudioError, match="silence.wav.*silent"):
        load_audio(write(tmp_path / "silence.wav", np.zeros(SR, np.float32)))
    assert prepare_waveform(np.full(SR, 2e-4, np.float32), SR).shape == (SR,)


def test_too_short_and_configurable_min_seconds(tmp_path, speech):
    short = speech[: int(0.21 * SR)]
    with pytest.raises(AudioError, match=r"clip is 0\.21 s long; at least 0\.5 s is needed"):
        prepare_waveform(short, SR, source="clip")
    assert prepare_waveform(short, SR, min_seconds=0.2).shape == short.shape
    with pytest.raises(AudioError, match=r"0\.21 s long; at least 0\.3 s"):
        prepare_waveform(short, SR, min_seconds=0.3)
    path = write(tmp_path / "short.wav", short)
    with pytest.raises(AudioError, match="short.wav.*0.21 s long"):
        load_audio(path)
    assert load_audio(path, min_seconds=0.1).shape == short.shape
    with pytest.raises(AudioError, match=r"at least 20 s"):
        load_audio(path.parent / "short.wav", min_seconds=20)


@pytest.mark.parametrize("rate", [0, -16000, 16000.0, True, None])
def test_bad_sample_rate(rate):
    with pytest.raises(AudioError, match=f"sample rate {rate!r}.*positive integer"):
        prepare_waveform(tone(SR), rate)


def test_bad_target_rate():
    with pytest.raises(AudioError, match="target rate 0"):
        prepare_waveform(tone(SR), SR, target_rate=0)


def test_shapes(speech):
    with pytest.raises(AudioError, match=r"shape \(1, 1, 2, 16000\)"):
        prepare_waveform(np.ones((1, 1, 2, SR), np.float32), SR)
    with pytest.raises(AudioError, match=r"shape \(2, 2, 16000\)"):
        prepare_waveform(np.ones((2, 2, SR), np.float32), SR)
    batch_of_one = torch.from_numpy(np.stack([speech, speech]))[None]  # (1, channels, samples)
    assert np.allclose(prepare_waveform(batch_of_one, SR), speech, atol=1e-7)


@pytest.mark.parametrize("dtype", [bool, np.complex64, np.uint16, object])
def test_unsupported_dtypes_are_type_errors(dtype):
    with pytest.raises(TypeError, match="dtype"):
        prepare_waveform(np.ones(SR, dtype), SR)


def test_int64_beyond_int32_is_rejected():
    x = np.zeros(SR, np.int64)
    x[1] = 2**31
    with pytest.raises(AudioError, match=r"int64 with values in \[0, 2147483648\]"):
        prepare_waveform(x, SR)
    x[1] = -2**31  # the int32 minimum still fits
    assert prepare_waveform(x, SR)[1] == -1.0


# --- conversions ------------------------------------------------------------------------------------------------
def test_stereo_in_both_layouts_is_the_channel_mean(tmp_path, speech):
    other = np.roll(speech, 160) * 0.5
    expect = (speech + other) / 2
    assert np.allclose(prepare_waveform(np.stack([speech, other], axis=1), SR), expect, atol=1e-7)  # soundfile
    assert np.allclose(prepare_waveform(torch.from_numpy(np.stack([speech, other])), SR), expect, atol=1e-7)
    path = write(tmp_path / "stereo.wav", np.stack([speech, other], axis=1), subtype="FLOAT")
    assert np.allclose(load_audio(path), expect, atol=1e-7)


@pytest.mark.parametrize("dtype,pcm,expect", [
    (np.int8, [-128, -64, 0, 64, 127], [-1, -0.5, 0, 0.5, 127 / 128]),
    (np.uint8, [0, 64, 128, 192, 255], [-1, -0.5, 0, 0.5, 127 / 128]),
    (np.int16, [-32768, -16384, 0, 16384, 32767], [-1, -0.5, 0, 0.5, 32767 / 32768]),
    (np.int32, [-2**31, -2**30, 0, 2**30, 2**31 - 1], [-1, -0.5, 0, 0.5, 1 - 2**-31]),
    (np.int64, [-2**31, -2**30, 0, 2**30, 2**31 - 1], [-1, -0.5, 0, 0.5, 1 - 2**-31]),
])
def test_integer_pcm_scaling(dtype, pcm, expect):
    x = np.tile(np.array(pcm, dtype), SR // len(pcm))
    out = prepare_waveform(x, SR)
    assert out.dtype == np.float32
    assert np.allclose(out[: len(pcm)], expect, rtol=0, atol=1e-7)


def test_int16_speech_round_trip(speech):
    pcm = np.round(speech * 32767).astype(np.int16)
    assert np.abs(prepare_waveform(pcm, SR) - speech).max() < 1e-4


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_float_dtypes_are_used_as_is(speech, dtype):
    out = prepare_waveform(speech.astype(dtype), SR)
    assert out.dtype == np.float32
    assert np.array_equal(out, speech.astype(dtype).astype(np.float32))


def test_torch_inputs_and_no_aliasing(speech):
    t = torch.from_numpy(speech.copy()).requires_grad_()
    assert np.array_equal(prepare_waveform(t, SR), speech)
    assert np.allclose(prepare_waveform(t.detach().bfloat16(), SR), speech, atol=1e-2)
    x = speech.copy()
    out = prepare_waveform(x, SR)
    out[:] = 0
    assert np.array_equal(x, speech)


def test_float_audio_far_outside_unit_range_logs_a_warning(caplog, speech):
    with caplog.at_level(logging.WARNING, logger="asit_embed.audio"):
        prepare_waveform(speech * 32767, SR)
    assert "expected in [-1, 1]" in caplog.text


@pytest.mark.parametrize("subtype,tol", [("PCM_U8", 1 / 128), ("PCM_16", 1 / 32768), ("PCM_24", 2**-23)])
def test_wav_bit_depths_load_close_to_the_original(tmp_path, speech, subtype, tol):
    path = write(tmp_path / f"{subtype}.wav", speech, subtype=subtype)
    assert sf.info(path).subtype == subtype
    out = load_audio(path)
    assert out.shape == speech.shape
    assert np.abs(out - speech).max() <= tol + 1e-7


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_tone_is_resampled_to_16k(tmp_path, rate):
    out = load_audio(write(tmp_path / f"{rate}.wav", tone(rate), rate, subtype="FLOAT"))
    assert out.shape == (SR,)  # 1 s at any rate is 1 s at 16 kHz
    mid = slice(400, SR - 400)  # the resampler's filter edges aside, it is the same 440 Hz tone at 16 kHz
    assert np.abs(out[mid] - tone(SR)[mid]).max() < 5e-3


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_speech_is_resampled_to_16k(tmp_path, speech, rate):
    wave = AF.resample(torch.from_numpy(speech), SR, rate).numpy()
    out = load_audio(write(tmp_path / "r.wav", wave, rate, subtype="FLOAT"))
    assert out.shape == (math.ceil(len(wave) * SR / rate),)
    assert abs(len(out) - len(speech)) <= 1
    n = min(len(out), len(speech))
    if rate > SR:  # nothing below 8 kHz is lost: the round trip is near-identical
        assert np.corrcoef(out[:n], speech[:n])[0, 1] > 0.999
    else:  # the 4-8 kHz band is gone, the rest of the speech remains
        assert np.corrcoef(out[:n], speech[:n])[0, 1] > 0.9


def test_bytes_and_file_like_sources(tmp_path, speech):
    path = write(tmp_path / "a.flac", speech)
    data = path.read_bytes()
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        assert np.array_equal(load_audio(source), speech)
    with open(path, "rb") as f:
        assert np.array_equal(load_audio(f), speech)

    class Stream:  # a pipe or socket: read() only, no seek
        def __init__(self, data: bytes) -> None:
            self.buffer = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self.buffer.read(n)

    assert np.array_equal(load_audio(Stream(data)), speech)


def test_bytes_are_resampled_too(speech):
    buf = io.BytesIO()
    sf.write(buf, AF.resample(torch.from_numpy(speech), SR, 8000).numpy(), 8000, format="WAV")
    assert abs(len(load_audio(buf.getvalue())) - len(speech)) <= 1


@pytest.mark.parametrize("fmt,subtype", [("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_compressed_formats(tmp_path, speech, fmt, subtype):
    path = tmp_path / f"a.{fmt.lower()}"
    try:
        sf.write(path, speech, SR, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as err:
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write {fmt}: {err}")
    out = load_audio(path)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert abs(len(out) - len(speech)) < 0.05 * len(speech)  # codec padding / priming only
    rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))  # noqa: E731
    assert rms(out) == pytest.approx(rms(speech), rel=0.2)  # the same speech, lossy
    assert np.array_equal(load_audio(path.read_bytes()), out)


def test_flac_of_unknown_length_is_a_clear_audio_error(clip_rows):
    """A FLAC whose STREAMINFO gives no length (streaming encoders write these): an AudioError that says so,
    not a bare ValueError or LibsndfileError."""
    data = bytearray(open(clip_rows[0]["path"], "rb").read())
    assert data[:4] == b"fLaC"
    data[21] &= 0xF0
    data[22:42] = bytes(20)  # total samples and MD5 unknown
    with pytest.raises(AudioError, match="does not state its length"):
        load_audio(bytes(data))


def test_a_header_claiming_a_tiny_rate_is_refused_before_decoding(tmp_path):
    import soundfile as sf

    path = tmp_path / "tiny.wav"
    sf.write(path, np.full(2000, 0.5, dtype=np.float32), 1, subtype="PCM_16")  # 2000 s at 1 Hz in 4 KB
    with pytest.raises(AudioError, match="sample rate 1 Hz"):
        load_audio(path)


def test_decoder_errors_name_the_upload_not_a_python_object():
    with pytest.raises(AudioError) as info:
        load_audio(io.BytesIO(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk"))
    assert "object at 0x" not in str(info.value)
