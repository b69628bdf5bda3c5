"""Registry at scale: enroll, identify and remove with 10 k to 1 M synthetic speakers.

    python benchmarks/registry.py [--sizes 10000 100000 1000000] [--queries 1000] [--force]

Speakers are synthetic 192-dim unit embeddings shaped like the shipped encoder's: speaker centres are
drawn from a Gaussian whose spectrum decays as ``i^-0.9`` under a random rotation (between-speaker cosine
spread ≈ 0.18, as between the shipped encoder's training speakers), each speaker has 3 clips = centre +
isotropic noise, renormalised (clip-to-clip cosine ≈ 0.6 within a speaker, as on the bundled clips), and
each query is a new noisy clip of an enrolled speaker. ``--decay 0`` gives isotropic centres, the worst
case for any partitioning index.

For each size, in a temporary registry directory (deleted afterwards), through ``SpeakerRegistry``:
enroll throughput (``enroll_many`` in chunks, index upkeep included), open time of the persisted registry
with a valid saved index, RSS growth of that open and the index file size, single-query ``identify``
latency p50/p99 (``identify_embeddings``, one query at a time) and the raw FAISS candidate search inside
it (the saved index file, loaded as the registry loads it), the exact FAISS flat search over the same
templates as the peer, queries/s of all queries in one ``identify_embeddings`` call, recall@1 against
exact brute force (numpy over the registry's ``templates()``), for IVF an ``nprobe`` sweep (the registry
reopened with each ``IndexConfig(nprobe=...)``), and removal: the own speakers of some queries are
removed, and must then never be returned, also after a reopen. The registries score with cosine
(``as_norm=False``): this measures the index; AS-norm, the shipped default, re-scores each query's best
50 candidates against the cohort on top of it.

Each size's result is written to ``benchmarks/results/registry.json`` as soon as it is done; a later run
skips sizes already there unless ``--force``.
"""

import argparse
import dataclasses
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402

from asit_embed import load_encoder  # noqa: E402
from enroll import IndexConfig, SpeakerRegistry  # noqa: E402
from enroll.index import TemplateIndex  # noqa: E402

TARGET_P50_MS = 1.0
TARGET_RECALL = 0.99


class Speakers:
    """Synthetic speakers, generated in chunks from ``(seed, chunk)`` so any of them can be made again."""

    def __init__(self, dim: int, *, decay: float, noise: float, clips: int, chunk: int, seed: int):
        self.dim, self.decay, self.noise, self.clips, self.chunk, self.seed = dim, decay, noise, clips, chunk, seed
        self.scale = np.sqrt(np.arange(1, dim + 1) ** -decay).astype(np.float32)
        self.rotation = np.linalg.qr(np.random.default_rng([seed, 0]).standard_normal((dim, dim)))[0].astype(np.float32)

    def centres(self, c: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, c])
        return _unit((rng.standard_normal((self.chunk, self.dim), dtype=np.float32) * self.scale) @ self.rotation)

    def noisy(self, centres: np.ndarray, rng: np.random.Generator, shape: tuple) -> np.ndarray:
        eps = rng.standard_normal(shape + (self.dim,), dtype=np.float32) * (self.noise / np.sqrt(self.dim))
        return _unit(centres + eps)

    def enrollment(self, c: int) -> dict:
        """``{name: (clips, dim)}`` for the speakers of chunk ``c``."""
        centres = self.centres(c)
        clips = self.noisy(centres[:, None], np.random.default_rng([self.seed, 2, c]), (self.chunk, self.clips))
        return {name(c * self.chunk + j): clips[j] for j in range(self.chunk)}

    def queries(self, n_speakers: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` new clips of speakers drawn from the first ``n_speakers``: ``(speaker numbers, (n, dim))``."""
        rng = np.random.default_rng([self.seed, 3])
        who = rng.choice(n_speakers, n, replace=False)
        q = np.empty((n, self.dim), np.float32)
        for c in np.unique(who // self.chunk):
            mine = np.flatnonzero(who // self.chunk == c)
            q[mine] = self.noisy(self.centres(c)[who[mine] % self.chunk], rng, (len(mine),))
        return who, q


def name(i: int) -> str:
    return f"spk{i:07d}"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4)}


def one_at_a_time(fn, queries: np.ndarray, warmup: int = 20) -> list[float]:
    for q in queries[:warmup]:
        fn(q)
    out = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t)
    return out


def exact_top1(reg: SpeakerRegistry, queries: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Brute-force top-1 of each query over every template of ``reg``: the best template's row, and the
    registry's ``(names, templates)``."""
    names, templates = reg.templates()
    best, best_row = np.full(len(queries), -np.inf, np.float32), np.zeros(len(queries), np.int64)
    for i in range(0, len(names), 100_000):
        s = queries @ templates[i:i + 100_000].T
        j = s.argmax(1)
        better = s[np.arange(len(queries)), j] > best
        best[better], best_row[better] = s[np.arange(len(queries)), j][better], i + j[better]
    return best_row, names, templates


def saved_index(path: Path, config: IndexConfig, dim: int) -> TemplateIndex:
    """The index file a registry at ``path`` opens, loaded the same way: the raw FAISS search it runs."""
    head = json.loads(path.read_bytes().partition(b"\n")[0])
    index = TemplateIndex(dim, config)
    if not index.load(path, fingerprint=head["fingerprint"], store=head["store"]):
        raise SystemExit(f"cannot load the saved index {path}")
    return index


def top1(reg: SpeakerRegistry, q: np.ndarray) -> str:
    return reg.identify_embeddings(q, k=5)[0][0].name


def run_size(n: int, args, encoder) -> dict:
    gen = Speakers(encoder.dim, decay=args.decay, noise=args.noise, clips=args.clips, chunk=min(args.chunk, n),
                   seed=args.seed)
    config = IndexConfig(nprobe=args.nprobe)
    root = Path(tempfile.mkdtemp(prefix="registry-bench-", dir=args.tmp))
    out = {"speakers": n, "clips_per_speaker": args.clips}
    try:
        path = root / "reg"
        # --- enroll ------------------------------------------------------------------------------------------
        reg = SpeakerRegistry(path, encoder=encoder, threshold=0.5, index=config, as_norm=False)
        t0 = time.perf_counter()
        for c in range(n // gen.chunk):
            reg.enroll_many(gen.enrollment(c), embeddings=True)
            stats = reg.stats()
            print(f"  enrolled {stats['speakers']:>9,d}  {time.perf_counter() - t0:7.1f} s  "
                  f"index {stats['index']['kind']}", end="\r", flush=True)
        enroll_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        reg.close()
        close_s = time.perf_counter() - t0
        print()
        out["enroll"] = {"seconds": round(enroll_s, 2), "speakers_per_s": round(n / enroll_s, 1),
                         "close_s": round(close_s, 3)}
        out["disk_mb"] = {"sqlite": round(sum(f.stat().st_size for f in path.glob("registry.sqlite*")) / 2**20, 1),
                          "index": round((path / "index.faiss").stat().st_size / 2**20, 2)}
        # --- open --------------------------------------------------------------------------------------------
        gc.collect()
        rss0 = rss_mb()
        t0 = time.perf_counter()
        reg = SpeakerRegistry(path, encoder=encoder, threshold=0.5, index=config, as_norm=False)
        open_s = time.perf_counter() - t0
        out["open_s"] = round(open_s, 3)
        out["memory_mb"] = {"rss_growth_at_open": round(rss_mb() - rss0, 1), "index_file": out["disk_mb"]["index"]}
        info = reg.stats()["index"]
        out["index"] = {"kind": info["kind"], "ntotal": info["size"], "trained_at": info["trained_at"]}
        if info["kind"] == "ivf":
            out["index"].update(nlist=info["nlist"], nprobe=info["nprobe"], rerank=config.rerank)
        index = saved_index(path / "index.faiss", config, encoder.dim)
        # --- queries -----------------------------------------------------------------------------------------
        who, queries = gen.queries(n, args.queries)
        truth, names, templates = exact_top1(reg, queries)
        single = one_at_a_time(lambda q: reg.identify_embeddings(q, k=5), queries)
        found = [top1(reg, q) for q in queries]
        raw = one_at_a_time(lambda q: index.search(q[None], 5), queries)
        peer = faiss.IndexFlatIP(encoder.dim)
        peer.add(templates)
        faiss.omp_set_num_threads(1)
        exact = one_at_a_time(lambda q: peer.search(q[None], 5), queries[:args.peer_queries], warmup=3)
        faiss.omp_set_num_threads(args.threads)
        peer = templates = None  # free them before the batch run (1 M templates: 0.8 GB)
        t0 = time.perf_counter()
        batch = reg.identify_embeddings(queries, k=5)
        batch_s = time.perf_counter() - t0
        recall = float(np.mean([t == names[i] for t, i in zip(found, truth)]))
        out["identify"] = {**percentiles(single), "recall_at_1": round(recall, 4),
                           "batch_recall_at_1": round(float(np.mean([b[0].name == names[i]
                                                                     for b, i in zip(batch, truth)])), 4),
                           "own_speaker_top1": round(float(np.mean([t == name(w) for t, w in zip(found, who)])), 4),
                           "exact_own_speaker_top1": round(float(np.mean([names[i] == name(w)
                                                                          for i, w in zip(truth, who)])), 4),
                           "batch_queries_per_s": round(len(queries) / batch_s, 1)}
        out["raw_index_search"] = percentiles(raw)
        out["exact_flat_peer"] = {**percentiles(exact), "queries": len(exact)}
        out["speedup_vs_exact_p50"] = round(out["exact_flat_peer"]["p50_ms"] / out["identify"]["p50_ms"], 1)
        if index.kind == "ivf":
            out["nprobe_sweep"] = nprobe_sweep(path, encoder, config, index, queries[:args.sweep_queries],
                                               [names[i] for i in truth])
        # --- removal -----------------------------------------------------------------------------------------
        gone = sorted({names[i] for i in truth[:args.remove]})
        t0 = time.perf_counter()
        for g in gone:
            reg.remove(g)
        remove_s = time.perf_counter() - t0
        returned = {m.name for row in reg.identify_embeddings(queries, k=5) for m in row} & set(gone)
        stats = reg.stats()
        consistent = stats["index"]["size"] == stats["speakers"] == n - len(gone)
        reg.close()
        with SpeakerRegistry(path, encoder=encoder, threshold=0.5, index=config, as_norm=False) as reg:
            returned |= {m.name for row in reg.identify_embeddings(queries, k=5) for m in row} & set(gone)
            consistent &= reg.stats()["index"]["size"] == n - len(gone)
        out["removal"] = {"removed": len(gone), "ms_per_removal": round(remove_s / len(gone) * 1e3, 3),
                          "removed_returned": len(returned), "index_matches_store": consistent,
                          "works": not returned and consistent}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def nprobe_sweep(path: Path, encoder, config: IndexConfig, index: TemplateIndex, queries: np.ndarray,
                 truth: list[str]) -> list[dict]:
    """Latency and recall@1 with the registry at ``path`` reopened with each ``nprobe``; ``index``: the raw
    index, set to the same ``nprobe``."""
    ivf = faiss.extract_index_ivf(index.index)
    default = ivf.nprobe
    rows = []
    for nprobe in sorted({p for p in (8, 16, 32, 64, 128, 256, 512, default) if p <= ivf.nlist}):
        ivf.nprobe = nprobe
        with SpeakerRegistry(path, encoder=encoder, threshold=0.5, as_norm=False,
                             index=dataclasses.replace(config, nprobe=nprobe)) as reg:
            assert reg.stats()["index"]["nprobe"] == nprobe
            lat = one_at_a_time(lambda q: reg.identify_embeddings(q, k=5), queries, warmup=5)
            recall = float(np.mean([top1(reg, q) == t for q, t in zip(queries, truth)]))
        raw = one_at_a_time(lambda q: index.search(q[None], 5), queries, warmup=5)
        rows.append({"nprobe": nprobe, "identify_p50_ms": percentiles(lat)["p50_ms"],
                     "raw_p50_ms": percentiles(raw)["p50_ms"], "recall_at_1": round(recall, 4)})
    ivf.nprobe = default
    return rows


def verdict(value: float, target: float, *, at_most: bool) -> str:
    ok = value <= target if at_most else value >= target
    if at_most:
        how = f"{(1 - value / target):.0%} under" if ok else f"{value / target:.2f}× the target"
    else:
        how = f"+{value - target:.3f}" if ok else f"{value - target:+.3f}"
    return f"{'met' if ok else 'MISSED'} ({how})"


def table(results: dict) -> str:
    lines = ["| speakers | index | enroll (spk/s) | open (s) | RSS at open (MB) | index file (MB) "
             "| identify p50 / p99 (ms) | raw search p50 (ms) | exact flat p50 (ms) | batch (q/s) | recall@1 "
             "| removal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(results, key=int):
        r = results[key]
        idx = r["index"]
        kind = idx["kind"] if idx["kind"] == "flat" else f"IVF {idx['nlist']}/{idx['nprobe']}"
        lines.append(f"| {r['speakers']:,} | {kind} | {r['enroll']['speakers_per_s']:,.0f} | {r['open_s']:.2f} "
                     f"| {r['memory_mb']['rss_growth_at_open']:.0f} | {r['memory_mb']['index_file']:.1f} "
                     f"| {r['identify']['p50_ms']:.3f} / {r['identify']['p99_ms']:.3f} "
                     f"| {r['raw_index_search']['p50_ms']:.3f} | {r['exact_flat_peer']['p50_ms']:.2f} "
                     f"| {r['identify']['batch_queries_per_s']:,.0f} | {r['identify']['recall_at_1']:.4f} "
                     f"| {'works' if r['removal']['works'] else 'FAILS'} ({r['removal']['removed']} removed, "
                     f"{r['removal']['ms_per_removal']:.1f} ms each) |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--peer-queries", type=int, default=50, help="queries timed on the exact flat peer")
    p.add_argument("--sweep-queries", type=int, default=300, help="queries per nprobe in the IVF sweep")
    p.add_argument("--remove", type=int, default=100, help="queries whose exact top-1 speaker is removed")
    p.add_argument("--clips", type=int, default=3, help="clips per speaker")
    p.add_argument("--decay", type=float, default=0.9, help="spectrum of speaker centres: i^-decay (0: isotropic)")
    p.add_argument("--noise", type=float, default=0.83, help="clip noise norm relative to the unit centre")
    p.add_argument("--chunk", type=int, default=10_000, help="speakers per enroll_many call")
    p.add_argument("--nprobe", type=int, help="IVF lists scanned per query (default: the registry's)")
    p.add_argument("--threads", type=int, default=faiss.omp_get_max_threads(), help="FAISS threads for batches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", help="where the temporary registries go (default: the system's temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS / "registry.json")
    p.add_argument("--force", action="store_true", help="run sizes already in --out again")
    args = p.parse_args()
    faiss.omp_set_num_threads(args.threads)
    for n in args.sizes:
        if n % min(args.chunk, n):
            p.error(f"size {n} is not a multiple of --chunk {args.chunk}")
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    setup = {k: getattr(args, k) for k in ("queries", "clips", "decay", "noise", "chunk", "nprobe", "seed")}
    if report.get("setup") != setup:
        report = {"setup": setup, "sizes": {}}
    encoder = load_encoder()
    for n in args.sizes:
        if str(n) in report["sizes"] and not args.force:
            print(f"{n:,} speakers: already in {args.out} (--force to run again)")
            continue
        print(f"{n:,} speakers")
        report["sizes"][str(n)] = run_size(n, args, encoder)
        report["machine"] = {"cpus": faiss.omp_get_max_threads(), "faiss": faiss.__version__}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        r = report["sizes"][str(n)]
        for s in r.get("nprobe_sweep", []):
            print(f"  nprobe {s['nprobe']:>4}: identify p50 {s['identify_p50_ms']:.3f} ms, "
                  f"raw {s['raw_p50_ms']:.3f} ms, recall@1 {s['recall_at_1']:.4f}")
    print(table(report["sizes"]))
    largest = report["sizes"][max(report["sizes"], key=int)]
    p50, recall = largest["identify"]["p50_ms"], largest["identify"]["recall_at_1"]
    print(f"targets at {largest['speakers']:,} speakers: identify p50 ≤ {TARGET_P50_MS} ms: {p50:.3f} ms, "
          f"{verdict(p50, TARGET_P50_MS, at_most=True)}; recall@1 ≥ {TARGET_RECALL}: {recall:.4f}, "
          f"{verdict(recall, TARGET_RECALL, at_most=False)}; "
          f"removal {'works' if largest['removal']['works'] else 'FAILS'}")
    return 0 if all(r["removal"]["works"] for r in report["sizes"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
