"""Make torchaudio importable beside a CPU-only torch.

Every x86_64 torchaudio wheel on PyPI is a CUDA build; next to a CPU torch its compiled extension fails to
load (``libc10_cuda.so: cannot open shared object file``) and ``import torchaudio`` raises.  Without the
extension torchaudio runs in pure-Python mode, where everything this project uses works (kaldi fbank,
resample, masking).  This script removes the extension **only** when it cannot load, so a CUDA machine
keeps it.  It never imports torchaudio in its own process (a failed import leaves half-initialised state).
"""

import importlib.util
import pathlib
import subprocess
import sys


def _import_ok() -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-c", "import torchaudio"], capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr.strip().splitlines()[-1:] and proc.stderr.strip().splitlines()[-1]


def main() -> int:
    ok, err = _import_ok()
    if ok:
        print("torchaudio imports cleanly; nothing to do")
        return 0
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or spec.origin is None:
        print("torchaudio is not installed", file=sys.stderr)
        return 1
    if "Could not load this library" not in err and "libc10_cuda" not in err:
        print(f"torchaudio fails to import for another reason: {err}", file=sys.stderr)
        return 1
    lib = pathlib.Path(spec.origin).parent / "lib"
    removed = sorted(lib.glob("*.so"))
    for so in removed:
        so.unlink()
    ok, err = _import_ok()
    if not ok:
        print(f"torchaudio still fails after removing its extensions: {err}", file=sys.stderr)
        return 1
    print(f"removed {len(removed)} CUDA-linked torchaudio extension(s); torchaudio runs in pure-Python mode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
