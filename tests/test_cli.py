import json

import numpy as np
import pytest

from asit_embed.cli import main as embed_main
from enroll.cli import main as enroll_main


def test_embed_writes_npy(clip_rows, tmp_path, capsys):
    out = tmp_path / "e.npy"
    assert embed_main(["embed", clip_rows[0]["path"], clip_rows[1]["path"], "--out", str(out)]) == 0
    emb = np.load(out)
    assert emb.shape == (2, 192) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_embed_bad_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    assert embed_main(["embed", str(bad)]) == 2
    assert "could not be decoded" in capsys.readouterr().err


def test_evaluate_on_bundled_clips(clips_manifest, tmp_path, capsys):
    assert embed_main(["evaluate", "--data", str(clips_manifest), "--n-enroll", "3", "--out",
                       str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"), "--sizes", "1",
                       "--det", str(tmp_path / "det.png")]) == 0
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["n_speakers"] == 6 and summary["n_probes"] == 18 and 0 <= summary["eer"] <= 1
    assert summary["scoring"] == "as-norm"  # as a registry scores with the shipped checkpoint
    assert embed_main(["evaluate", "--data", str(clips_manifest), "--n-enroll", "3", "--scoring", "cosine",
                       "--sizes", "1", "--out", str(tmp_path / "c.json")]) == 0
    cosine = json.loads((tmp_path / "c.json").read_text())
    assert cosine["scoring"] == "cosine" and cosine["eer_threshold"] < 1 < summary["eer_threshold"]
    assert (tmp_path / "r.png").stat().st_size > 1000
    # open set at the shipped operating point: one of three speakers enrolled, the other two call in
    open_set = summary["calibrated_open_set"]
    assert open_set["shipped"] == "the checkpoint's" and open_set["1"]["draws"] == 500
    assert 0 <= open_set["1"]["fpir_shipped"] <= 1 and 0 <= open_set["1"]["tpir_shipped"] <= 1
    assert "fpir_own" not in open_set["1"]  # three speakers a half are too few to calibrate from
    assert (tmp_path / "det.png").stat().st_size > 1000


def test_enroll_cli_round_trip(cli_registry, capsys):
    reg, a, _ = cli_registry
    capsys.readouterr()
    assert enroll_main(reg + ["--json", "identify", a[4], "--k", "2", "--threshold", "0.5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["threshold"] == 0.5 and result[0]["clip"] == a[4] and [m["name"] for m in result[0]["matches"]] == ["alice", "bob"]
    assert [list(m) for m in result[0]["matches"]] == [["name", "score", "accepted"]] * 2
    assert [m["accepted"] for m in result[0]["matches"]] == [True, False]
    assert enroll_main(reg + ["--json", "verify", "bob", a[4], "--threshold", "0.5"]) == 1  # alice's voice as bob
    claim = json.loads(capsys.readouterr().out)
    assert claim == {"name": "bob", "score": claim["score"], "accepted": False, "threshold": 0.5}
    assert claim["score"] < 0.4
    assert enroll_main(reg + ["verify", "alice", a[4], "--threshold", "0.5"]) == 0
    assert "same speaker" in capsys.readouterr().out
    assert enroll_main(reg + ["--json", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in listed] == ["alice", "bob"] and [s["n_clips"] for s in listed] == [3, 3]
    assert list(listed[0]) == ["name", "n_clips", "seconds", "created", "updated"]
    assert enroll_main(reg + ["rename", "bob", "robert"]) == 0
    assert enroll_main(reg + ["remove", "alice"]) == 0
    capsys.readouterr()
    assert enroll_main(reg + ["list"]) == 0
    out = capsys.readouterr().out
    assert "robert" in out and "alice" not in out
    assert enroll_main(reg + ["verify", "alice", a[4]]) == 2
    assert "no speaker named 'alice'" in capsys.readouterr().err


def test_embedding_commands_never_import_the_training_code_or_the_registry(tmp_path, clip_rows):
    import subprocess
    import sys

    script = ("import sys; from asit_embed.cli import main; rc = main(['embed', sys.argv[1], '--out', sys.argv[2]]); "
              "bad = sorted(m for m in sys.modules if m.startswith(('asit_embed.training', 'enroll'))); print(bad); "
              "sys.exit(rc or bool(bad))")
    proc = subprocess.run([sys.executable, "-c", script, clip_rows[0]["path"], str(tmp_path / "e.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("[]")


@pytest.mark.parametrize("cli, commands", [
    ("asit_embed", ["embed", "export", "train", "pretrain", "evaluate"]),
    ("enroll", ["add", "identify", "verify", "list", "track", "map", "calibrate", "backup", "check", "remove",
                "rename", "serve"]),
])
def test_every_command_has_help_with_defaults(cli, commands, capsys):
    main = embed_main if cli == "asit_embed" else enroll_main
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0 and "usage:" in out, command
        assert "(default:" in out or command in ("list",), command
