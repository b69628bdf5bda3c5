"""Should speech detection be on by default? The encoder with and without Silero VAD on both dev sets.

    python benchmarks/vad.py [--checkpoint PATH]

Scores the protocol of each dev set (top-1, EER, minDCF, open-set EER, TPIR at FPIR 1 %) with ``vad=False``
and ``vad=True``. With VAD on, a clip whose speech is shorter than the encoder's minimum (0.5 s) cannot be
embedded; such clips are counted and left out of *both* rows, so the rows compare the same clips. Also
times both (the ratio is what matters). Writes ``results/vad.json``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_dev_set_options, dev_sets, print_tables, require  # noqa: E402

from asit_embed import AudioError, load_encoder  # noqa: E402
from asit_embed.training.metrics import PROTOCOLS, evaluate_embeddings  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="default: the bundled model")
    add_dev_set_options(p)
    p.add_argument("--out", type=Path, default=RESULTS / "vad.json")
    args = p.parse_args()
    require(args.manifest, *args.words)
    encoder = load_encoder(args.checkpoint)
    sets = dev_sets(args.manifest, args.words)
    report, rows = {"checkpoint": str(args.checkpoint or "default")}, [{"system": "no VAD"}, {"system": "Silero VAD"}]
    for name, (items, protocol) in sets.items():
        kept, with_vad, seconds = [], [], {}
        t0 = time.monotonic()
        for it in items:
            try:
                with_vad.append(encoder.embed(it.path, vad=True))
                kept.append(it)
            except AudioError:
                pass
        seconds["vad"] = time.monotonic() - t0
        t0 = time.monotonic()
        plain = encoder.embed_batch([it.path for it in kept], vad=False)
        seconds["plain"] = time.monotonic() - t0
        speakers, keys = [it.speaker for it in kept], [it.path for it in kept]
        for row, emb in zip(rows, (plain, np.stack(with_vad))):
            row[name] = evaluate_embeddings(emb, speakers, keys, open_set=True, **PROTOCOLS[protocol]).summary()
        report[name] = {"clips": len(items), "left_out_too_little_speech": len(items) - len(kept),
                        "seconds_no_vad": round(seconds["plain"], 1), "seconds_vad": round(seconds["vad"], 1)}
    report["rows"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(rows, sets)
    for name in sets:
        print(f"{name}: {report[name]['left_out_too_little_speech']} of {report[name]['clips']} clips have < 0.5 s "
              f"of speech; VAD run {report[name]['seconds_vad']} s vs {report[name]['seconds_no_vad']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
