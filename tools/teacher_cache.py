"""A two-teacher cache for ``asit-embed train --teacher-cache``: Resemblyzer beside an ECAPA-TDNN of ours.

    python tools/teacher_cache.py runs/teacher_train.npz runs/ecapa3/best.pt runs/teacher_res_ecapa.npz

Reads the Resemblyzer cache that ``train --w-teacher`` wrote (every training clip's path and its 256-dim
embedding), embeds the same clips with the ECAPA-TDNN that ``benchmarks/accuracy.py`` trained (``best.pt``
of its run folder: our recipe on the same ``train`` roles, so no ``dev`` audio reaches the student this way
either), and writes the two unit vectors side by side, each scaled by 1/√2: a 448-dim unit vector whose
cosines are the mean of the two teachers' cosines. Fine-tuning reads it like any teacher cache (the
projection head takes the cache's width).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers import load_ecapa  # noqa: E402

from asit_embed.audio import load_audio  # noqa: E402
from asit_embed.training.teacher import load_cache, save_cache  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("resemblyzer_cache", type=Path, help=".npz written by train --w-teacher")
    p.add_argument("ecapa", type=Path, help="best.pt of a benchmarks/accuracy.py ECAPA run")
    p.add_argument("out", type=Path)
    args = p.parse_args()
    t0 = time.monotonic()
    known = load_cache(args.resemblyzer_cache)
    paths, teacher = list(known), np.stack(list(known.values())).astype(np.float32)
    ecapa = load_ecapa(args.ecapa)
    rows = []
    for n, path in enumerate(paths, 1):  # ECAPA.embed runs without gradients
        rows.append(ecapa.embed([load_audio(path, sample_rate=16000, min_seconds=0.0)])[0])
        if n % 1000 == 0:
            print(f"{n} / {len(paths)} clips", file=sys.stderr)
    both = (np.concatenate([teacher, np.stack(rows)], axis=1) / np.sqrt(2)).astype(np.float32)
    save_cache(args.out, dict(zip(paths, both)))
    print(f"wrote {args.out}: {len(paths)} clips x {both.shape[1]} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
