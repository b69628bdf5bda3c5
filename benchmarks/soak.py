"""Soak: two processes change one registry at random while being killed with ``kill -9``; nothing acknowledged
may be lost and nothing unacknowledged may half-exist.

    python benchmarks/soak.py                 # 1,000 operations
    python benchmarks/soak.py --ops 200

Each worker process owns a namespace of names (``a-*`` or ``b-*``) and runs random enroll (1-3 clips, as
precomputed embeddings, adding to or replacing a speaker), remove and rename operations on it, writing
``try <op>`` to its journal before and ``ack`` after each (flushed and fsynced). The parent kills a random
worker with SIGKILL 0-0.5 s after it acknowledged an operation, and starts a new one that goes on from the journal, takes an online
backup (``SpeakerRegistry.backup``) half-way, and ends both with SIGTERM. Then: ``check`` must be clean; each
namespace must equal the replay of its acknowledged operations, or of those plus the one in flight when its
worker died; the backup must open, pass ``check`` and hold a state some prefix of the journals explains.
Writes ``results/soak.json``.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def worker(registry: str, namespace: str, journal: str, seed: int) -> None:
    """Runs forever (until killed): random operations on ``namespace``, journalled."""
    import numpy as np

    from asit_embed import load_encoder
    from enroll import SpeakerRegistry

    rng = random.Random(seed)
    reg = SpeakerRegistry(registry, encoder=load_encoder())
    if os.path.exists(journal) and not Path(journal).read_bytes().endswith(b"\n") and os.path.getsize(journal):
        with open(journal, "a") as log:  # a line cut by the kill: end it, so the next one starts afresh
            log.write("\n")
    entries = read_journal(journal)
    if entries and not entries[-1][1]:
        # The previous worker died between "try" and "ack": the registry says whether the operation happened,
        # and it must have happened wholly or not at all.
        before, after = replay(entries)
        have = namespace_state(registry_state(Path(registry)), namespace)
        verdict = "applied" if have == after else "undone" if have == before else "half"
        with open(journal, "a") as log:
            log.write(verdict + "\n")
        if verdict == "half":
            raise SystemExit(f"{namespace}: an interrupted operation half-exists: {entries[-1][0]}")
    state = replay(read_journal(journal))[0]
    signal.signal(signal.SIGTERM, lambda *_: (reg.close(), os._exit(0)))
    with open(journal, "a") as log:
        while True:
            names = sorted(state)
            roll = rng.random()
            if roll < 0.55 or not names:
                name = rng.choice(names) if names and rng.random() < 0.3 else f"{namespace}-{rng.randrange(10**6):06d}"
                n, replace = rng.randint(1, 3), rng.random() < 0.3
                op = {"op": "enroll", "name": name, "n": n, "replace": replace}
            elif roll < 0.8:
                op = {"op": "remove", "name": rng.choice(names)}
            else:
                new = f"{namespace}-{rng.randrange(10**6):06d}"
                op = {"op": "rename", "name": rng.choice(names), "new": new}
            if op["op"] == "rename" and op["new"] in state:
                continue
            log.write("try " + json.dumps(op) + "\n")
            log.flush()
            os.fsync(log.fileno())
            if op["op"] == "enroll":
                vectors = np.random.default_rng(rng.randrange(2**32)).standard_normal((op["n"], reg.dim))
                reg.enroll_embeddings(op["name"], vectors.astype(np.float32), replace=op["replace"])
            elif op["op"] == "remove":
                reg.remove(op["name"])
            else:
                reg.rename(op["name"], op["new"])
            log.write("ack\n")
            log.flush()
            os.fsync(log.fileno())
            state = apply(state, op)
            time.sleep(rng.uniform(0, 0.02))  # spread the operations so kills land among them


def read_journal(path: str) -> list[tuple[dict, bool]]:
    """``(op, acknowledged)`` in order; only the last may be unacknowledged (its worker died before ``ack``).
    ``applied``: the registry showed the last one did happen (it counts as acknowledged); ``undone``: it did
    not (it is dropped); ``half``: it half-happened (kept unacknowledged, and the run fails)."""
    entries: list[list] = []
    if os.path.exists(path):
        for line in Path(path).read_text().splitlines():
            if line.startswith("try "):
                try:
                    entries.append([json.loads(line[4:]), False])
                except json.JSONDecodeError:  # a line cut by the kill
                    continue
            elif line in ("ack", "applied") and entries:
                entries[-1][1] = True
            elif line == "undone" and entries:
                entries.pop()
            elif line == "half":
                entries.append([{"op": "half"}, False])
    return [(op, acked) for op, acked in entries]


def apply(state: dict, op: dict) -> dict:
    state = dict(state)
    if op["op"] == "enroll":
        state[op["name"]] = op["n"] if op["replace"] else state.get(op["name"], 0) + op["n"]
    elif op["op"] == "remove":
        state.pop(op["name"], None)
    else:
        state[op["new"]] = state.pop(op["name"])
    return state


def replay(entries) -> tuple[dict, dict | None]:
    """State after the acknowledged operations, and after those plus the unacknowledged last one (or None)."""
    state, pending = {}, None
    for op, acked in entries:
        if acked:
            state = apply(state, op)
            pending = None
        else:
            pending = op
    return state, (apply(state, pending) if pending and pending["op"] != "half" else None)


def namespace_state(names_clips: dict, namespace: str) -> dict:
    return {n: c for n, c in names_clips.items() if n.startswith(namespace + "-")}


def registry_state(path: Path) -> dict:
    import sqlite3

    db = sqlite3.connect(path / "registry.sqlite")
    try:
        return dict(db.execute("SELECT s.name, COUNT(c.id) FROM speakers s LEFT JOIN clips c ON c.speaker_id = s.id "
                               "GROUP BY s.id"))
    finally:
        db.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=1000, help="acknowledged operations to reach, both workers together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = p.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="soak_"))
    registry = tmp / "registry"
    journals = {ns: str(tmp / f"{ns}.journal") for ns in ("a", "b")}
    procs, kills, starts = {}, 0, 0
    backup_state = None
    t0 = time.monotonic()

    def start(ns: str) -> None:
        nonlocal starts
        code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from soak import worker; "
                f"worker({str(registry)!r}, {ns!r}, {journals[ns]!r}, {rng.randrange(2**31)})")
        procs[ns] = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
        starts += 1

    def acked() -> int:
        return sum(sum(a for _, a in read_journal(j)) for j in journals.values())

    # the first worker creates the registry; the second joins once it exists
    start("a")
    while not (registry / "registry.sqlite").exists():
        time.sleep(0.1)
    start("b")
    while acked() < args.ops:
        victim = rng.choice(sorted(procs))
        before = acked()
        while acked() == before and procs[victim].poll() is None:  # let the new worker get going first
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        kills += 1
        start(victim)
        if backup_state is None and acked() >= args.ops // 2:
            from asit_embed import load_encoder
            from enroll import SpeakerRegistry

            with SpeakerRegistry(registry, encoder=load_encoder()) as reg:
                reg.backup(tmp / "backup")
            backup_state = registry_state(tmp / "backup")
        print(f"\r{acked()} operations acknowledged, {kills} kills", end="", flush=True)
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        proc.wait(timeout=60)
    print()

    from asit_embed import load_encoder
    from enroll import SpeakerRegistry

    encoder = load_encoder()
    with SpeakerRegistry(registry, encoder=encoder) as reg:
        check = reg.check()
    final = registry_state(registry)
    problems = [] if check["ok"] else [f"check: {check['problems']}"]
    for ns, journal in journals.items():
        entries = read_journal(journal)
        if any(op["op"] == "half" for op, _ in entries):
            problems.append(f"namespace {ns}: an interrupted operation half-happened")
        done, maybe = replay(entries)
        have = namespace_state(final, ns)
        if have != done and have != maybe:
            problems.append(f"namespace {ns}: registry {len(have)} speakers does not match the journal "
                            f"({len(done)} acknowledged)")
    with SpeakerRegistry(tmp / "backup", encoder=encoder) as bak:
        backup_check = bak.check()
    if not backup_check["ok"]:
        problems.append(f"backup check: {backup_check['problems']}")
    for ns, journal in journals.items():  # the backup must be a state some prefix of the journal explains
        state, states = {}, [{}]
        for op, _ in read_journal(journal):
            if op["op"] != "half":
                state = apply(state, op)
                states.append(state)
        if namespace_state(backup_state, ns) not in states:
            problems.append(f"backup: namespace {ns} matches no prefix of its journal")
    verdicts = [line for j in journals.values() for line in Path(j).read_text().splitlines()]
    result = {"ops_acknowledged": acked(), "kills": kills, "worker_starts": starts, "speakers_at_end": len(final),
              "killed_mid_operation": {"then_found_applied": verdicts.count("applied"),
                                       "then_found_not_applied": verdicts.count("undone"),
                                       "half_applied": verdicts.count("half")},
              "backup_speakers": len(backup_state or {}), "check": check, "seconds": round(time.monotonic() - t0, 1),
              "problems": problems, "ok": not problems}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
