"""Memory for long files: the peak resident memory that embedding one file adds, by length and format.

    python benchmarks/memory.py

Builds test files from the bundled clips repeated (1, 10 and 30 minutes; 16 kHz mono FLAC and 48 kHz stereo
WAV), embeds each in a fresh process (``SpeakerEncoder.embed(path)``) and reports the growth of the peak
resident set (Linux ``VmHWM``, reset just before the call) over the resident set before it, after a first
call on a short clip. Writes ``results/memory.json``.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PROBE = """
import re, sys
from asit_embed import load_encoder

def kb(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

e = load_encoder()
e.embed(sys.argv[2])  # a short clip first: the first call's one-off allocations
before = kb("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # peak (VmHWM) restarts from the current size
e.embed(sys.argv[1])
print((kb("VmHWM") - before) / 1024)
"""


def main() -> int:
    clips = sorted((ROOT / "examples" / "clips").glob("*/*.flac"))
    speech = np.concatenate([sf.read(p, dtype="float32")[0] for p in clips])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm.flac"
        sf.write(warm, speech[:48000], 16000)
        for minutes in (1, 10, 30):
            mono = np.tile(speech, int(np.ceil(minutes * 60 * 16000 / len(speech))))[: minutes * 60 * 16000]
            files = {"16 kHz mono FLAC": (Path(tmp) / f"{minutes}.flac", mono, 16000, "PCM_16"),
                     "48 kHz stereo WAV": (Path(tmp) / f"{minutes}.wav",
                                           np.repeat(np.stack([mono, mono[::-1]], 1), 3, axis=0), 48000, "PCM_16")}
            for kind, (path, data, rate, subtype) in files.items():
                sf.write(path, data, rate, subtype=subtype)
                out = subprocess.run([sys.executable, "-c", PROBE, str(path), str(warm)], capture_output=True, text=True,
                                     check=True, cwd=ROOT)
                added = float(out.stdout.strip().splitlines()[-1])
                rows.append({"file": kind, "minutes": minutes, "file_mb": round(path.stat().st_size / 2**20, 1),
                             "peak_added_mb": round(added, 1)})
                print(f"{kind:<18} {minutes:>3} min  file {rows[-1]['file_mb']:7.1f} MB  peak memory +{added:6.1f} MB")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
