"""Supervised training of the encoder: speaker classification with AAM-softmax on random crops.

Resumable (``last.pt`` after every epoch, RNG reseeded per epoch so a resumed run equals an uninterrupted
one), wall-clock budgeted, keeps the best checkpoint by dev EER, logs one JSON line per epoch, and runs
data-parallel under ``torchrun`` (gloo on CPU, NCCL on GPU) with the same command.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from asit_embed.augment import AugmentConfig, Augmenter
from asit_embed.checkpoint import load_checkpoint, save_checkpoint
from asit_embed.data import CropDataset, Item, SpeakerLabels, load_items, load_waveforms
from asit_embed.encoder import SpeakerEncoder
from asit_embed.features import fbank, normalize, num_frames, samples_for_frames
from asit_embed.losses import AAMSoftmax, accuracy, margin_at
from asit_embed.metrics import evaluate_embeddings
from asit_embed.model import ASiTEncoder, EncoderConfig

log = logging.getLogger(__name__)

STATE_FORMAT = "asit-embed/train-state"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` in the run folder."""

    data: str                                  # manifest .csv, folder-per-speaker tree, or archive
    out_dir: str = "runs/train"
    train_role: str | None = "train"
    dev_data: str | None = None                # defaults to ``data``
    dev_role: str | None = "dev"
    encoder: dict = field(default_factory=dict)  # EncoderConfig fields (preset applied by the caller)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 80
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    layer_decay: float = 1.0                   # < 1 scales deeper-to-shallower lrs (fine-tuning from --init)
    grad_clip: float = 3.0
    margin: float = 0.2
    scale: float = 30.0
    margin_start: int = 2
    margin_ramp: int = 10
    eval_every: int = 1
    n_enroll: int = 5
    seed: int = 0
    max_minutes: float | None = None
    init: str | None = None                    # encoder checkpoint (e.g. from pretraining) to start from
    progress: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        return cls(**d)


def feature_stats(items: list[Item], config: EncoderConfig, *, limit: int = 200) -> tuple[float, float]:
    """Mean and std of (CMN'd) log-mel values over up to ``limit`` clips, for the config's normalisation."""
    plain = dataclasses.replace(config, feat_mean=0.0, feat_std=1.0)
    feats = [normalize(fbank(torch.from_numpy(w), plain), plain)
             for w in load_waveforms(items[:: max(1, len(items) // limit)], config.sample_rate)]
    x = torch.cat(feats)
    return float(x.mean()), float(x.std())


class _Trainable(nn.Module):
    """Encoder + AAM head in one module, so DDP synchronises both."""

    def __init__(self, encoder: ASiTEncoder, loss: AAMSoftmax):
        super().__init__()
        self.encoder, self.loss = encoder, loss

    def forward(self, spec, labels):
        return self.loss(self.encoder(spec), labels)


def _param_groups(model: _Trainable, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no decay on norms/biases/tokens; optional layer-wise lr decay over the blocks."""
    depth = model.encoder.config.depth

    def layer_id(name: str) -> int:
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        if name.startswith(("encoder.patch_embed", "encoder.cls_token", "encoder.pos_embed")):
            return 0
        return depth + 1

    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        no_decay = p.ndim == 1 or name.endswith(("cls_token", "pos_embed"))
        lid = layer_id(name)
        g = groups.setdefault((lid, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            "lr_scale": cfg.layer_decay ** (depth + 1 - lid)})
        g["params"].append(p)
    return list(groups.values())


def _lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    """Train an encoder; returns the final log record. Writes into ``cfg.out_dir``:
    ``config.json``, ``log.jsonl``, ``last.pt`` (resumable state) and ``best.pt`` (best dev EER)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main = rank == 0
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "last.pt"

    train_items = load_items(cfg.data, role=cfg.train_role, workdir=out)
    dev_items = (load_items(cfg.dev_data or cfg.data, role=cfg.dev_role, workdir=out)
                 if cfg.dev_role is not None or cfg.dev_data else [])
    labels = SpeakerLabels([it.speaker for it in train_items])
    overlap = set(labels.names) & {it.speaker for it in dev_items}
    if overlap:
        raise ValueError(f"dev speakers {sorted(overlap)[:5]} are also training speakers; dev must be unseen")

    state = None
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{state_path} is not a training state")
        enc_cfg = EncoderConfig(**state["encoder_config"])
    elif cfg.init:
        init = load_checkpoint(cfg.init)
        enc_cfg = dataclasses.replace(init.config, **cfg.encoder)
    else:
        enc_cfg = EncoderConfig(**cfg.encoder)
        mean, std = feature_stats(train_items, enc_cfg)
        enc_cfg = dataclasses.replace(enc_cfg, feat_mean=mean, feat_std=std)

    _seed_all(cfg.seed)  # same initial weights on every rank and every run
    encoder = ASiTEncoder(enc_cfg)
    if state is None and cfg.init:
        _load_init(encoder, init.state_dict, cfg.init)
    model = _Trainable(encoder, AAMSoftmax(enc_cfg.embedding_dim, len(labels), margin=0.0, scale=cfg.scale))
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr)
    start_epoch, best, elapsed = 0, {"dev_eer": math.inf}, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best, elapsed = state["epoch"] + 1, state["best"], state["elapsed"]
        log.info("resumed from %s at epoch %d", state_path, start_epoch)
    model.to(device)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if main:
        (out / "config.json").write_text(json.dumps({"train": cfg.to_dict(), "encoder": enc_cfg.to_dict(),
                                                     "world_size": world}, indent=2))

    crop_samples = samples_for_frames(enc_cfg.crop_frames, enc_cfg)
    assert num_frames(crop_samples, enc_cfg) == enc_cfg.crop_frames
    data = CropDataset(train_items, labels, crop_samples=crop_samples, sample_rate=enc_cfg.sample_rate)
    dev_waves = load_waveforms(dev_items, enc_cfg.sample_rate) if main else []
    augment = Augmenter(cfg.augment, enc_cfg.sample_rate)
    per_rank = len(data) // world
    steps_per_epoch = per_rank // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data)} clips over {world} process(es) do not fill one batch of {cfg.batch_size}")
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch

    t_run, record = time.monotonic(), {}
    if state is not None and budget_spent(elapsed, cfg.max_minutes):
        start_epoch = cfg.epochs
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.monotonic()
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        mine = perm[rank * per_rank:(rank + 1) * per_rank]
        _seed_all(cfg.seed * 100003 + epoch * 101 + rank)
        model.loss.set_margin(margin_at(epoch, final=cfg.margin, start=cfg.margin_start, ramp=cfg.margin_ramp))
        ddp.train()
        steps = range(steps_per_epoch)
        if cfg.progress and main:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
        sum_loss = sum_acc = 0.0
        for step in steps:
            idx = mine[step * cfg.batch_size:(step + 1) * cfg.batch_size].tolist()
            waves = torch.stack([data[i][0] for i in idx])
            y = data.labels[idx]
            waves = augment.wave(waves)
            spec = torch.stack([normalize(fbank(w, enc_cfg), enc_cfg) for w in waves]).transpose(1, 2)
            spec = augment.spec(spec)
            lr = _lr_at(epoch * steps_per_epoch + step, total_steps, warmup_steps, cfg)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            loss, cosine = ddp(spec.to(device), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sum_loss += float(loss.detach())
            sum_acc += accuracy(cosine.detach(), y.to(device))
        record = {"epoch": epoch + 1, "loss": sum_loss / steps_per_epoch, "train_acc": sum_acc / steps_per_epoch,
                  "lr": lr, "margin": model.loss.margin, "epoch_seconds": round(time.monotonic() - t0, 1)}
        if world > 1:
            record["param_checksums"] = _gather_checksums(model, world)
        if main:
            if dev_items and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                enc = SpeakerEncoder.from_model(model.encoder, device=str(device))
                res = evaluate_embeddings(enc.embed_waveforms(dev_waves), [it.speaker for it in dev_items],
                                          [it.path for it in dev_items], n_enroll=cfg.n_enroll)
                record.update(dev_top1=res.top1, dev_eer=res.eer, dev_min_dcf=res.min_dcf)
                if res.eer < best["dev_eer"]:
                    best = {"dev_eer": res.eer, "dev_top1": res.top1, "dev_min_dcf": res.min_dcf, "epoch": epoch + 1}
                    save_checkpoint(out / "best.pt", model.encoder, metadata=_metadata(cfg, labels, best, world))
            elapsed_now = elapsed + time.monotonic() - t_run
            record["wall_seconds"] = round(elapsed_now, 1)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            log.info("epoch %s", json.dumps(record))
            torch.save({"format": STATE_FORMAT, "epoch": epoch, "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "best": best, "elapsed": elapsed_now,
                        "encoder_config": enc_cfg.to_dict()}, out / "last.pt.tmp")
            os.replace(out / "last.pt.tmp", state_path)
        if not dev_items and main:
            save_checkpoint(out / "best.pt", model.encoder, metadata=_metadata(cfg, labels, best, world))
        if cfg.max_minutes is not None and _out_of_time(t_run - elapsed, t0, cfg.max_minutes, world, device):
            log.info("stopping after epoch %d: wall-clock budget of %s min reached", epoch + 1, cfg.max_minutes)
            break
    if world > 1:
        dist.barrier()
    return record


def budget_spent(elapsed: float, max_minutes: float | None) -> bool:
    """True (and logged) when a resumed run's earlier runs already used up its ``max_minutes`` budget."""
    if max_minutes is None or elapsed < max_minutes * 60:
        return False
    log.info("the %s-minute budget was already spent (%.1f min): nothing to resume", max_minutes, elapsed / 60)
    return True


def _out_of_time(t_start: float, t_epoch: float, max_minutes: float, world: int, device) -> bool:
    """True when another epoch as long as the last would overrun the budget (agreed across ranks).
    ``t_start``: when the budget began, on this run's monotonic clock (earlier runs' time subtracted)."""
    now = time.monotonic()
    stop = torch.tensor(float(now - t_start + (now - t_epoch) > max_minutes * 60), device=device)
    if world > 1:
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    return bool(stop)


def _gather_checksums(model: nn.Module, world: int) -> list[float]:
    local = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    return [float(g) for g in gathered]


def _metadata(cfg: TrainConfig, labels: SpeakerLabels, best: dict, world: int) -> dict:
    return {"speakers": labels.names, "train": {**cfg.to_dict(), "world_size": world}, "dev": best}


def _load_init(encoder: ASiTEncoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy every encoder weight from ``state``; any missing or mis-shaped tensor is an error."""
    own = encoder.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad:
        details = ", ".join(f"{k} {tuple(state[k].shape) if k in state else 'missing'} vs {tuple(own[k].shape)}"
                            for k in bad[:5])
        raise ValueError(f"{source!r} does not fit this encoder: {details}")
    encoder.load_state_dict({k: state[k] for k in own})
