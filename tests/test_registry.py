import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from asit_embed import AudioError, SpeakerEncoder
from enroll import EncoderMismatchError, IndexConfig, RegistryError, SpeakerRegistry, UnknownSpeakerError
from enroll.index import TemplateIndex


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


def assert_brute_force(r, queries, k=5):
    """``r.rank`` equals exhaustive numpy search over the templates in the store (the truth)."""
    ids, templates = r.store.templates()
    names = dict(r.store.db.execute("SELECT id, name FROM speakers"))
    scores = queries @ templates.T
    for q_scores, matches in zip(scores, r.rank(queries, k=k)):
        order = np.argsort(-q_scores)[:k]
        assert [m.name for m in matches] == [names[ids[j]] for j in order]
        assert np.allclose([m.score for m in matches], q_scores[order], atol=1e-5)
    assert len(r.index) == len(r)


def near(r, names, rng, noise=0.05):
    """Queries close to the templates of ``names``, one each."""
    x = np.stack([r.store.speaker_info(n)["template"] for n in names]) + noise * unit(rng, len(names), r.dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def header(path):
    return json.loads(path.read_bytes().partition(b"\n")[0])


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


def test_enroll_many_writes_all_or_nothing(reg):
    rng = np.random.default_rng(6)
    clips = {f"m{i}": unit(rng, 2, reg.dim) for i in range(5)}
    assert reg.enroll_many(clips) == 5
    assert reg.enroll_many([("m0", [clips["m1"][0]]), ("new", unit(rng, 2, reg.dim))]) == 2  # m0 gains a clip
    assert reg.speaker("m0").n_clips == 3 and reg.speaker("new").n_clips == 2
    mean = np.concatenate([clips["m0"], clips["m1"][:1]]).mean(0)
    assert np.allclose(reg.store.speaker_info("m0")["template"], mean / np.linalg.norm(mean), atol=1e-6)
    reg.enroll_many({"m0": [clips["m3"][0]]}, replace=True)
    assert reg.speaker("m0").n_clips == 1
    before, version = snapshot(reg), reg.store.version()
    for bad in ([("a", clips["m4"]), ("a", clips["m4"])],             # the same name twice
                {"b": clips["m4"], "c": [np.zeros(reg.dim, np.float32)]},   # one bad clip
                {"d": clips["m4"], " e": clips["m4"]},                 # one bad name
                {"f": []}):
        with pytest.raises(ValueError):
            reg.enroll_many(bad)
    assert snapshot(reg) == before and reg.store.version() == version
    assert reg.enroll_many({}) == 0
    assert_brute_force(reg, unit(rng, 10, reg.dim))


@pytest.mark.parametrize("config", [IndexConfig(kind="flat"),
                                    IndexConfig(kind="ivf", nprobe=10_000, rerank=10_000)],  # IVF probing all
                         ids=["flat", "ivf-exhaustive"])
def test_incremental_updates_stay_equal_to_brute_force(encoder, tmp_path, config):
    rng = np.random.default_rng(7)
    d = encoder.dim
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.5, index=config) as r:
        r.enroll_many({"fixed": unit(rng, 2, d)} | {f"s{i:04d}": unit(rng, 2, d) for i in range(1200)})
        built = r.index.index
        assert r.index.kind == config.kind
        queries = unit(rng, 20, d)
        for step in range(24):
            name = f"s{rng.integers(1200):04d}"
            if step % 4 == 0:
                r.enroll(f"new{step}", list(unit(rng, 3, d)))
            elif step % 4 == 1 and name in r:
                r.enroll(name, [unit(rng, 1, d)[0]])                     # gains a clip: template moves
            elif step % 4 == 2 and name in r:
                r.enroll(name, [unit(rng, 1, d)[0]], replace=True)
            elif name in r:
                r.remove(name)
            r.rename(*(("fixed", "moved") if "fixed" in r else ("moved", "fixed")))
            touched = [n for n in (name, f"new{step - step % 4}", "fixed", "moved") if n in r]
            assert_brute_force(r, np.concatenate([queries, near(r, touched, rng)]))
        assert r.index.index is built                                    # updated in place, never rebuilt
        assert r.index.version == r.store.version()


def test_another_registry_object_applies_only_the_changes(encoder, tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    d = encoder.dim
    a = SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.5)
    a.enroll_many({f"s{i:03d}": unit(rng, 2, d) for i in range(100)})
    b = SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.5)
    built = b.index.index
    reads = []
    real = b.store.templates
    monkeypatch.setattr(b.store, "templates", lambda ids=None: reads.append(ids) or real(ids))
    changed = [a.store.speaker_id("s001"), a.store.speaker_id("s002")]
    a.enroll("s001", [unit(rng, 1, d)[0]])
    a.remove("s002")
    a.enroll("s100", list(unit(rng, 2, d)))
    a.rename("s003", "third")
    changed.append(a.store.speaker_id("s100"))
    queries = np.concatenate([unit(rng, 10, d), near(a, ["s001", "s100", "third"], rng)])
    returned = {m.name for row in b.rank(queries, k=100) for m in row}
    assert [r if r is None else r.tolist() for r in reads] == [changed]   # re-read only what changed
    assert b.index.index is built and "s002" not in returned and {"s001", "s100", "third"} <= returned
    assert_brute_force(b, queries)
    a.close()
    b.close()


def test_large_registry_switches_to_ivf_and_removal_works(encoder, tmp_path):
    rng = np.random.default_rng(9)
    d = encoder.dim
    config = IndexConfig(exact_below=1000)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.5, index=config) as r:
        r.enroll_many({f"s{i:04d}": unit(rng, 2, d) for i in range(900)})
        assert r.index.kind == "flat"
        r.enroll_many({f"s{i:04d}": unit(rng, 2, d) for i in range(900, 1100)})
        assert r.index.kind == "ivf" and r.index.trained_n == 1100 and len(r.index) == 1100
        names = r.names()
        gone = names[::20]
        for name in gone:
            r.remove(name)
        kept = [n for n in names if n not in set(gone)]
        found = [row[0].name for row in r.rank(near(r, kept, rng), k=5)]
        assert np.mean([f == n for f, n in zip(found, kept)]) >= 0.99
        removed = near(r, kept[:1], rng)  # any template will do; the removed ones must never come back
        returned = {m.name for row in r.rank(np.concatenate([removed, unit(rng, 200, d)]), k=50) for m in row}
        assert not returned & set(gone) and len(r.index) == len(r) == 1100 - len(gone)
        q = unit(rng, 5, d)
        for qv, row in zip(q, r.rank(q, k=5)):  # scores are exact cosines, whatever the index
            assert [m.score for m in row] == pytest.approx(
                [float(r.store.speaker_info(m.name)["template"] @ qv) for m in row], abs=1e-5)
        r.enroll_many({f"t{i:04d}": unit(rng, 2, d) for i in range(1200)})   # past 2x its training size
        assert r.index.kind == "ivf" and r.index.trained_n == len(r) == 2245
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.5, index="flat") as r:
        assert r.index.kind == "flat" and len(r.index) == 2245           # the saved IVF index is not used
        assert_brute_force(r, unit(rng, 10, d))
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.5, index=config) as r:
        assert r.index.kind == "ivf"
        for name in r.names()[:len(r) - 499]:                                 # below half the threshold
            r.remove(name)
        assert r.index.kind == "flat"
        assert_brute_force(r, unit(rng, 10, d))


def test_index_file_is_written_lazily_and_on_close(encoder, tmp_path, monkeypatch):
    rng = np.random.default_rng(10)
    d = encoder.dim
    index_file = tmp_path / "r" / "index.faiss"
    config = IndexConfig(flush_fraction=0.25)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.5, index=config) as r:
        r.enroll_many({f"s{i:02d}": unit(rng, 2, d) for i in range(20)})
        assert header(index_file)["version"] == r.store.version()       # a rebuild is written at once
        lag = []
        for i in range(20):
            r.enroll(f"n{i:02d}", list(unit(rng, 2, d)))
            lag.append(r.store.version() - header(index_file)["version"])
        assert max(lag) >= 5 and 0 in lag       # not rewritten per change, but once enough changes piled up
        queries = unit(rng, 8, d)
        before = r.rank(queries, k=5)
    assert header(index_file)["version"] == r.index.version
    monkeypatch.setattr(TemplateIndex, "rebuild", lambda *a: pytest.fail("a current index file was rebuilt"))
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.5, index=config) as r:
        assert r.rank(queries, k=5) == before


def test_changes_missed_by_the_index_file_are_applied_on_open(encoder, tmp_path, monkeypatch):
    """A process that dies without writing its index leaves an older file: the next open catches up."""
    rng = np.random.default_rng(11)
    d = encoder.dim
    config = IndexConfig(flush_fraction=1.0)
    r = SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.5, index=config)
    r.enroll_many({f"s{i:02d}": unit(rng, 2, d) for i in range(30)})
    saved = header(tmp_path / "r" / "index.faiss")["version"]
    r.enroll("late", list(unit(rng, 2, d)))
    r.remove("s03")
    r.enroll("s04", [unit(rng, 1, d)[0]], replace=True)
    r.store.close()                                                    # no close(): the file stays behind
    assert header(tmp_path / "r" / "index.faiss")["version"] == saved
    monkeypatch.setattr(TemplateIndex, "rebuild", lambda *a: pytest.fail("rebuilt instead of catching up"))
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, threshold=0.5, index=config) as r:
        assert "late" in r and "s03" not in r
        assert_brute_force(r, np.concatenate([unit(rng, 10, d), near(r, ["late", "s04"], rng)]))


def test_index_file_of_another_registry_or_before_the_change_record_is_rebuilt(encoder, tmp_path):
    rng = np.random.default_rng(12)
    d = encoder.dim
    for name in ("a", "b"):
        with SpeakerRegistry(tmp_path / name, encoder=encoder) as r:
            r.enroll_many({f"{name}{i}": unit(rng, 2, d) for i in range(8)})
    shutil.copy(tmp_path / "a" / "index.faiss", tmp_path / "b" / "index.faiss")   # same encoder and version
    with SpeakerRegistry(tmp_path / "b", encoder=encoder) as r:
        assert set(r.names()) == {f"b{i}" for i in range(8)}
        assert_brute_force(r, unit(rng, 5, d))
    # a store written before it recorded changes: an older index file cannot be caught up, only rebuilt
    old = (tmp_path / "b" / "index.faiss").read_bytes()
    with SpeakerRegistry(tmp_path / "b", encoder=encoder) as r:
        r.remove("b1")
        r.enroll("b9", list(unit(rng, 2, d)))
        version = r.store.version()
    (tmp_path / "b" / "index.faiss").write_bytes(old)
    with sqlite3.connect(tmp_path / "b" / "registry.sqlite") as db:
        db.execute("DELETE FROM changes")
        db.execute("UPDATE meta SET value = ? WHERE key = 'changes_since'", (str(version),))
    with SpeakerRegistry(tmp_path / "b", encoder=encoder) as r:
        assert "b1" not in {m.name for row in r.rank(unit(rng, 20, d), k=8) for m in row}
        assert_brute_force(r, near(r, ["b9"], rng))


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
