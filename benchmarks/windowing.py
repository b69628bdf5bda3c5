"""How long clips are cut into windows: accuracy on both dev sets and speed, per window / hop setting.

    python benchmarks/windowing.py [--checkpoint PATH] [--settings 200x100 200x150 200x200 300x300]

A setting ``WINDOWxHOP`` (in 10 ms frames) replaces the checkpoint's inference windowing; the weights stay.
``hop == window`` splits a long clip evenly into the fewest windows of at most ``window`` frames
(``SpeakerEncoder.windows``). Every setting is scored on speechocean762 ``dev`` and the word corpora's ``dev``
(``benchmarks/accuracy.py``'s protocols), with cosine and with AS-norm against the shipped cohort's clips
embedded with the same setting (``tools/calibrate.py``'s cohort), and timed on the same clips (speechocean762 ``dev`` clips joined and
cut into 3 s and 10 s clips, 16 per call) in one run, as real-time factors (median of ``--repeats``) and as a
ratio to the first setting; the settings take turns in each round. Writes ``benchmarks/results/windowing.json``.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_dev_set_options, cached, dev_sets, print_tables, require, score, training_cohort  # noqa: E402

from asit_embed import SpeakerEncoder, load_audio  # noqa: E402
from asit_embed.checkpoint import load_checkpoint  # noqa: E402
from asit_embed.encoder import default_checkpoint_path  # noqa: E402
from asit_embed.scoring import DEFAULT_TOP_N, ASNorm  # noqa: E402


def setting(text: str) -> tuple[int, int]:
    window, hop = (int(v) for v in text.lower().split("x"))
    return window, hop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--settings", type=setting, nargs="+", default=[(200, 100), (200, 150), (200, 200), (300, 300)])
    add_dev_set_options(p)
    p.add_argument("--clips", type=int, default=32, help="clips of each length to time")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--result", type=Path, default=RESULTS / "windowing.json")
    args = p.parse_args()
    require(args.manifest, *args.words)
    sets = dev_sets(args.manifest, args.words)
    ckpt = load_checkpoint(args.checkpoint)
    joined = np.concatenate([load_audio(it.path) for it in sets["speechocean762"][0][: 6 * args.clips]])
    timed = {sec: [joined[i * sec * 16000:(i + 1) * sec * 16000] for i in range(args.clips)] for sec in (3, 10)}
    encoders = {}
    for window, hop in args.settings:
        config = ckpt.config.replace(window_frames=window, hop_frames=hop)
        encoders[(window, hop)] = SpeakerEncoder(type(ckpt)(config, ckpt.state_dict, ckpt.metadata))
    times = {(key, sec): [] for key in encoders for sec in timed}
    for encoder in encoders.values():  # warm-up
        encoder.embed_batch(timed[3][:16], sample_rate=16000)
    for _ in range(args.repeats):  # the settings take turns, so a slow spell of the machine hits them all
        for (key, sec), spent in times.items():
            t0 = time.perf_counter()
            encoders[key].embed_batch(timed[sec], sample_rate=16000, batch_size=16)
            spent.append(time.perf_counter() - t0)
    cohort_paths, _ = training_cohort(args.manifest, args.words)
    top_n = int(ckpt.metadata.get("cohort_top_n", DEFAULT_TOP_N))
    rows, as_norm_rows = [], []
    for (window, hop), encoder in encoders.items():
        speed = {f"realtime_{sec}s_clips": round(sec * len(timed[sec]) / statistics.median(times[(window, hop), sec]), 1)
                 for sec in timed}
        name = f"window {window / 100:g} s, hop {hop / 100:g} s"
        embed = cached(encoder.embed_batch)  # each dev set is embedded once, scored both ways
        rows.append({"system": name, "window_frames": window, "hop_frames": hop, "precision": encoder.precision,
                     **speed, **score(embed, sets)})
        rows[-1]["speed_vs_first"] = {k: round(rows[-1][k] / rows[0][k], 2) for k in speed}
        as_norm = ASNorm(encoder.embed_batch(cohort_paths), top_n=top_n)
        as_norm_rows.append({"system": f"{name}, AS-norm", "window_frames": window, "hop_frames": hop,
                             **score(embed, sets, as_norm.score)})
        print(f"{name}: {speed} x real time ({rows[-1]['speed_vs_first']} x the first setting)", file=sys.stderr)
    print_tables(rows + as_norm_rows, sets)
    rows += as_norm_rows
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
