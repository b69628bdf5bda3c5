"""What the SSL experiments share (a module, not a script): where the corpus and their results are, their
common options, the result files they merge into, and the pretraining arms of the ablation."""

import argparse
import json
from pathlib import Path

from asit_embed.cli import main as cli

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results"
SHARED_MANIFEST = REPO.parent / "shared" / "data" / "speechocean762" / "manifest.csv"

KOLEO = ["--w-koleo", "0.3", "--teacher-temp", "0.02", "--teacher-temp-end", "0.02"]
# arm -> (pretraining epochs, extra `asit-embed pretrain` arguments); None: no pretraining
ARMS = {
    "a_scratch": None,
    "b_recon_only": (3, ["--w-global", "0", "--w-local", "0"]),
    "c_gmml_local_global": (3, []),
    "c2_gmml_local_global_ema099": (6, ["--ema-start", "0.99"]),
    "d_gmml_local_global_koleo": (6, KOLEO),
    "d15_gmml_local_global_koleo": (15, KOLEO),
}


def manifest_file(value: str) -> Path:
    """``--manifest``: an existing file, or a clear error."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} not found: the experiments need the speechocean762 corpus")
    return path


def parser(doc: str, *, out: str | None = None, subset: tuple[str, dict] | None = None) -> argparse.ArgumentParser:
    """An experiment's parser with ``--manifest`` (checked when parsed), ``--seed``, ``--out`` given its default,
    and given ``subset = (flag, runs)`` that flag to choose some of the named runs (default: all)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=manifest_file, default=str(SHARED_MANIFEST),
                   help="speechocean762 manifest (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    if out is not None:
        p.add_argument("--out", type=Path, default=Path(out), help="run folder (default: %(default)s)")
    if subset is not None:
        flag, runs = subset
        p.add_argument(flag, nargs="+", choices=list(runs), default=list(runs),
                       help="run only these; they are merged into the earlier result file")
    return p


def previous_rows(name: str, table: str, key: str) -> dict:
    """The rows of an earlier ``results/<name>``'s ``table``, by their ``key`` field ({} when there is none yet),
    so that a run of a subset merges into it."""
    path = RESULTS / name
    if not path.is_file():
        return {}
    return {r[key]: r for r in json.loads(path.read_text())[table]}


def write_result(name: str, result: dict) -> Path:
    """Write ``results/<name>`` (JSON)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def pretrain_arm(spec: tuple[int, list[str]], root: Path, seed: int, manifest: Path) -> Path:
    """Pretrain (or resume, or read back) an arm's encoder into ``root/pretrain``; returns ``encoder.pt``."""
    epochs, extra = spec
    cli(["pretrain", "--data", str(manifest), "--out", str(root / "pretrain"), "--epochs", str(epochs),
         "--warmup-epochs", "1", "--seed", str(seed), "--resume", *extra])
    return root / "pretrain" / "encoder.pt"
