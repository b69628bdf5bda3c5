"""Embedding throughput: our encoder (each backend / precision) vs SpeechBrain's ECAPA-TDNN C=512, in one process.

    python benchmarks/throughput.py [--repeats 5] [--threads 2] [--backends torch onnx] [--bf16 | --no-bf16]
                                    [--result benchmarks/results/throughput.json]

The same clips for every system: real speech from the bundled clips (``examples/clips``), cut or tiled to
3 s and 10 s. Each figure is audio-seconds embedded per wall-second, from waveform to embedding (the
front-end is counted: our fbank + windowing, ECAPA's ``Fbank`` + mean normalisation), with 1 or 16 clips per call
(our encoder batches a call's windows 16 at a time, so one long clip is a batch too), the median over ``--repeats`` rounds in which the systems take turns. ECAPA has random weights here (speed does
not depend on them) and embeds each clip whole, as it is normally used. With ``--bf16`` (the default where the
CPU has native bfloat16) both our torch backend and ECAPA also run under bfloat16 autocast, so each
precision has its peer; ``vs_ecapa`` is against float32 ECAPA, ``vs_ecapa_same_precision`` against ECAPA in
the same precision. Resemblyzer (when ``asit-embed[train]`` is installed) embeds one clip at a time with its own
preprocessing (volume normalisation, VAD trimming), as its users call it. Writes ``--result`` (default
``benchmarks/results/throughput.json``), with the CPU's model name and whether it has native bfloat16.
"""

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402
from peers import ECAPA, RESEMBLYZER_NAME, resemblyzer  # noqa: E402

from asit_embed import load_audio, load_encoder  # noqa: E402
from asit_embed.encoder import native_bfloat16  # noqa: E402

CLIPS = Path(__file__).resolve().parents[1] / "examples" / "clips"
RATE = 16000


def clips_of(seconds: float, n: int) -> list[np.ndarray]:
    """``n`` clips of exactly ``seconds``: bundled recordings, tiled (several utterances of one speaker) or cut."""
    by_speaker: dict[str, list[np.ndarray]] = {}
    for path in sorted(CLIPS.rglob("*.flac")):
        by_speaker.setdefault(path.parent.name, []).append(load_audio(path))
    speakers, out, need = sorted(by_speaker), [], int(seconds * RATE)
    for i in range(n):
        waves = by_speaker[speakers[i % len(speakers)]]
        x = np.concatenate(waves[i // len(speakers):] + waves[: i // len(speakers)])
        while len(x) < need:
            x = np.concatenate([x, x])
        out.append(np.ascontiguousarray(x[:need], dtype=np.float32))
    return out


def cpu_name() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` is empty on Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clips", type=int, default=16, help="clips per setting (a multiple of the batch size)")
    p.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                   help="also run both models under bfloat16 autocast (default: where the CPU has native bf16)")
    p.add_argument("--result", type=Path, default=RESULTS / "throughput.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.bf16 is None:
        with warnings.catch_warnings():  # without native bf16 the encoder says so and falls back to float32
            warnings.simplefilter("ignore")
            args.bf16 = load_encoder(precision="bfloat16").precision == "bfloat16"

    ecapa = ECAPA().eval()

    def ecapa_system(bf16: bool):
        @torch.inference_mode()
        def embed(waves: list[np.ndarray], batch: int) -> None:
            for i in range(0, len(waves), batch):
                x = torch.from_numpy(np.stack(waves[i:i + batch]))
                feats = ecapa.features(x)  # the front-end stays float32, as in our encoder
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    torch.nn.functional.normalize(ecapa(feats).float(), dim=1)
        return embed

    def ours(enc):
        return lambda w, b: enc.embed_batch(w, sample_rate=enc.sample_rate, batch_size=b)

    systems = {"ECAPA-TDNN C=512": ecapa_system(False)}
    peer = {}  # system -> the ECAPA run in the same precision
    for backend in args.backends:
        enc = load_encoder(backend=backend, precision="float32")
        systems[f"asit-embed ({enc.backend})"] = ours(enc)
        peer[f"asit-embed ({enc.backend})"] = "ECAPA-TDNN C=512"
    if args.bf16:
        systems["ECAPA-TDNN C=512 (bfloat16)"] = ecapa_system(True)
        systems["asit-embed (torch, bfloat16)"] = ours(load_encoder(precision="bfloat16"))
        peer["asit-embed (torch, bfloat16)"] = "ECAPA-TDNN C=512 (bfloat16)"

    try:
        teacher = resemblyzer()
    except ImportError as err:
        print(f"Resemblyzer left out: {err}", file=sys.stderr)
    else:  # one clip at a time (it has no batch call), its own preprocessing counted like our front-end
        systems[RESEMBLYZER_NAME] = lambda waves, batch: [teacher.embed(w) for w in waves]

    rows = []
    for seconds in (3.0, 10.0):
        waves = clips_of(seconds, args.clips)
        for batch in (1, 16):
            times = {name: [] for name in systems}
            for name, fn in systems.items():   # warm-up (and, for compiled backends, compilation)
                fn(waves[:batch], batch)
            for _ in range(args.repeats):
                for name, fn in systems.items():
                    t0 = time.perf_counter()
                    fn(waves, batch)
                    times[name].append(time.perf_counter() - t0)
            audio = seconds * len(waves)
            speed = {name: audio / statistics.median(t) for name, t in times.items()}
            for name, x in speed.items():
                rows.append({"system": name, "clip_seconds": seconds, "batch": batch, "realtime_x": round(x, 1),
                             "vs_ecapa": round(x / speed["ECAPA-TDNN C=512"], 2)})
                if name in peer:
                    rows[-1]["vs_ecapa_same_precision"] = round(x / speed[peer[name]], 2)
                print(f"{seconds:4.0f} s  B{batch:<3} {name:<30} {x:8.1f}x real time  {rows[-1]['vs_ecapa']:5.2f}x ECAPA"
                      + (f"  ({rows[-1]['vs_ecapa_same_precision']:.2f}x in its precision)" if name in peer else ""),
                      flush=True)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    settings = {**vars(args), "result": str(args.result)}
    args.result.write_text(json.dumps({"settings": settings, "threads": torch.get_num_threads(), "cpu": cpu_name(),
                                       "native_bf16": native_bfloat16(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
