import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from asit_embed import AudioError, SpeakerEncoder
from enroll import EncoderMismatchError, RegistryError, SpeakerRegistry, UnknownSpeakerError


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def reg(encoder, tmp_path):
    r = SpeakerRegistry(tmp_path / "reg", encoder=encoder, threshold=0.5)
    yield r
    r.close()


def snapshot(r):
    return {n: (r.speaker(n).n_clips, r.store.speaker_info(n)["template"].tobytes()) for n in r.names()}


def test_top_k_equals_brute_force_cosine(reg):
    rng = np.random.default_rng(0)
    d = reg.dim
    clips = {f"s{i:02d}": unit(rng, 3, d) for i in range(40)}
    for name, embs in clips.items():
        reg.enroll(name, list(embs))
    templates = np.stack([v.mean(0) / np.linalg.norm(v.mean(0)) for v in clips.values()])
    names = list(clips)
    queries = unit(rng, 25, d)
    results = reg.rank(queries, k=7)
    for q, matches in zip(queries, results):
        scores = templates @ q
        order = np.argsort(-scores)[:7]
        assert [m.name for m in matches] == [names[i] for i in order]
        assert np.allclose([m.score for m in matches], scores[order], atol=1e-5)
        assert all(m.accepted == (m.score >= 0.5) for m in matches)


def test_real_clips_identify_and_unknown(reg, clip_rows):
    by_spk = {}
    for r in clip_rows:
        by_spk.setdefault(r["speaker"], []).append(r["path"])
    spk = sorted(by_spk)
    reg.enroll(spk[0], by_spk[spk[0]][:3])
    reg.enroll(spk[1], by_spk[spk[1]][:3])
    matches = reg.identify(by_spk[spk[0]][4], k=5)
    assert len(matches) == 2 and matches[0].score >= matches[1].score
    v = reg.verify(spk[1], by_spk[spk[1]][4])
    assert v.name == spk[1] and v.accepted == (v.score >= reg.threshold)


def test_persistence_round_trip(encoder, tmp_path):
    rng = np.random.default_rng(1)
    queries = unit(rng, 5, encoder.dim)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.3) as r:
        for i in range(10):
            r.enroll(f"p{i}", list(unit(rng, 2, encoder.dim)))
        before = r.rank(queries, k=3)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.3) as r:
        assert len(r) == 10 and "p3" in r and "nobody" not in r
        assert r.rank(queries, k=3) == before


@pytest.mark.parametrize("damage", ["delete", "corrupt", "stale"])
def test_index_rebuilt_when_missing_corrupt_or_stale(encoder, tmp_path, damage):
    rng = np.random.default_rng(2)
    q = unit(rng, 3, encoder.dim)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder) as r:
        for i in range(6):
            r.enroll(f"p{i}", list(unit(rng, 2, encoder.dim)))
        before = r.rank(q, k=6)
        index_file = tmp_path / "r" / "index.faiss"
        saved = index_file.read_bytes()
        r.remove("p5")
        after_remove = r.rank(q, k=6)
    if damage == "delete":
        index_file.unlink()
    elif damage == "corrupt":
        index_file.write_bytes(b"garbage" * 10)
    else:  # an index file from an older state (still lists p5)
        index_file.write_bytes(saved)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder) as r:
        assert r.rank(q, k=6) == after_remove != before
        assert all(m.name != "p5" for row in r.rank(q, k=6) for m in row)


def test_encoder_mismatch_names_both_fingerprints(encoder, tmp_path):
    from asit_embed.model import ASiTEncoder, asit_tiny

    SpeakerRegistry(tmp_path / "r", encoder=encoder).close()
    torch.manual_seed(1)
    other = SpeakerEncoder.from_model(ASiTEncoder(asit_tiny(depth=1)))
    with pytest.raises(EncoderMismatchError) as err:
        SpeakerRegistry(tmp_path / "r", encoder=other)
    assert encoder.fingerprint in str(err.value) and other.fingerprint in str(err.value)


def test_remove_rename_reenroll(reg):
    rng = np.random.default_rng(3)
    a, b = unit(rng, 2, reg.dim)
    reg.enroll("ann", [a])
    reg.enroll("ann", [b])  # adds a clip
    assert reg.speaker("ann").n_clips == 2
    reg.enroll("ann", [b], replace=True)
    assert reg.speaker("ann").n_clips == 1
    assert reg.identify(b, k=1)[0].score == pytest.approx(1.0, abs=1e-5)
    reg.rename("ann", "anna")
    assert reg.names() == ["anna"] and reg.identify(b, k=1)[0].name == "anna"
    reg.enroll("bo", [a])
    with pytest.raises(RegistryError, match="already enrolled"):
        reg.rename("bo", "anna")
    reg.remove("anna")
    assert reg.names() == ["bo"] and reg.identify(b, k=5)[0].name == "bo"
    for call in (lambda: reg.remove("anna"), lambda: reg.rename("zed", "x"), lambda: reg.verify("zed", a),
                 lambda: reg.speaker("zed")):
        with pytest.raises(UnknownSpeakerError, match="zed|anna"):
            call()
    reg.enroll("anna", [b])
    assert sorted(reg.names()) == ["anna", "bo"]


def test_threshold_accepts_and_rejects(encoder):
    e = np.eye(encoder.dim, dtype=np.float32)
    close = (e[0] + 0.3 * e[1]) / np.linalg.norm(e[0] + 0.3 * e[1])  # cosine 0.958 with e0
    for threshold, accepted in [(0.9, True), (0.99, False)]:
        r = SpeakerRegistry(encoder=encoder, threshold=threshold)
        r.enroll("x", [e[0]])
        assert r.identify(close, k=1)[0].accepted is accepted
        assert r.verify("x", close).accepted is accepted
    r = SpeakerRegistry(encoder=encoder)
    assert r.threshold == pytest.approx(encoder.metadata.get("threshold", 0.5))


def test_bad_inputs_leave_the_registry_unchanged(reg, clip_rows, tmp_path):
    rng = np.random.default_rng(4)
    reg.enroll("keep", list(unit(rng, 2, reg.dim)))
    before, version = snapshot(reg), reg.store.version()
    good = clip_rows[0]["path"]
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("hello, not audio")
    cases = [
        (AudioError, [good, str(tmp_path / "empty.wav")]),
        (AudioError, [good, str(tmp_path / "text.wav")]),
        (AudioError, [good, str(tmp_path / "missing.flac")]),
        (AudioError, [np.zeros(16000, np.float32)], 16000),
        (AudioError, [np.full(16000, np.nan, np.float32)], 16000),
        (AudioError, [np.ones(800, np.float32) * 0.1], 16000),
        (TypeError, [np.ones(7, np.float32)]),
        (ValueError, [np.zeros(reg.dim, np.float32)]),
        (ValueError, []),
    ]
    for case in cases:
        exc, clips, *sr = case
        for name in ("keep", "new"):
            with pytest.raises(exc):
                reg.enroll(name, clips, sample_rate=sr[0] if sr else None)
    for bad_name in ["", " pad", "x" * 101, "tab\there", 5]:
        with pytest.raises((ValueError, TypeError)):
            reg.enroll(bad_name, [good])
    assert snapshot(reg) == before and reg.store.version() == version


WORKER = textwrap.dedent("""
    import sys, numpy as np
    from asit_embed import load_encoder
    from enroll import SpeakerRegistry
    path, prefix, n, clips = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    reg = SpeakerRegistry(path, encoder=load_encoder())
    rng = np.random.default_rng(abs(hash(prefix)) % 2**32)
    for i in range(n):
        e = rng.standard_normal((clips, reg.dim)).astype(np.float32)
        reg.enroll(f"{prefix}{i:04d}", list(e / np.linalg.norm(e, axis=1, keepdims=True)))
        print(i, flush=True)
""")


@pytest.mark.slow
def test_two_processes_enrolling_at_once_lose_nothing(encoder, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "r"), p, "50", "3"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for p in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    with SpeakerRegistry(tmp_path / "r", encoder=encoder) as r:
        assert len(r) == 100
        assert all(r.speaker(n).n_clips == 3 for n in r.names())
        assert len(r.index) == 100


@pytest.mark.slow
def test_kill_9_mid_enrollment_keeps_every_earlier_speaker(encoder, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "r"), "k", "100000", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = -1
    while done < 30:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-2000:]
        done = int(line)
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with SpeakerRegistry(tmp_path / "r", encoder=encoder) as r:
        names = r.names()
        assert len(names) >= 31
        assert names == [f"k{i:04d}" for i in range(len(names))]   # a prefix: nothing lost, nothing partial
        assert all(r.speaker(n).n_clips == 200 for n in names)
        assert len(r.index) == len(names)
