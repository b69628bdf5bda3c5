"""Run mechanics shared by every training loop: the run folder, seeding, the wall-clock budget, the schedule.

A run folder holds ``config.json`` (what the run depends on), ``log.jsonl`` (one JSON record per epoch) and
``last.pt`` (the resumable state, replaced atomically after every epoch). Re-seeding from the epoch number at
the start of each epoch makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """What every training loop here shares: the optimiser's schedule, seeding, the budget, progress."""

    epochs: int = 80                 # length of the learning-rate schedule
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: int = 3
    weight_decay: float = 0.05
    grad_clip: float = 3.0
    seed: int = 0
    max_minutes: float | None = None
    progress: bool = False


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cosine(start: float, end: float, t: float) -> float:
    """Half-cosine from ``start`` (``t = 0``) to ``end`` (``t >= 1``)."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(1.0, max(0.0, t))))


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to ``min_lr`` at ``total`` steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return cosine(lr, min_lr, (step - warmup) / max(1, total - warmup))


class RunFolder:
    """``config.json``, ``log.jsonl`` and the atomically replaced ``last.pt`` of one run."""

    def __init__(self, out_dir: str | os.PathLike, state_format: str):
        self.path = Path(out_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.state_path = self.path / "last.pt"
        self.log_path = self.path / "log.jsonl"
        self.state_format = state_format

    def load_state(self) -> dict | None:
        """The saved state, or ``None`` when there is none; a foreign ``last.pt`` is an error."""
        if not self.state_path.is_file():
            return None
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != self.state_format:
            raise ValueError(f"{self.state_path} is not a {self.state_format!r} state")
        log.info("resuming from %s after epoch %d", self.state_path, state["epoch"] + 1)
        return state

    def save_state(self, state: dict) -> None:
        tmp = self.state_path.with_name("last.pt.tmp")
        torch.save({"format": self.state_format, **state}, tmp)
        os.replace(tmp, self.state_path)  # a crash never leaves a half-written state under the real name

    def write_config(self, config: dict) -> None:
        (self.path / "config.json").write_text(json.dumps(config, indent=2))

    def append_log(self, record: dict) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a ``log.jsonl`` (a run folder or the file itself); ``[]`` when there is none yet."""
    path = Path(path)
    if path.is_dir():
        path = path / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Budget:
    """A wall-clock budget in minutes (``None``: unlimited) that counts the time of earlier runs of a resumed one."""

    def __init__(self, max_minutes: float | None, elapsed: float = 0.0):
        self.max_minutes, self.elapsed_before = max_minutes, elapsed
        self.t_run = time.monotonic()

    def elapsed(self) -> float:
        """Seconds spent by this run and the earlier runs it resumed."""
        return self.elapsed_before + time.monotonic() - self.t_run

    def spent(self) -> bool:
        """True (and logged) when earlier runs already used the whole budget: nothing to resume."""
        if self.max_minutes is None or self.elapsed_before < self.max_minutes * 60:
            return False
        log.info("the %s-minute budget was already spent (%.1f min): nothing to resume",
                 self.max_minutes, self.elapsed_before / 60)
        return True

    def no_room_for(self, t_epoch: float, *, world: int = 1, device="cpu") -> bool:
        """True when another epoch as long as the one begun at ``t_epoch`` would overrun the budget (agreed
        across ranks under ``torchrun``)."""
        if self.max_minutes is None:
            return False
        now = time.monotonic()
        stop = torch.tensor(float(self.elapsed() + (now - t_epoch) > self.max_minutes * 60), device=device)
        if world > 1:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop:
            log.info("stopping: another epoch would overrun the %s-minute budget", self.max_minutes)
        return bool(stop)
