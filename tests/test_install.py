"""Installing on a CPU machine: the torchaudio check and fix (`asit-embed doctor`), and its import hint."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def broken_torchaudio(tmp_path):
    """A stand-in torchaudio whose import fails as a CUDA-linked extension does beside a CPU torch, until its
    ``lib/*.so`` is removed."""
    pkg = tmp_path / "torchaudio"
    (pkg / "lib").mkdir(parents=True)
    (pkg / "lib" / "_torchaudio.so").write_bytes(b"\x7fELF")
    (pkg / "__init__.py").write_text(
        "import pathlib\n"
        "if list((pathlib.Path(__file__).parent / 'lib').glob('*.so')):\n"
        "    raise OSError('libc10_cuda.so: cannot open shared object file: No such file or directory')\n")
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


def run(args, env):
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_doctor_reports_then_fixes_a_cuda_linked_torchaudio(tmp_path):
    env = broken_torchaudio(tmp_path)
    hint = run(["-c", "import asit_embed; asit_embed.load_encoder"], env)
    assert hint.returncode != 0 and "asit-embed doctor --fix" in hint.stderr  # the import error says what to run
    report = run(["-m", "asit_embed.cli", "doctor"], env)
    assert report.returncode == 1 and "doctor --fix" in report.stderr
    assert (tmp_path / "torchaudio" / "lib" / "_torchaudio.so").exists()  # a report changes nothing
    fixed = run(["-m", "asit_embed.cli", "doctor", "--fix"], env)
    assert fixed.returncode == 0 and "pure-Python mode" in fixed.stdout, fixed.stderr
    assert not (tmp_path / "torchaudio" / "lib" / "_torchaudio.so").exists()
    assert run(["-m", "asit_embed.doctor"], env).stdout.strip() == "torchaudio imports cleanly; nothing to do"


def test_packages_are_typed():
    assert (ROOT / "asit_embed" / "py.typed").exists() and (ROOT / "enroll" / "py.typed").exists()
