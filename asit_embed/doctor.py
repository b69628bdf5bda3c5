"""``asit-embed doctor [--fix]``: check that torchaudio imports, and make it importable beside a CPU-only torch.

Every x86_64 torchaudio wheel on PyPI is a CUDA build; next to a CPU torch its compiled extension fails to
load (``libc10_cuda.so: cannot open shared object file``) and ``import torchaudio`` raises.  Without the
extension torchaudio runs in pure-Python mode, where everything this project uses works (kaldi fbank,
resample, masking).  This script removes the extension **only** when it cannot load, so a CUDA machine
keeps it.  It never imports torchaudio in its own process (a failed import leaves half-initialised state),
and imports nothing of asit-embed that needs torchaudio, so it runs where the import fails.

    asit-embed doctor          # report
    asit-embed doctor --fix    # remove the extension that cannot load (python -m asit_embed.doctor --fix)
"""

import argparse
import importlib.util
import pathlib
import subprocess
import sys

HINT = "run `asit-embed doctor --fix` (or `python -m asit_embed.doctor --fix`)"


def _import_ok() -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-c", "import torchaudio"], capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr.strip().splitlines()[-1:] and proc.stderr.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="asit-embed doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fix", action="store_true", help="remove torchaudio's extension when it cannot load")
    ok, message = check(fix=p.parse_args(argv).fix)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def check(*, fix: bool) -> tuple[bool, str]:
    """``(torchaudio imports now, what was found or done)``; with ``fix``, the extension that cannot load is
    removed first."""
    ok, err = _import_ok()
    if ok:
        return True, "torchaudio imports cleanly; nothing to do"
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or spec.origin is None:
        return False, "torchaudio is not installed"
    if "Could not load this library" not in err and "libc10_cuda" not in err:
        return False, f"torchaudio fails to import for another reason: {err}"
    if not fix:
        return False, f"torchaudio's compiled extension cannot load ({err}); {HINT}"
    lib = pathlib.Path(spec.origin).parent / "lib"
    removed = sorted(lib.glob("*.so"))
    for so in removed:
        so.unlink()
    ok, err = _import_ok()
    if not ok:
        return False, f"torchaudio still fails after removing its extensions: {err}"
    return True, f"removed {len(removed)} CUDA-linked torchaudio extension(s); torchaudio runs in pure-Python mode"


if __name__ == "__main__":
    sys.exit(main())
