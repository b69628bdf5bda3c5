"""The HTTP service under load: many clients identify while new speakers are enrolled, through waitress.

Loopback only, stops by itself. Starts the production server (``asit-enroll serve``, waitress) in a
subprocess on a free port with a temporary registry, enrolls four bundled speakers, times a few identify
requests from a single client (the peer the loaded run is compared with), then runs ``--clients`` threads
that post bundled clips to ``/identify`` for ``--duration`` seconds while one more thread enrolls new
speakers back to back. Passes when no request failed and every enrollment answered with a 2xx is listed
by ``GET /speakers``. Prints a table and writes ``benchmarks/results/http_load.json``.

    python benchmarks/http_load.py                          # 50 clients, 60 s
    python benchmarks/http_load.py --clients 10 --duration 10
    python benchmarks/http_load.py --abuse                  # 10 clients, undisturbed then under abuse

``--abuse``: ``--clients`` (default 10 there) identify for ``--duration`` seconds undisturbed, then as long
again while 120 idle connections sit open, 4 requests of 1,000 tiny file parts each are posted, and a
cross-origin writer (``Origin: http://evil.example``) tries to enroll, replace and rename speakers over and
over. Passes when every normal request succeeds, their p99 stays within 5x the undisturbed p99, every abusive
request gets a 4xx, and every 2xx enrollment is listed afterwards (``results/http_abuse.json``).
"""

import argparse
import csv
import http.client
import socket
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

CLIPS = Path(__file__).resolve().parents[1] / "examples" / "clips"
RESULTS = Path(__file__).resolve().parent / "results"
N_ENROLLED = 4  # bundled speakers enrolled before the run; the other two are heard as unknown


def multipart(files: list[tuple[str, Path]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of ``(field, path)`` files and plain fields, and its content type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files:
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
                "Content-Type: audio/flac\r\n\r\n")
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive connection; ``request`` returns ``(status, json body, seconds)``."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        headers = {} if content_type is None else {"Content-Type": content_type}
        t0 = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            raise
        return response.status, json.loads(data or b"null"), time.perf_counter() - t0


def start_server(registry: Path, threads: int, log) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "enroll.cli", "--registry", str(registry), "serve", "--port", "0",
           "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r} (exit code {proc.wait()}); see {log.name}")
    return proc, int(found.group(1))


def server_log_problems(path: Path) -> list[str]:
    """Lines of the server's log other than waitress's task-queue depth notes (expected under overload)."""
    return [line for line in path.read_text().splitlines() if line.strip() and "Task queue depth" not in line]


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` in [0, 100] of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(latencies: list[float], seconds: float) -> dict:
    if not latencies:
        return {"requests": 0}
    return {"requests": len(latencies), "per_second": round(len(latencies) / seconds, 2),
            "p50_ms": round(1000 * percentile(latencies, 50), 1), "p99_ms": round(1000 * percentile(latencies, 99), 1),
            "max_ms": round(1000 * max(latencies), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50, help="concurrent identify clients (default 50)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--server-threads", type=int, default=4, help="waitress request threads (default 4)")
    p.add_argument("--baseline", type=int, default=10, help="single-client identify requests timed first")
    p.add_argument("--abuse", action="store_true", help="the abuse scenario (see above) instead of the load run")
    p.add_argument("--out", type=Path, default=None, help="default: results/http_load.json (http_abuse.json)")
    args = p.parse_args()
    if args.abuse and "--clients" not in sys.argv:
        args.clients = 10
    if args.abuse and "--duration" not in sys.argv:
        args.duration = 20.0
    args.out = args.out or RESULTS / ("http_abuse.json" if args.abuse else "http_load.json")

    by_speaker: dict[str, list[Path]] = {}
    for r in csv.DictReader(open(CLIPS / "manifest.csv")):
        by_speaker.setdefault(r["speaker"], []).append(CLIPS / r["path"])
    speakers = sorted(by_speaker)
    enrolled_first = speakers[:N_ENROLLED]
    probes = [(s, path) for s in speakers for path in by_speaker[s][3:]]
    # New speakers enrolled during the run use the voices that were not enrolled first, so top-1 on the
    # first speakers' probes stays a fair check (a new name with an enrolled voice would be a correct match).
    enroll_pool = [path for s in speakers[N_ENROLLED:] for path in by_speaker[s]]

    with tempfile.TemporaryDirectory(prefix="http_load_") as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "w") as log:
            proc, port = start_server(Path(tmp) / "registry", args.server_threads, log)
            try:
                code = (abuse if args.abuse else run)(args, port, by_speaker, enrolled_first, probes, enroll_pool)
            finally:
                stop_server(proc)
        for line in server_log_problems(log_path)[:20]:
            print("  server log:", line)
    return code


def enroll_first(port: int, by_speaker: dict, speakers: list[str]) -> Client:
    """Enroll ``speakers`` from their first three clips; returns the client that did it."""
    client = Client(port)
    for s in speakers:
        status, body, _ = client.request("POST", f"/speakers/{s}", *multipart([("files", p) for p in by_speaker[s][:3]]))
        if status != 201:
            raise SystemExit(f"enrolling {s} failed: {status} {body}")
    return client


def run(args, port, by_speaker, enrolled_first, probes, enroll_pool) -> int:
    setup = enroll_first(port, by_speaker, enrolled_first)
    baseline = [setup.request("POST", "/identify", *multipart([("file", probes[i % len(probes)][1])]))[2]
                for i in range(args.baseline)]

    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    enrolled: list[str] = []
    enroll_latencies: list[float] = []
    correct = known = 0
    stop = threading.Event()
    bodies = [(speaker, multipart([("file", path)], {"k": "3"})) for speaker, path in probes]

    def identify_loop(worker: int) -> None:
        nonlocal correct, known
        client = Client(port)
        i = worker
        while not stop.is_set():
            speaker, (body, ctype) = bodies[i % len(bodies)]
            i += 1
            try:
                status, data, seconds = client.request("POST", "/identify", body, ctype)
            except (OSError, http.client.HTTPException) as err:
                with lock:
                    errors.append(f"identify: {type(err).__name__}: {err}")
                continue
            with lock:
                if status != 200:
                    errors.append(f"identify: {status} {data}")
                    continue
                latencies.append(seconds)
                if speaker in enrolled_first:
                    known += 1
                    correct += bool(data["matches"]) and data["matches"][0]["name"] == speaker

    def enroll_loop() -> None:
        client = Client(port)
        i = 0
        while not stop.is_set():
            name = f"new-{i:04d}"
            files = [("files", enroll_pool[(2 * i + j) % len(enroll_pool)]) for j in range(2)]
            i += 1
            try:  # the pool's clips are enrolled again and again under new names: on purpose here
                status, data, seconds = client.request("POST", f"/speakers/{name}",
                                                       *multipart(files, {"allow_duplicates": "1"}))
            except (OSError, http.client.HTTPException) as err:
                with lock:
                    errors.append(f"enroll {name}: {type(err).__name__}: {err}")
                continue
            with lock:
                if 200 <= status < 300:
                    enrolled.append(name)
                    enroll_latencies.append(seconds)
                else:
                    errors.append(f"enroll {name}: {status} {data}")

    threads = [threading.Thread(target=identify_loop, args=(w,)) for w in range(args.clients)]
    threads.append(threading.Thread(target=enroll_loop))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    status, data, _ = Client(port).request("GET", "/speakers")
    listed = {s["name"] for s in data["speakers"]} if status == 200 else set()
    lost = sorted(set(enrolled) - listed)
    result = {
        "settings": {"clients": args.clients, "duration_s": args.duration, "server_threads": args.server_threads,
                     "server": "waitress (asit-enroll serve)", "cpus": os.cpu_count(),
                     "python": platform.python_version(), "machine": platform.machine()},
        "single_client_identify": summary(baseline, sum(baseline)),
        "identify": summary(latencies, wall),
        "enroll": summary(enroll_latencies, wall),
        "top1_of_enrolled": round(correct / known, 4) if known else None,
        "enrolled_during_run": len(enrolled),
        "lost_enrollments": lost,
        "errors": len(errors),
        "first_errors": errors[:10],
        "wall_s": round(wall, 2),
        "ok": not errors and not lost,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    one, ident, enr = result["single_client_identify"], result["identify"], result["enroll"]
    print(f"{args.clients} identify clients + 1 enrolling client for {wall:.1f} s, waitress with "
          f"{args.server_threads} threads, {os.cpu_count()} CPUs\n")
    print("| requests | count | req/s | p50 (ms) | p99 (ms) |\n|---|---|---|---|---|")
    print(f"| identify, 1 client alone | {one['requests']} | {one['per_second']} | {one['p50_ms']} | {one['p99_ms']} |")
    print(f"| identify under load | {ident.get('requests', 0)} | {ident.get('per_second', 0)} | "
          f"{ident.get('p50_ms', '–')} | {ident.get('p99_ms', '–')} |")
    print(f"| enroll (2 clips) under load | {enr.get('requests', 0)} | {enr.get('per_second', 0)} | "
          f"{enr.get('p50_ms', '–')} | {enr.get('p99_ms', '–')} |")
    if ident.get("requests"):
        print(f"\nthroughput under load / single client: {ident['per_second'] / one['per_second']:.2f}x; "
              f"p50 latency under load / single client: {ident['p50_ms'] / one['p50_ms']:.1f}x")
    print(f"top-1 on enrolled speakers: {result['top1_of_enrolled']}; errors: {len(errors)}; "
          f"enrollments: {len(enrolled)}, lost: {len(lost)}")
    for e in errors[:10]:
        print("  error:", e)
    print(f"wrote {args.out}")
    return 0 if result["ok"] else 1


def abuse(args, port, by_speaker, enrolled_first, probes, enroll_pool) -> int:
    enroll_first(port, by_speaker, enrolled_first)
    bodies = [multipart([("file", path)], {"k": "3"}) for _, path in probes]

    def normal_phase(seconds: float) -> tuple[list[float], list[str]]:
        lock, stop = threading.Lock(), threading.Event()
        latencies, errors = [], []

        def loop(worker: int) -> None:
            client, i = Client(port), worker
            while not stop.is_set():
                body, ctype = bodies[i % len(bodies)]
                i += 1
                try:
                    status, data, took = client.request("POST", "/identify", body, ctype)
                except (OSError, http.client.HTTPException) as err:
                    status, data, took = None, str(err), 0.0
                with lock:
                    (latencies.append(took) if status == 200 else errors.append(f"identify: {status} {data}"))

        threads = [threading.Thread(target=loop, args=(w,)) for w in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        return latencies, errors

    quiet, quiet_errors = normal_phase(args.duration)

    # the abuse, alongside a second normal phase
    idle = []
    for _ in range(120):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /identify HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a request that never finishes
        idle.append(sock)
    abusive: list[tuple[str, int | None]] = []
    enrolled: list[str] = []
    lock, stop = threading.Lock(), threading.Event()
    tiny = Path(tempfile.mkdtemp()) / "x.wav"
    tiny.write_bytes(b"RIFF")

    def flood(k: int) -> None:
        body, ctype = multipart([("files", tiny)] * 1000)
        try:
            status = Client(port).request("POST", f"/speakers/flood{k}", body, ctype)[0]
        except (OSError, http.client.HTTPException):
            status = None
        with lock:
            abusive.append(("1,000 parts", status))

    def cross_origin() -> None:
        client, i = Client(port), 0
        while not stop.is_set():
            target = enrolled_first[i % len(enrolled_first)]
            body, ctype = multipart([("files", enroll_pool[i % len(enroll_pool)])])
            for method, path, payload, kind in (("POST", f"/speakers/{target}?replace=1", body, ctype),
                                                ("POST", f"/speakers/evil{i}", body, ctype),
                                                ("POST", f"/speakers/{target}/rename", b'{"new_name": "pwned"}',
                                                 "application/json")):
                client.conn.request(method, path, body=payload, headers={"Content-Type": kind,
                                                                          "Origin": "http://evil.example"})
                response = client.conn.getresponse()
                response.read()
                with lock:
                    abusive.append(("cross-origin write", response.status))
                    if 200 <= response.status < 300 and path.startswith("/speakers/evil"):
                        enrolled.append(f"evil{i}")
            i += 1
            time.sleep(0.05)

    extra = [threading.Thread(target=flood, args=(k,)) for k in range(4)] + [threading.Thread(target=cross_origin)]
    for t in extra:
        t.start()
    loud, loud_errors = normal_phase(args.duration)
    stop.set()
    for t in extra:
        t.join()
    for sock in idle:
        sock.close()
    status, data, _ = Client(port).request("GET", "/speakers")
    listed = {s["name"] for s in data["speakers"]} if status == 200 else set()
    untouched = listed >= set(enrolled_first) and "pwned" not in listed
    p99_quiet, p99_loud = percentile(quiet, 99), percentile(loud, 99) if loud else float("inf")
    bad_abuse = [(kind, code) for kind, code in abusive if code is None or not 400 <= code < 500]
    result = {
        "settings": {"clients": args.clients, "phase_s": args.duration, "server_threads": args.server_threads,
                     "idle_connections": len(idle), "flood_requests": 4, "parts_each": 1000,
                     "cpus": os.cpu_count(), "python": platform.python_version()},
        "undisturbed": summary(quiet, args.duration), "under_abuse": summary(loud, args.duration),
        "p99_ratio": round(p99_loud / p99_quiet, 2),
        "normal_errors": len(quiet_errors) + len(loud_errors), "first_errors": (quiet_errors + loud_errors)[:10],
        "abusive_requests": len(abusive), "abusive_status_counts": {str(c): sum(1 for _, x in abusive if x == c)
                                                                   for c in sorted({x for _, x in abusive}, key=str)},
        "abusive_not_4xx": bad_abuse[:10], "registry_untouched": untouched,
        "ok": not quiet_errors and not loud_errors and p99_loud <= 5 * p99_quiet and not bad_abuse and untouched,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.clients} identify clients, {args.duration:.0f} s undisturbed then {args.duration:.0f} s beside "
          f"120 idle connections, 4 requests of 1,000 parts and a cross-origin writer\n")
    print("| phase | requests | req/s | p50 (ms) | p99 (ms) |\n|---|---|---|---|---|")
    for name, key in (("undisturbed", "undisturbed"), ("under abuse", "under_abuse")):
        r = result[key]
        print(f"| {name} | {r.get('requests', 0)} | {r.get('per_second', 0)} | {r.get('p50_ms', '–')} | "
              f"{r.get('p99_ms', '–')} |")
    print(f"\np99 under abuse / undisturbed: {result['p99_ratio']}x (limit 5x); normal errors: {result['normal_errors']}; "
          f"abusive requests: {len(abusive)}, answers {result['abusive_status_counts']}; registry untouched: {untouched}")
    print(f"{'PASS' if result['ok'] else 'FAIL'}; wrote {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
