"""How long clips are cut into windows: accuracy on both dev sets and speed, per window / hop setting.

    python benchmarks/windowing.py [--checkpoint PATH] [--settings 200x100 200x200 300x300]

A setting ``WINDOWxHOP`` (in 10 ms frames) replaces the checkpoint's inference windowing; the weights stay.
Every setting is scored on speechocean762 ``dev`` and the word corpora's ``dev`` (``benchmarks/accuracy.py``'s
protocols) and timed on the same long clips (speechocean762 ``dev`` clips joined into 10 s clips) in one run,
as real-time factors and as a ratio to the first setting. Writes ``benchmarks/results/windowing.json``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_dev_set_options, dev_sets, print_tables, require, score  # noqa: E402

from asit_embed import SpeakerEncoder, load_audio  # noqa: E402
from asit_embed.checkpoint import load_checkpoint  # noqa: E402
from asit_embed.encoder import default_checkpoint_path  # noqa: E402


def setting(text: str) -> tuple[int, int]:
    window, hop = (int(v) for v in text.lower().split("x"))
    return window, hop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--settings", type=setting, nargs="+", default=[(200, 100), (200, 200), (300, 300)])
    add_dev_set_options(p)
    p.add_argument("--long-clips", type=int, default=24, help="10 s clips to time")
    p.add_argument("--result", type=Path, default=RESULTS / "windowing.json")
    args = p.parse_args()
    require(args.manifest, *args.words)
    sets = dev_sets(args.manifest, args.words)
    ckpt = load_checkpoint(args.checkpoint)
    waves = [load_audio(it.path) for it in sets["speechocean762"][0][: 4 * args.long_clips]]
    joined = np.concatenate(waves)
    long = [joined[i * 160000:(i + 1) * 160000] for i in range(args.long_clips)]
    rows = []
    for window, hop in args.settings:
        config = ckpt.config.replace(window_frames=window, hop_frames=hop)
        encoder = SpeakerEncoder(type(ckpt)(config, ckpt.state_dict, ckpt.metadata))
        encoder.embed_batch(long[:2], sample_rate=16000)  # warm-up
        t0 = time.perf_counter()
        encoder.embed_batch(long, sample_rate=16000, batch_size=16)
        seconds = time.perf_counter() - t0
        rows.append({"system": f"window {window / 100:g} s, hop {hop / 100:g} s", "window_frames": window,
                     "hop_frames": hop, "precision": encoder.precision,
                     "realtime_10s_clips": round(10 * len(long) / seconds, 1),
                     **score(lambda paths: encoder.embed_batch(paths), sets)})
        rows[-1]["speed_vs_first"] = round(rows[-1]["realtime_10s_clips"] / rows[0]["realtime_10s_clips"], 2)
        print(f"{rows[-1]['system']}: {rows[-1]['realtime_10s_clips']}x real time on 10 s clips "
              f"({rows[-1]['speed_vs_first']}x the first setting)", file=sys.stderr)
    print_tables(rows, sets)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
