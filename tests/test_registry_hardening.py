"""A registry you can leave running: damaged, empty or foreign files, checksums, races, names, duplicates,
backup and check."""

import json
import multiprocessing
import os
import shutil
import sqlite3
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from enroll import DuplicateClipError, RegistryDatabaseError, RegistryError, SpeakerRegistry
from enroll.cli import main as enroll_main
from enroll.store import Store

ROOT = Path(__file__).resolve().parents[1]


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def filled(encoder, tmp_path):
    """A closed registry directory with 30 speakers of 2 synthetic clips each."""
    rng = np.random.default_rng(0)
    with SpeakerRegistry(tmp_path / "reg", encoder=encoder, threshold=0.5) as reg:
        reg.enroll_many({f"s{i:02d}": unit(rng, 2, reg.dim) for i in range(30)}, embeddings=True)
    return tmp_path / "reg"


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"definitely not a database" * 100, "cannot open registry database"),
])
def test_empty_or_garbage_database_file_is_an_error_not_a_new_registry(encoder, tmp_path, content, message):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "registry.sqlite").write_bytes(content)
    with pytest.raises(RegistryDatabaseError, match=message):
        SpeakerRegistry(tmp_path / "r", encoder=encoder)
    assert (tmp_path / "r" / "registry.sqlite").read_bytes() == content  # left as it was


def test_foreign_sqlite_file_is_refused(encoder, tmp_path):
    (tmp_path / "r").mkdir()
    db = sqlite3.connect(tmp_path / "r" / "registry.sqlite")
    db.execute("CREATE TABLE songs (title TEXT)")
    db.commit()
    db.close()
    with pytest.raises(RegistryDatabaseError, match="not a speaker registry.*songs"):
        SpeakerRegistry(tmp_path / "r", encoder=encoder)


def test_damaged_pages_are_caught_at_open_and_salvaged_by_check_repair(filled, encoder, capsys):
    path = filled / "registry.sqlite"
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    at = len(data) // page - 3  # a page of clip rows
    data[at * page:(at + 1) * page] = b"\xde\xad\xbe\xef" * (page // 4)
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryDatabaseError, match="damaged|malformed"):
        SpeakerRegistry(filled, encoder=encoder)
    args = ["--registry", str(filled)]
    assert enroll_main(args + ["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err  # one line, no traceback
    assert enroll_main(args + ["check", "--repair"]) == 0
    assert "salvaged" in capsys.readouterr().out
    assert list(filled.glob("registry.sqlite.damaged-*"))
    with SpeakerRegistry(filled, encoder=encoder) as reg:
        assert 0 < len(reg) <= 30 and reg.check()["ok"]


def test_index_with_a_flipped_vector_fails_its_checksum_and_is_rebuilt(filled, encoder):
    path = filled / "index.faiss"
    head, _, body = path.read_bytes().partition(b"\n")
    vectors = np.frombuffer(body[-30 * encoder.dim * 4:], dtype=np.float32).copy()
    vectors[:encoder.dim] *= -1  # the first speaker's vector, sign flipped: still a well-formed index
    path.write_bytes(head + b"\n" + body[:-30 * encoder.dim * 4] + vectors.tobytes())
    with SpeakerRegistry(filled, encoder=encoder, threshold=0.5) as reg:
        _, templates = reg.templates()
        assert reg.identify_embeddings(templates[0], k=1)[0][0].name == "s00"  # found again
        assert reg.check()["ok"]


def test_check_finds_and_repairs_a_stale_index_and_a_wrong_template(filled, encoder, capsys):
    db = sqlite3.connect(filled / "registry.sqlite")
    db.execute("UPDATE speakers SET template = ? WHERE name = 's05'", (np.ones(encoder.dim, np.float32).tobytes(),))
    db.commit()
    db.close()
    args = ["--registry", str(filled)]
    assert enroll_main(args + ["--json", "check"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and any("s05" in p for p in report["problems"])
    assert enroll_main(args + ["check", "--repair"]) == 0
    capsys.readouterr()
    assert enroll_main(args + ["check"]) == 0
    assert capsys.readouterr().out.strip() == "ok"


def test_backup_while_in_use_restores(filled, encoder, tmp_path, capsys):
    with SpeakerRegistry(filled, encoder=encoder, threshold=0.5) as reg:
        reg.remove("s00")  # in the WAL, not yet in the main file
        assert enroll_main(["--registry", str(filled), "backup", str(tmp_path / "bak")]) == 0
        reg.remove("s01")  # after the backup
    assert "backed up 29 speaker(s)" in capsys.readouterr().out
    with SpeakerRegistry(tmp_path / "bak", encoder=encoder, threshold=0.5) as bak:
        assert len(bak) == 29 and "s00" not in bak and "s01" in bak and bak.check()["ok"]
    assert enroll_main(["--registry", str(filled), "backup", str(tmp_path / "bak")]) == 1  # never overwrites
    assert "already holds a registry" in capsys.readouterr().err


def test_rename_racing_an_enroll_of_the_target_is_a_registry_error(encoder, tmp_path):
    rng = np.random.default_rng(1)
    a = SpeakerRegistry(tmp_path / "r", encoder=encoder)
    b = SpeakerRegistry(tmp_path / "r", encoder=encoder)
    a.enroll_embeddings("old", unit(rng, 1, a.dim))
    b.enroll_embeddings("new", unit(rng, 1, a.dim))  # lands between a's check and a's write
    with pytest.raises(RegistryError, match="already enrolled"):
        a._store.rename("old", "new")
    a.close(), b.close()


def test_nfc_and_nfd_spellings_are_one_speaker(encoder):
    reg = SpeakerRegistry(encoder=encoder, threshold=0.5)
    rng = np.random.default_rng(2)
    nfc, nfd = unicodedata.normalize("NFC", "José"), unicodedata.normalize("NFD", "José")
    assert nfc != nfd
    reg.enroll_embeddings(nfd, unit(rng, 1, reg.dim))
    reg.enroll_embeddings(nfc, unit(rng, 1, reg.dim))
    assert reg.names() == [nfc] and reg.speaker(nfd).n_clips == 2 and nfd in reg
    reg.rename(nfd, "Zoë")
    assert reg.names() == ["Zoë"]


def test_the_same_clip_cannot_be_enrolled_twice(encoder, clip_rows):
    reg = SpeakerRegistry(encoder=encoder, threshold=0.5)
    path = clip_rows[0]["path"]
    reg.enroll("ada", [path])
    with pytest.raises(DuplicateClipError, match="already enrolled as 'ada'"):
        reg.enroll("eve", [path])
    with pytest.raises(DuplicateClipError, match="given twice"):
        reg.enroll("eve", [path, path])
    with pytest.raises(DuplicateClipError):
        reg.enroll("ada", [path])  # under its own name too
    assert reg.names() == ["ada"] and reg.speaker("ada").n_clips == 1
    assert reg.enroll("ada", [path], replace=True).n_clips == 1  # replacing with the same clip is fine
    assert reg.enroll("eve", [path], allow_duplicates=True).n_clips == 1


def test_garbage_onnx_cache_is_exported_again(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from asit_embed import load_encoder

    monkeypatch.setenv("ASIT_EMBED_CACHE", str(tmp_path))
    reference = load_encoder(precision="float32")
    (tmp_path / f"encoder-{reference.fingerprint}.onnx").write_bytes(b"garbage")
    onnx = load_encoder(backend="onnx")
    assert onnx.backend == "onnx"
    wave = np.sin(np.arange(32000) / 7).astype(np.float32) * np.linspace(0.1, 0.5, 32000, dtype=np.float32)
    assert float(onnx.embed(wave, 16000) @ reference.embed(wave, 16000)) > 0.9999
    shutil.rmtree(tmp_path)


def test_read_only_registry_answers_queries_and_refuses_changes(filled, encoder, monkeypatch):
    from enroll import ReadOnlyRegistryError
    from enroll.server import create_app

    before = {p.name: p.stat().st_mtime_ns for p in filled.iterdir()}
    with SpeakerRegistry(filled, encoder=encoder, threshold=0.5, readonly=True) as reg:
        _, templates = reg.templates()
        assert len(reg) == 30 and reg.identify_embeddings(templates[3], k=1)[0][0].name == "s03"
        with pytest.raises(ReadOnlyRegistryError, match="read-only"):
            reg.enroll_embeddings("new", templates[0])
        with pytest.raises(ReadOnlyRegistryError):
            reg.remove("s00")
    assert {p.name: p.stat().st_mtime_ns for p in filled.iterdir() if p.name in before} == before
    # a directory the process cannot write (a read-only medium): opened as an immutable file
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with SpeakerRegistry(filled, encoder=encoder, threshold=0.5, readonly=True) as reg:
        assert len(reg) == 30
    monkeypatch.undo()
    app = create_app(filled, encoder=encoder, readonly=True)
    client = app.test_client()
    assert client.get("/speakers").status_code == 200
    assert client.delete("/speakers/s00").status_code == 403
    app.extensions["enroll"].registries.close()
    with pytest.raises(RegistryError, match="no registry database"):
        SpeakerRegistry(filled.parent / "nothing", encoder=encoder, readonly=True)


def test_registry_on_files_the_process_cannot_write(filled, tmp_path):
    """A registry whose directory and files deny writing, opened by a process that really cannot write
    (as root, the check runs without the capability to override file permissions, which root otherwise
    writes through)."""
    import stat
    import subprocess
    import sys
    import tempfile

    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without util-linux setpriv to drop CAP_DAC_OVERRIDE")
        drop = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]
    base = Path(tempfile.mkdtemp(prefix="asit-ro-"))
    try:
        reg = base / "reg"
        shutil.copytree(filled, reg)
        for p in [reg, *reg.iterdir()]:
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
                                                                  if p.is_dir() else 0))
        base.chmod(0o755)
        code = (
            "import sys\n"
            "from enroll.cli import main\n"
            "reg = ['--registry', sys.argv[1], '--threshold', '0.5']\n"
            "print('list', main(reg + ['--read-only', 'list']))\n"
            "print('write', main(reg + ['remove', 's00']))\n")
        run = subprocess.run([*prefix, sys.executable, "-c", code, str(reg)], capture_output=True, text=True,
                             timeout=300, cwd=ROOT, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert "list 0" in run.stdout, run.stderr
        assert "s29" in run.stdout
        assert "write 1" in run.stdout and "Traceback" not in run.stderr  # one clear line, exit status 1
        assert "error: cannot open registry database" in run.stderr and "--read-only" in run.stderr
    finally:
        for p in [base, *base.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(base)


def _open_store(path, errors):
    try:
        Store(path).close()
    except Exception as err:  # reported to the test, which names it
        errors.put(repr(err))


def test_processes_creating_the_same_new_registry_at_once_all_succeed(tmp_path):
    # A second process could find the file a moment after the first made it: empty, or without its tables
    # yet, or locked while it switches to WAL. Each once made about 1 in 75 such openings fail: 300 openings here.
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for trial in range(50):
        path = str(tmp_path / f"r{trial}" / "registry.sqlite")
        os.makedirs(os.path.dirname(path))
        procs = [ctx.Process(target=_open_store, args=(path, errors)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert all(p.exitcode == 0 for p in procs)
        store = Store(path, readonly=True)
        assert store.uid and store.get_meta("schema")
        store.close()
    assert errors.empty(), errors.get()
