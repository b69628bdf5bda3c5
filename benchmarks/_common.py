"""Shared helpers for the benchmark scripts (they read the training corpus in ../shared)."""

import json
import sys
from pathlib import Path

SHARED_MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "speechocean762" / "manifest.csv"
RESULTS = Path(__file__).resolve().parent / "results"


def require(path: Path) -> Path:
    """Exit with a clear message when the corpus is not beside the checkout."""
    if not Path(path).is_file():
        print(f"manifest {path} not found: the benchmarks need the speechocean762 corpus "
              f"(pass --manifest)", file=sys.stderr)
        sys.exit(2)
    return Path(path)


def read_log(path: Path) -> list[dict]:
    """The records of a run's ``log.jsonl`` (one JSON object per epoch)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def previous_rows(result_path: Path, table: str, key: str) -> dict:
    """The rows of an earlier result file's ``table``, by their ``key`` field ({} when there is none yet),
    so that a run of a subset merges into it."""
    if not result_path.is_file():
        return {}
    return {r[key]: r for r in json.loads(result_path.read_text())[table]}
