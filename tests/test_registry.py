import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from asit_embed import AudioError, SpeakerEncoder
from enroll import (EncoderMismatchError, IndexConfig, Match, RegistryError, Speaker, SpeakerRegistry,
                    UnknownSpeakerError)
from enroll.index import TemplateIndex
from enroll.store import Store

STRANGER = "9611"  # the bundled speaker the real-clip tests never enroll

# The index, the store and the decisions are checked against exhaustive cosine search, so most registries
# here score with cosine (as_norm=False); AS-norm, the shipped checkpoint's default, is checked against its
# own exhaustive search below and in test_scoring.py.


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def reg(encoder, tmp_path):
    r = SpeakerRegistry(tmp_path / "reg", encoder=encoder, as_norm=False, threshold=0.5)
    yield r
    r.close()


@pytest.fixture(scope="module")
def by_speaker(clip_rows):
    """speaker -> clip paths, in manifest (path) order."""
    speakers = dict.fromkeys(r["speaker"] for r in clip_rows)
    return {s: [r["path"] for r in clip_rows if r["speaker"] == s] for s in speakers}


def snapshot(r):
    """Everything a change would move: each speaker's clip count and template, and the store's version."""
    names, templates = r.templates()
    return {n: (r.speaker(n).n_clips, t.tobytes()) for n, t in zip(names, templates)}, r.stats()["version"]


def template(r, name):
    names, templates = r.templates()
    return templates[names.index(name)]


def assert_brute_force(r, queries, k=5):
    """``r.identify_embeddings`` equals exhaustive numpy search over the registry's templates (the truth)."""
    names, templates = r.templates()
    scores = queries @ templates.T
    for q_scores, matches in zip(scores, r.identify_embeddings(queries, k=k)):
        order = np.argsort(-q_scores)[:k]
        assert [m.name for m in matches] == [names[j] for j in order]
        assert np.allclose([m.score for m in matches], q_scores[order], atol=1e-5)
    stats = r.stats()
    assert stats["index"]["size"] == stats["speakers"] == len(names)


def near(r, names, rng, noise=0.05):
    """Queries close to the templates of ``names``, one each."""
    x = np.stack([template(r, n) for n in names]) + noise * unit(rng, len(names), r.dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def header(path):
    return json.loads(path.read_bytes().partition(b"\n")[0])


def never_rebuilt(*args):
    pytest.fail("the index was rebuilt instead of updated in place")


def test_top_k_equals_brute_force_cosine(reg):
    rng = np.random.default_rng(0)
    d = reg.dim
    clips = {f"s{i:02d}": unit(rng, 3, d) for i in range(40)}
    for name, embs in clips.items():
        reg.enroll_embeddings(name, embs)
    templates = np.stack([v.mean(0) / np.linalg.norm(v.mean(0)) for v in clips.values()])
    names = list(clips)
    queries = unit(rng, 25, d)
    results = reg.identify_embeddings(queries, k=7)
    for q, matches in zip(queries, results):
        scores = templates @ q
        order = np.argsort(-scores)[:7]
        assert [m.name for m in matches] == [names[i] for i in order]
        assert np.allclose([m.score for m in matches], scores[order], atol=1e-5)
    # random directions score far below 0.5 against everyone; a speaker's own template scores 1
    assert not any(m.accepted for row in results for m in row)
    own = reg.identify_embeddings(templates[:5], k=2)
    assert [row[0].name for row in own] == names[:5]
    assert all(row[0].accepted and not row[1].accepted for row in own)


def test_top_k_equals_brute_force_as_norm(encoder, tmp_path):
    """The default scoring of the shipped checkpoint: the index proposes candidates by cosine and AS-norm
    re-scores them; with fewer speakers than the pool, that is exhaustive AS-norm search."""
    rng = np.random.default_rng(3)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder) as reg:
        assert reg.scoring == encoder.metadata.get("scoring", "cosine") == "as-norm"
        clips = {f"s{i:02d}": unit(rng, 3, reg.dim) for i in range(40)}
        for name, embs in clips.items():
            reg.enroll_embeddings(name, embs)
        names, templates = reg.templates()
        queries = np.concatenate([unit(rng, 15, reg.dim), near(reg, names[:10], rng)])
        truth = reg.as_norm.score(queries @ templates.T, queries, templates)
        for q_scores, matches in zip(truth, reg.identify_embeddings(queries, k=7)):
            order = np.argsort(-q_scores)[:7]
            assert [m.name for m in matches] == [names[j] for j in order]
            assert np.allclose([m.score for m in matches], q_scores[order], atol=1e-4)
            assert all(m.accepted == (m.score >= reg.threshold) for m in matches)
        assert [row[0].name for row in reg.identify_embeddings(queries[15:], k=1)] == names[:10]


def test_real_clips_identify_and_unknown(encoder, by_speaker):
    """Five bundled speakers enrolled from three clips each. At the shipped operating point (1 % of strangers
    accepted): a held-out clip of each ranks its speaker first, every accept decision is score >= the
    threshold for five speakers, and every clip of the sixth, never enrolled, is unknown. At a fixed 0.5,
    the held-out clips are accepted as well."""
    enrolled = sorted(s for s in by_speaker if s != STRANGER)
    assert len(enrolled) == 5
    for threshold, as_norm in ((None, None), (None, False), (0.5, False)):
        reg = SpeakerRegistry(encoder=encoder, threshold=threshold, as_norm=as_norm)
        assert reg.enroll_many({s: by_speaker[s][:3] for s in enrolled}) == 5
        if threshold is None:
            assert reg.threshold == pytest.approx(reg.calibration.identify_threshold(5, 0.01))
        for s in enrolled:
            matches = reg.identify(by_speaker[s][3], k=5)
            assert len(matches) == 5 and matches[0].name == s, matches
            assert all(m.accepted == (m.score >= reg.threshold) for m in matches)
            assert threshold is None or matches[0].accepted
            assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
        strangers = reg.identify_embeddings(encoder.embed_batch(by_speaker[STRANGER]), k=5)
        assert len(strangers) == len(by_speaker[STRANGER]) == 6
        for matches in strangers:
            assert all(m.accepted == (m.score >= reg.threshold) for m in matches)
            assert threshold is not None or not any(m.accepted for m in matches), matches
        claimed = strangers[-1][0].name  # the enrolled speaker the stranger sounds most like
        impostor = reg.verify(claimed, by_speaker[STRANGER][-1])
        assert impostor.name == claimed and impostor.accepted == (impostor.score >= reg.verify_threshold)
        assert threshold is not None or not impostor.accepted
        assert impostor.score == pytest.approx(strangers[-1][0].score, abs=1e-4)
        genuine = reg.verify(enrolled[0], by_speaker[enrolled[0]][4])
        assert genuine.name == enrolled[0] and genuine.accepted == (genuine.score >= reg.verify_threshold)


def test_waveforms_need_their_sample_rate(encoder, by_speaker):
    """An array is a waveform only with its sample_rate: without it every audio method refuses it and
    names both fixes; with it, any rate is resampled to the model's."""
    reg = SpeakerRegistry(encoder=encoder, as_norm=False)
    wave, rate = sf.read(by_speaker["0036"][0], dtype="float32")
    for call, instead in [(lambda: reg.enroll("ada", wave), "enroll_embeddings()"),
                          (lambda: reg.enroll("ada", [by_speaker["0036"][1], wave]), "enroll_embeddings()"),
                          (lambda: reg.enroll_many({"ada": [wave]}), "enroll_many(..., embeddings=True)"),
                          (lambda: reg.identify(torch.from_numpy(wave)), "identify_embeddings()"),
                          (lambda: reg.enroll("ada", np.ones(reg.dim, np.float32)), "enroll_embeddings()")]:
        with pytest.raises(TypeError, match="sample_rate=") as err:
            call()
        assert instead in str(err.value)
    assert len(reg) == 0
    with pytest.raises(TypeError, match="embeddings=True takes none"):
        reg.enroll_many({"ada": np.eye(reg.dim)[:1]}, sample_rate=16000, embeddings=True)
    assert reg.enroll("ada", wave[::2], sample_rate=rate // 2).n_clips == 1  # the same speech at half the rate
    assert reg.enroll("ada", [by_speaker["0036"][1], wave], sample_rate=rate).n_clips == 3  # a path has its own
    reg.enroll("bob", by_speaker["1027"][:1])
    with pytest.raises(TypeError, match="sample_rate=") as err:
        reg.verify("ada", wave)
    assert "identify_embeddings()" in str(err.value)
    assert reg.identify(wave, k=1, sample_rate=rate)[0].name == "ada"
    with pytest.raises(TypeError, match="takes one clip"):
        reg.identify(by_speaker["0036"][:2])


def test_enroll_embeddings_checks_and_normalises(reg):
    rng = np.random.default_rng(13)
    x = unit(rng, 3, reg.dim)
    spk = reg.enroll_embeddings("ada", 5 * x)  # any scale: each row is normalised
    assert (spk.name, spk.n_clips, spk.seconds) == ("ada", 3, 0.0)
    mean = x.mean(0)
    assert np.allclose(template(reg, "ada"), mean / np.linalg.norm(mean), atol=1e-6)
    assert reg.enroll_embeddings("ada", torch.from_numpy(x[0])).n_clips == 4  # one (dim,) vector, a tensor
    assert reg.enroll_embeddings("ada", list(x[:2]), replace=True).n_clips == 2
    before = snapshot(reg)
    bad_nan = x.copy()
    bad_nan[1, 3] = np.nan
    for vectors, exc, message in [(np.ones(7, np.float32), ValueError, rf"shape \({reg.dim},\)"),
                                  (np.ones((2, 3, reg.dim)), ValueError, "shape"),
                                  (np.zeros(reg.dim, np.float32), ValueError, "row 0 .*zero norm"),
                                  (bad_nan, ValueError, "row 1 has NaN"),
                                  (np.full(reg.dim, np.inf), ValueError, "NaN/Inf"),
                                  (np.zeros((0, reg.dim)), ValueError, "no embeddings given"),
                                  ([], ValueError, "no embeddings given"),
                                  (["a.wav", "b.wav"], TypeError, "numeric arrays"),
                                  (np.ones(reg.dim, bool), TypeError, "numeric arrays")]:
        for name in ("ada", "new"):
            with pytest.raises(exc, match=message):
                reg.enroll_embeddings(name, vectors)
    assert snapshot(reg) == before
    with pytest.raises(ValueError, match="speaker name"):
        reg.enroll_embeddings(" ada", x)
    assert reg.identify_embeddings(np.zeros((0, reg.dim))) == []
    with pytest.raises(ValueError, match="query embeddings: row 0"):
        reg.identify_embeddings(np.zeros(reg.dim))
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            reg.identify_embeddings(x, k=k)


def test_to_dict_is_the_json_of_the_cli_and_http_api():
    m = Match("ada", 0.123456789, True)
    assert m.to_dict() == {"name": "ada", "score": 0.1235, "accepted": True}
    assert list(Match("bo", np.float32(0.5), np.bool_(False)).to_dict().values()) == ["bo", 0.5, False]
    s = Speaker("ada", 3, 9.87654, 1700000000.5, 1700000001.25)
    assert s.to_dict() == {"name": "ada", "n_clips": 3, "seconds": 9.88, "created": 1700000000.5,
                           "updated": 1700000001.25}
    assert json.loads(json.dumps([m.to_dict(), s.to_dict()])) == [m.to_dict(), s.to_dict()]


def test_operating_settings_are_attributes_that_take_effect(encoder):
    reg = SpeakerRegistry(encoder=encoder, as_norm=False, far=0.02, threshold=0.4, adapt=False)
    assert (reg.far, reg.fpir, reg.fixed_threshold, reg.adapt) == (0.02, 0.01, 0.4, False)
    reg.enroll_embeddings("ada", np.eye(encoder.dim, dtype=np.float32)[0])
    reg.fixed_threshold = 0.9
    assert reg.threshold == reg.verify_threshold == 0.9
    reg.fixed_threshold, reg.far, reg.fpir = None, 0.05, 0.05
    points = reg.operating_points()
    assert (points["far"], points["fpir"], points["calibration"]["kind"]) == (0.05, 0.05, "shipped")
    assert points["verify_threshold"] < 0.9


def test_stats_and_templates_read_the_registry(encoder, tmp_path):
    rng = np.random.default_rng(14)
    d = encoder.dim
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5) as r:
        empty = r.stats()
        assert empty["speakers"] == 0 and empty["index"]["size"] == 0 and empty["index"]["kind"] == "flat"
        names, templates = r.templates()
        assert names == [] and templates.shape == (0, d)
        clips = {"cy": unit(rng, 2, d), "ab": unit(rng, 3, d), "bo": unit(rng, 1, d)}
        r.enroll_many(clips, embeddings=True)
        names, templates = r.templates()
        assert names == ["ab", "bo", "cy"] == r.names() and templates.shape == (3, d)
        for n, t in zip(names, templates):
            mean = clips[n].mean(0)
            assert np.allclose(t, mean / np.linalg.norm(mean), atol=1e-6)
        stats = r.stats()
        assert stats["speakers"] == 3 and stats["index"] == {"kind": "flat", "size": 3, "version": stats["version"],
                                                             "trained_at": 0}
        r.rename("bo", "bob")
        r.remove("cy")
        after = r.stats()
        assert after["version"] == stats["version"] + 2 and after["speakers"] == after["index"]["size"] == 2
        assert r.templates()[0] == ["ab", "bob"]


def test_deprecated_names_warn_and_still_work(encoder, by_speaker):
    reg = SpeakerRegistry(encoder=encoder, as_norm=False, threshold=0.5)
    rng = np.random.default_rng(15)
    reg.enroll_many({"ada": by_speaker["0036"][:1], "bob": by_speaker["1027"][:1]})
    queries = unit(rng, 4, reg.dim)
    with pytest.warns(DeprecationWarning, match=r"rank\(\) is deprecated.*identify_embeddings"):
        assert reg.rank(queries, k=2) == reg.identify_embeddings(queries, k=2)
    probes = [by_speaker["0036"][4], by_speaker["1027"][4]]
    with pytest.warns(DeprecationWarning, match=r"identify_batch\(\) is deprecated"):
        batch = reg.identify_batch(probes, k=2)
    assert [row[0].name for row in batch] == ["ada", "bob"]
    for row, probe in zip(batch, probes):
        one = reg.identify(probe, k=2)
        assert [m.name for m in row] == [m.name for m in one]
        assert [m.score for m in row] == pytest.approx([m.score for m in one], abs=1e-5)
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="sample_rate="):
        reg.identify_batch([queries[0]])  # an embedding is no longer guessed from its shape
    with pytest.warns(DeprecationWarning, match="store is deprecated"):
        assert reg.store.count() == 2
    with pytest.warns(DeprecationWarning, match="index is deprecated"):
        assert len(reg.index) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the current API warns about nothing
        reg.identify(probes[0])
        reg.stats()
        reg.templates()


def test_persistence_round_trip(encoder, tmp_path):
    rng = np.random.default_rng(1)
    queries = unit(rng, 5, encoder.dim)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.3) as r:
        for i in range(10):
            r.enroll_embeddings(f"p{i}", unit(rng, 2, encoder.dim))
        before = r.identify_embeddings(queries, k=3)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.3) as r:
        assert len(r) == 10 and "p3" in r and "nobody" not in r
        assert r.identify_embeddings(queries, k=3) == before


@pytest.mark.parametrize("damage", ["delete", "corrupt", "stale"])
def test_index_rebuilt_when_missing_corrupt_or_stale(encoder, tmp_path, damage):
    rng = np.random.default_rng(2)
    q = unit(rng, 3, encoder.dim)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False) as r:
        for i in range(6):
            r.enroll_embeddings(f"p{i}", unit(rng, 2, encoder.dim))
        before = r.identify_embeddings(q, k=6)
        index_file = tmp_path / "r" / "index.faiss"
        saved = index_file.read_bytes()
        r.remove("p5")
        after_remove = r.identify_embeddings(q, k=6)
    if damage == "delete":
        index_file.unlink()
    elif damage == "corrupt":
        index_file.write_bytes(b"garbage" * 10)
    else:  # an index file from an older state (still lists p5)
        index_file.write_bytes(saved)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False) as r:
        assert r.identify_embeddings(q, k=6) == after_remove != before
        assert all(m.name != "p5" for row in r.identify_embeddings(q, k=6) for m in row)


def test_encoder_mismatch_names_both_fingerprints(encoder, tmp_path):
    from asit_embed.model import ASiTEncoder, asit_tiny

    SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False).close()
    torch.manual_seed(1)
    other = SpeakerEncoder.from_model(ASiTEncoder(asit_tiny(depth=1)))
    with pytest.raises(EncoderMismatchError) as err:
        SpeakerRegistry(tmp_path / "r", encoder=other)
    assert encoder.fingerprint in str(err.value) and other.fingerprint in str(err.value)


def test_remove_rename_reenroll(reg, by_speaker):
    rng = np.random.default_rng(3)
    a, b = unit(rng, 2, reg.dim)
    reg.enroll_embeddings("ann", a)
    reg.enroll_embeddings("ann", b)  # adds a clip
    assert reg.speaker("ann").n_clips == 2
    reg.enroll_embeddings("ann", b, replace=True)
    assert reg.speaker("ann").n_clips == 1
    assert reg.identify_embeddings(b, k=1)[0][0].score == pytest.approx(1.0, abs=1e-5)
    reg.rename("ann", "anna")
    assert reg.names() == ["anna"] and reg.identify_embeddings(b, k=1)[0][0].name == "anna"
    reg.enroll_embeddings("bo", a)
    with pytest.raises(RegistryError, match="already enrolled"):
        reg.rename("bo", "anna")
    reg.remove("anna")
    assert reg.names() == ["bo"] and reg.identify_embeddings(b, k=5)[0][0].name == "bo"
    clip = by_speaker["0036"][0]
    for call in (lambda: reg.remove("anna"), lambda: reg.rename("zed", "x"), lambda: reg.verify("zed", clip),
                 lambda: reg.speaker("zed")):
        with pytest.raises(UnknownSpeakerError, match="zed|anna"):
            call()
    reg.enroll_embeddings("anna", b)
    assert sorted(reg.names()) == ["anna", "bo"]


def test_threshold_accepts_and_rejects(encoder):
    e = np.eye(encoder.dim, dtype=np.float32)
    close = (e[0] + 0.3 * e[1]) / np.linalg.norm(e[0] + 0.3 * e[1])  # cosine 0.958 with e0
    for threshold, accepted in [(0.9, True), (0.99, False)]:
        r = SpeakerRegistry(encoder=encoder, as_norm=False, threshold=threshold)
        r.enroll_embeddings("x", e[0])
        assert r.identify_embeddings(close, k=1)[0][0].accepted is accepted
    r = SpeakerRegistry(encoder=encoder, as_norm=False)
    assert r.threshold == pytest.approx(r.calibration.identify_threshold(len(r), 0.01))


def test_bad_inputs_leave_the_registry_unchanged(reg, clip_rows, tmp_path):
    rng = np.random.default_rng(4)
    reg.enroll_embeddings("keep", unit(rng, 2, reg.dim))
    before = snapshot(reg)
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
        (TypeError, [good, np.ones(16000, np.float32)]),   # a waveform without its rate
        (TypeError, [np.ones(reg.dim, np.float32)]),       # an embedding: enroll_embeddings() takes those
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
    assert snapshot(reg) == before


def test_enroll_many_writes_all_or_nothing(reg):
    rng = np.random.default_rng(6)
    clips = {f"m{i}": unit(rng, 2, reg.dim) for i in range(5)}
    assert reg.enroll_many(clips, embeddings=True) == 5
    assert reg.enroll_many([("m0", clips["m1"][0]), ("new", unit(rng, 2, reg.dim))], embeddings=True,
                           allow_duplicates=True) == 2
    assert reg.speaker("m0").n_clips == 3 and reg.speaker("new").n_clips == 2  # m0 gained a clip
    mean = np.concatenate([clips["m0"], clips["m1"][:1]]).mean(0)
    assert np.allclose(template(reg, "m0"), mean / np.linalg.norm(mean), atol=1e-6)
    reg.enroll_many({"m0": clips["m3"][:1]}, replace=True, embeddings=True, allow_duplicates=True)
    assert reg.speaker("m0").n_clips == 1
    before = snapshot(reg)
    for bad in ([("a", clips["m4"]), ("a", clips["m4"])],             # the same name twice
                {"b": clips["m4"], "c": [np.zeros(reg.dim, np.float32)]},   # one bad clip
                {"d": clips["m4"], " e": clips["m4"]},                 # one bad name
                {"f": []}):
        with pytest.raises(ValueError):
            reg.enroll_many(bad, embeddings=True)
    with pytest.raises(TypeError, match="sample_rate="):
        reg.enroll_many({"g": clips["m4"]})  # embeddings, not said so
    assert snapshot(reg) == before
    assert reg.enroll_many({}) == 0
    assert_brute_force(reg, unit(rng, 10, reg.dim))


@pytest.mark.parametrize("config", [IndexConfig(kind="flat"),
                                    IndexConfig(kind="ivf", nprobe=10_000, rerank=10_000)],  # IVF probing all
                         ids=["flat", "ivf-exhaustive"])
def test_incremental_updates_stay_equal_to_brute_force(encoder, tmp_path, config, monkeypatch):
    rng = np.random.default_rng(7)
    d = encoder.dim
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5, index=config) as r:
        r.enroll_many({"fixed": unit(rng, 2, d)} | {f"s{i:04d}": unit(rng, 2, d) for i in range(1200)},
                      embeddings=True)
        assert r.stats()["index"]["kind"] == config.kind
        monkeypatch.setattr(TemplateIndex, "rebuild", never_rebuilt)    # from here on, updated in place
        queries = unit(rng, 20, d)
        for step in range(24):
            name = f"s{rng.integers(1200):04d}"
            if step % 4 == 0:
                r.enroll_embeddings(f"new{step}", unit(rng, 3, d))
            elif step % 4 == 1 and name in r:
                r.enroll_embeddings(name, unit(rng, 1, d))                # gains a clip: template moves
            elif step % 4 == 2 and name in r:
                r.enroll_embeddings(name, unit(rng, 1, d), replace=True)
            elif name in r:
                r.remove(name)
            r.rename(*(("fixed", "moved") if "fixed" in r else ("moved", "fixed")))
            touched = [n for n in (name, f"new{step - step % 4}", "fixed", "moved") if n in r]
            assert_brute_force(r, np.concatenate([queries, near(r, touched, rng)]))


def test_another_registry_object_applies_only_the_changes(encoder, tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    d = encoder.dim
    a = SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5)
    a.enroll_many({f"s{i:03d}": unit(rng, 2, d) for i in range(100)}, embeddings=True)
    b = SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5)
    ids = Store(str(tmp_path / "r" / "registry.sqlite"))  # the file's speaker ids, read beside the registries
    changed = [ids.speaker_id("s001"), ids.speaker_id("s002")]
    a.enroll_embeddings("s001", unit(rng, 1, d))
    a.remove("s002")
    a.enroll_embeddings("s100", unit(rng, 2, d))
    a.rename("s003", "third")
    changed.append(ids.speaker_id("s100"))
    ids.close()
    queries = np.concatenate([unit(rng, 10, d), near(a, ["s001", "s100", "third"], rng)])
    reads = []
    real = Store.templates
    monkeypatch.setattr(Store, "templates", lambda self, ids=None: reads.append(ids) or real(self, ids))
    monkeypatch.setattr(TemplateIndex, "rebuild", never_rebuilt)
    returned = {m.name for row in b.identify_embeddings(queries, k=100) for m in row}
    assert [r if r is None else r.tolist() for r in reads] == [changed]   # re-read only what changed
    assert "s002" not in returned and {"s001", "s100", "third"} <= returned
    assert_brute_force(b, queries)
    a.close()
    b.close()


def test_large_registry_switches_to_ivf_and_removal_works(encoder, tmp_path):
    rng = np.random.default_rng(9)
    d = encoder.dim
    config = IndexConfig(exact_below=1000)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5, index=config) as r:
        r.enroll_many({f"s{i:04d}": unit(rng, 2, d) for i in range(900)}, embeddings=True)
        assert r.stats()["index"]["kind"] == "flat"
        r.enroll_many({f"s{i:04d}": unit(rng, 2, d) for i in range(900, 1100)}, embeddings=True)
        index = r.stats()["index"]
        assert index["kind"] == "ivf" and index["trained_at"] == 1100 and index["size"] == 1100
        assert 1 <= index["nprobe"] <= index["nlist"]
        names = r.names()
        gone = names[::20]
        for name in gone:
            r.remove(name)
        kept = [n for n in names if n not in set(gone)]
        found = [row[0].name for row in r.identify_embeddings(near(r, kept, rng), k=5)]
        assert np.mean([f == n for f, n in zip(found, kept)]) >= 0.99
        removed = near(r, kept[:1], rng)  # any template will do; the removed ones must never come back
        returned = {m.name for row in r.identify_embeddings(np.concatenate([removed, unit(rng, 200, d)]), k=50)
                    for m in row}
        stats = r.stats()
        assert not returned & set(gone) and stats["index"]["size"] == stats["speakers"] == 1100 - len(gone)
        q = unit(rng, 5, d)
        for qv, row in zip(q, r.identify_embeddings(q, k=5)):  # scores are exact cosines, whatever the index
            assert [m.score for m in row] == pytest.approx([float(template(r, m.name) @ qv) for m in row], abs=1e-5)
        r.enroll_many({f"t{i:04d}": unit(rng, 2, d) for i in range(1200)}, embeddings=True)  # past 2x its size
        index = r.stats()["index"]
        assert index["kind"] == "ivf" and index["trained_at"] == len(r) == 2245
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5, index="flat") as r:
        index = r.stats()["index"]
        assert index["kind"] == "flat" and index["size"] == 2245           # the saved IVF index is not used
        assert_brute_force(r, unit(rng, 10, d))
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5, index=config) as r:
        assert r.stats()["index"]["kind"] == "ivf"
        for name in r.names()[:len(r) - 499]:                                 # below half the threshold
            r.remove(name)
        assert r.stats()["index"]["kind"] == "flat"
        assert_brute_force(r, unit(rng, 10, d))


def test_index_file_is_written_lazily_and_on_close(encoder, tmp_path, monkeypatch):
    rng = np.random.default_rng(10)
    d = encoder.dim
    index_file = tmp_path / "r" / "index.faiss"
    config = IndexConfig(flush_fraction=0.25)
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5, index=config) as r:
        r.enroll_many({f"s{i:02d}": unit(rng, 2, d) for i in range(20)}, embeddings=True)
        assert header(index_file)["version"] == r.stats()["version"]     # a rebuild is written at once
        lag = []
        for i in range(20):
            r.enroll_embeddings(f"n{i:02d}", unit(rng, 2, d))
            lag.append(r.stats()["version"] - header(index_file)["version"])
        assert max(lag) >= 5 and 0 in lag       # not rewritten per change, but once enough changes piled up
        queries = unit(rng, 8, d)
        before = r.identify_embeddings(queries, k=5)
        final = r.stats()["version"]
    assert header(index_file)["version"] == final
    monkeypatch.setattr(TemplateIndex, "rebuild", lambda *a: pytest.fail("a current index file was rebuilt"))
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5, index=config) as r:
        assert r.identify_embeddings(queries, k=5) == before


def test_changes_missed_by_the_index_file_are_applied_on_open(encoder, tmp_path, monkeypatch):
    """A process that dies without writing its index leaves an older file: the next open catches up."""
    rng = np.random.default_rng(11)
    d = encoder.dim
    config = IndexConfig(flush_fraction=1.0)
    r = SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5, index=config)
    r.enroll_many({f"s{i:02d}": unit(rng, 2, d) for i in range(30)}, embeddings=True)
    saved = header(tmp_path / "r" / "index.faiss")["version"]
    r.enroll_embeddings("late", unit(rng, 2, d))
    r.remove("s03")
    r.enroll_embeddings("s04", unit(rng, 1, d), replace=True)
    del r                                                              # no close(): the file stays behind
    assert header(tmp_path / "r" / "index.faiss")["version"] == saved
    monkeypatch.setattr(TemplateIndex, "rebuild", lambda *a: pytest.fail("rebuilt instead of catching up"))
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False, threshold=0.5, index=config) as r:
        assert "late" in r and "s03" not in r
        assert_brute_force(r, np.concatenate([unit(rng, 10, d), near(r, ["late", "s04"], rng)]))


def test_index_file_of_another_registry_or_before_the_change_record_is_rebuilt(encoder, tmp_path):
    rng = np.random.default_rng(12)
    d = encoder.dim
    for name in ("a", "b"):
        with SpeakerRegistry(tmp_path / name, encoder=encoder, as_norm=False) as r:
            r.enroll_many({f"{name}{i}": unit(rng, 2, d) for i in range(8)}, embeddings=True)
    shutil.copy(tmp_path / "a" / "index.faiss", tmp_path / "b" / "index.faiss")   # same encoder and version
    with SpeakerRegistry(tmp_path / "b", encoder=encoder, as_norm=False) as r:
        assert set(r.names()) == {f"b{i}" for i in range(8)}
        assert_brute_force(r, unit(rng, 5, d))
    # a store written before it recorded changes: an older index file cannot be caught up, only rebuilt
    old = (tmp_path / "b" / "index.faiss").read_bytes()
    with SpeakerRegistry(tmp_path / "b", encoder=encoder, as_norm=False) as r:
        r.remove("b1")
        r.enroll_embeddings("b9", unit(rng, 2, d))
        version = r.stats()["version"]
    (tmp_path / "b" / "index.faiss").write_bytes(old)
    with sqlite3.connect(tmp_path / "b" / "registry.sqlite") as db:
        db.execute("DELETE FROM changes")
        db.execute("UPDATE meta SET value = ? WHERE key = 'changes_since'", (str(version),))
    with SpeakerRegistry(tmp_path / "b", encoder=encoder, as_norm=False) as r:
        assert "b1" not in {m.name for row in r.identify_embeddings(unit(rng, 20, d), k=8) for m in row}
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
        reg.enroll_embeddings(f"{prefix}{i:04d}", e)
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
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False) as r:
        assert len(r) == 100
        assert all(r.speaker(n).n_clips == 3 for n in r.names())
        assert r.stats()["index"]["size"] == 100


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
    with SpeakerRegistry(tmp_path / "r", encoder=encoder, as_norm=False) as r:
        names = r.names()
        assert len(names) >= 31
        assert names == [f"k{i:04d}" for i in range(len(names))]   # a prefix: nothing lost, nothing partial
        assert all(r.speaker(n).n_clips == 200 for n in names)
        assert r.stats()["index"]["size"] == len(names)
