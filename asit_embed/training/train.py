"""Supervised training of a speaker-embedding network: speaker classification with AAM-softmax on random crops.

Resumable (``last.pt`` after every epoch, RNG reseeded per epoch so a resumed run equals an uninterrupted
one), wall-clock budgeted, keeps the best checkpoint by dev EER, logs one JSON line per epoch, and runs
data-parallel under ``torchrun`` (gloo on CPU, NCCL on GPU) with the same command.

The network is the ASiT encoder by default; any other embedding network trains through the same loop when
passed as a :class:`Network` (its module, its front-end, and how it embeds full clips), so peers such as
SpeechBrain's ECAPA-TDNN get exactly our recipe.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from asit_embed.audio import DEFAULT_SAMPLE_RATE as SAMPLE_RATE
from asit_embed.checkpoint import load_checkpoint, save_checkpoint
from asit_embed.encoder import SpeakerEncoder
from asit_embed.features import features, samples_for_frames
from asit_embed.model import ASiTEncoder, EncoderConfig
from asit_embed.training.augment import AugmentConfig, Augmenter
from asit_embed.training.data import CropDataset, Item, SpeakerLabels, corpus_weights, load_sources, load_waveforms
from asit_embed.training.finetune import class_centroids, load_init, param_groups
from asit_embed.training.losses import AAMSoftmax, accuracy, margin_at
from asit_embed.training.metrics import evaluate_embeddings
from asit_embed.training.runs import Budget, LoopConfig, RunFolder, lr_at, seed_all
from asit_embed.training.teacher import TeacherHead

log = logging.getLogger(__name__)

STATE_FORMAT = "asit-embed/train-state"


@dataclass(frozen=True, kw_only=True)
class TrainConfig(LoopConfig):
    """Everything a training run depends on; saved as ``config.json`` in the run folder."""

    data: str | tuple[str, ...]                # manifest .csv, folder-per-speaker tree, archive; or several
    out_dir: str = "runs/train"
    train_role: str | None = "train"
    dev_data: str | tuple[str, ...] | None = None  # defaults to ``data``
    dev_role: str | None = "dev"
    encoder: dict = field(default_factory=dict)  # EncoderConfig fields (preset applied by the caller)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Several corpora: each corpus's share of the crops follows its number of speakers (False: every clip
    # equally likely, so a corpus of many short clips dominates).
    balance_corpora: bool = True
    first_corpus_share: float | None = None    # fixes the first dataset's share of the crops (e.g. 0.5)
    epoch_clips: int | None = None             # crops per epoch; None: one per training clip
    speed_speakers: tuple[float, ...] = ()     # e.g. (0.9, 1.1): sped-up / slowed-down copies as new speakers
    # > 0: each batch is cut to a random length between this many frames and the full crop, so the network also
    # learns from the short inputs that one-second clips give it at inference (0: every batch is a full crop)
    min_crop_frames: int = 0
    # training crops in frames; 0: the encoder's own crop (the length its positional table was made for).
    # Longer crops stretch that table as the inference windows of long clips do (e.g. 300: train on the 3 s
    # windows a long clip is embedded in)
    train_crop_frames: int = 0
    # distillation from the Resemblyzer teacher (needs asit-embed[train]); 0 switches it off
    w_teacher: float = 0.0
    teacher_cache: str | None = None           # .npz of the teacher's embeddings (default: in the run folder)
    w_relation: float = 0.0                    # > 0: also match the teacher's pairwise cosines (TeacherHead)
    # fine-tuning
    init: str | None = None                    # encoder checkpoint (e.g. from pretraining) to start from
    layer_decay: float = 1.0                   # < 1 scales deeper-to-shallower lrs
    head_warmup_epochs: int = 0                # epochs training only the new heads (network frozen)
    # "centroids": each class weight starts as its speaker's mean embedding under the initial network
    # (weight imprinting), so fine-tuning from a trained encoder does not first have to undo a random head
    head_init: str = "random"
    # AAM-softmax: margin 0 for margin_start epochs, then raised linearly over margin_ramp epochs
    margin: float = 0.2
    scale: float = 30.0
    margin_start: int = 2
    margin_ramp: int = 10
    # model selection on dev: every eval_every epochs, n_enroll enrollment clips per speaker
    eval_every: int = 1
    n_enroll: int = 5

    def __post_init__(self) -> None:
        for name in ("data", "dev_data"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "speed_speakers", tuple(self.speed_speakers))
        if any(s <= 0 or s == 1 for s in self.speed_speakers):
            raise ValueError(f"speed_speakers {self.speed_speakers} must be positive factors other than 1")
        if self.head_init not in ("random", "centroids"):
            raise ValueError(f"head_init {self.head_init!r} must be 'random' or 'centroids'")
        if self.min_crop_frames < 0:
            raise ValueError(f"min_crop_frames {self.min_crop_frames} must be >= 0")
        if self.train_crop_frames < 0:
            raise ValueError(f"train_crop_frames {self.train_crop_frames} must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        return cls(**d)


@dataclass
class Network:
    """An embedding network as :func:`train` sees it.

    Attributes:
        module: features ``(batch, n_mels, frames)`` -> embeddings ``(batch, embedding_dim)``.
        front_end: waveforms ``(batch, samples)`` at 16 kHz -> features ``(batch, n_mels, frames)``.
        embedding_dim: size of the embeddings.
        embed: full clips (mono float32 arrays) -> ``(n, dim)`` unit-norm embeddings, for dev selection.
        save: writes the network to a path with JSON-ready metadata (``best.pt``).
        depth: transformer blocks, for layer-wise lr decay (0: one lr for all).
    """

    module: nn.Module
    front_end: Callable[[torch.Tensor], torch.Tensor]
    embedding_dim: int
    embed: Callable[[Sequence[np.ndarray]], np.ndarray]
    save: Callable[[Path, dict], object]
    depth: int = 0


def asit_network(encoder: ASiTEncoder) -> Network:
    """The ASiT encoder as a :class:`Network`: our fbank front-end, windowed embedding, checkpoint format."""
    c = encoder.config

    def front_end(waves: torch.Tensor) -> torch.Tensor:
        return torch.stack([features(w, c.front_end) for w in waves]).transpose(1, 2)

    def embed(waves: Sequence[np.ndarray]) -> np.ndarray:
        # Selection scores in the reference precision, on the device the model trains on.
        device = str(next(encoder.parameters()).device)
        return SpeakerEncoder.from_model(encoder, device=device, precision="float32")._embed_prepared(waves)

    def save(path: Path, metadata: dict) -> Path:
        return save_checkpoint(path, encoder, metadata=metadata)

    return Network(encoder, front_end, c.embedding_dim, embed, save, depth=c.depth)


def feature_stats(items: list[Item], config: EncoderConfig, *, limit: int = 200) -> tuple[float, float]:
    """Mean and std of (CMN'd) log-mel values over up to ``limit`` clips, for the config's normalisation."""
    plain = dataclasses.replace(config.front_end, feat_mean=0.0, feat_std=1.0)
    feats = [features(torch.from_numpy(w), plain)
             for w in load_waveforms(items[:: max(1, len(items) // limit)], config.sample_rate)]
    x = torch.cat(feats)
    return float(x.mean()), float(x.std())


class _Trainable(nn.Module):
    """Network + AAM head (+ the teacher's projection head) in one module, so DDP synchronises them all."""

    def __init__(self, encoder: nn.Module, loss: AAMSoftmax, teacher_head: TeacherHead | None = None):
        super().__init__()
        self.encoder, self.loss, self.teacher_head = encoder, loss, teacher_head

    def forward(self, spec, labels, targets=None, mask=None):
        """``(aam_loss, cosines, distillation_loss or None)``."""
        emb = self.encoder(spec)
        loss, cosine = self.loss(emb, labels)
        distill = None if self.teacher_head is None else self.teacher_head(emb, targets, mask)
        return loss, cosine, distill


def _build_asit(cfg: TrainConfig, state: dict | None, train_items: list[Item]) -> Network:
    if state is not None:
        enc_cfg = EncoderConfig.from_dict(state["encoder_config"])
    elif cfg.init:
        init = load_checkpoint(cfg.init)
        enc_cfg = init.config.replace(**cfg.encoder)
    else:
        enc_cfg = EncoderConfig.from_dict(cfg.encoder)
        mean, std = feature_stats(train_items, enc_cfg)
        enc_cfg = enc_cfg.replace(feat_mean=mean, feat_std=std)
    seed_all(cfg.seed)  # same initial weights on every rank and every run
    encoder = ASiTEncoder(enc_cfg)
    if state is None and cfg.init:
        load_init(encoder, init.state_dict, cfg.init)
    return asit_network(encoder)


def epoch_order(data: CropDataset, items: list[Item], cfg: TrainConfig, epoch: int) -> torch.Tensor:
    """The dataset indices of one epoch, the same on every rank: a permutation of one corpus's clips, or a
    draw weighted by :func:`~asit_embed.training.data.corpus_weights` when several corpora are balanced."""
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    n = cfg.epoch_clips or len(data)
    if cfg.balance_corpora and len({it.corpus for it in items}) > 1:
        weights = corpus_weights(items, cfg.first_corpus_share).repeat(len(data) // len(items))
        return torch.multinomial(weights, n, replacement=True, generator=gen)
    order = torch.randperm(len(data), generator=gen)
    return order.repeat(n // len(data) + 1)[:n]


def train(cfg: TrainConfig, *, resume: bool = False, network: Network | None = None,
          on_epoch: Callable[[dict, nn.Module], None] | None = None) -> dict:
    """Train a speaker-embedding network; returns the final log record.

    Writes into ``cfg.out_dir``: ``config.json``, ``log.jsonl``, ``last.pt`` (resumable state), ``final.pt``
    (the network after the last epoch) and ``best.pt``
    (best dev EER). ``network``: another embedding network to train instead of the ASiT encoder
    (``cfg.encoder`` and ``cfg.init`` are then unused). ``on_epoch(record, module)`` runs on every rank after
    each epoch.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main = rank == 0
    run = RunFolder(cfg.out_dir, STATE_FORMAT)

    train_items = load_sources(cfg.data, role=cfg.train_role, workdir=run.path)
    dev_items = (load_sources(cfg.dev_data or cfg.data, role=cfg.dev_role, workdir=run.path)
                 if cfg.dev_role is not None or cfg.dev_data else [])
    labels = SpeakerLabels([it.speaker for it in train_items])
    overlap = set(labels.names) & {it.speaker for it in dev_items}
    if overlap:
        raise ValueError(f"dev speakers {sorted(overlap)[:5]} are also training speakers; dev must be unseen "
                         "(a folder of speaker sub-folders has no roles: pass a separate dev set, or no dev set)")

    state = run.load_state() if resume else None
    if network is None:
        network = _build_asit(cfg, state, train_items)
    else:
        seed_all(cfg.seed)
    # The ASiT encoder's crop fills its positional table; another network takes the default crop (2 s).
    asit = isinstance(network.module, ASiTEncoder)
    enc_cfg = network.module.config if asit else EncoderConfig()
    crop_samples = samples_for_frames(cfg.train_crop_frames or enc_cfg.crop_frames, enc_cfg.front_end)
    data = CropDataset(train_items, labels, crop_samples=crop_samples, sample_rate=SAMPLE_RATE,
                       speed_factors=cfg.speed_speakers)
    teacher = _teacher_targets(cfg, train_items, run, world, main) if cfg.w_teacher > 0 else None
    model = _Trainable(network.module, AAMSoftmax(network.embedding_dim, data.num_speakers, margin=0.0,
                                                  scale=cfg.scale),
                       TeacherHead(network.embedding_dim, teacher.shape[1], relation=cfg.w_relation,
                                   teacher_mean=teacher.mean(0)) if teacher is not None else None)
    opt = torch.optim.AdamW(param_groups(model, network.depth, weight_decay=cfg.weight_decay,
                                         layer_decay=cfg.layer_decay), lr=cfg.lr)
    start_epoch, best = 0, {"dev_eer": math.inf}
    budget = Budget(cfg.max_minutes, state["elapsed"] if state else 0.0)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"] + 1, state["best"]
    elif cfg.head_init == "centroids":
        model.loss.classifier.weight.data.copy_(class_centroids(network, data, device))
    model.to(device)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    extra = {"encoder": enc_cfg.to_dict()} if asit else {}
    if main:
        run.write_config({"train": cfg.to_dict(), **extra, "world_size": world,
                          "train_clips": len(train_items), "train_speakers": len(labels),
                          "classes": data.num_speakers})

    dev_waves = load_waveforms(dev_items, SAMPLE_RATE) if main else []
    augment = Augmenter(cfg.augment, SAMPLE_RATE)
    per_rank = (cfg.epoch_clips or len(data)) // world
    steps_per_epoch = per_rank // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{per_rank * world} crops over {world} process(es) do not fill one batch of {cfg.batch_size}")
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch

    record = {}
    if state is not None and budget.spent():
        start_epoch = cfg.epochs
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.monotonic()
        mine = epoch_order(data, train_items, cfg, epoch)[rank * per_rank:(rank + 1) * per_rank]
        seed_all(cfg.seed * 100003 + epoch * 101 + rank)
        model.loss.set_margin(margin_at(epoch, final=cfg.margin, start=cfg.margin_start, ramp=cfg.margin_ramp))
        ddp.train()
        steps = range(steps_per_epoch)
        if cfg.progress and main:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
        sum_loss = sum_acc = sum_distill = 0.0
        frozen = epoch < cfg.head_warmup_epochs  # a new head learns before it may move the network
        for step in steps:
            idx = mine[step * cfg.batch_size:(step + 1) * cfg.batch_size].tolist()
            waves = augment.wave(torch.stack([data[i][0] for i in idx]))
            y = data.labels[idx]
            spec = random_length(augment.spec(network.front_end(waves)), cfg.min_crop_frames)
            lr = lr_at(epoch * steps_per_epoch + step, total_steps, warmup_steps, cfg.lr, cfg.min_lr)
            for g in opt.param_groups:
                g["lr"] = 0.0 if frozen and g["network"] else lr * g["lr_scale"]
            targets = mask = None
            if teacher is not None:
                # Speed-perturbed copies are other voices: the teacher's embedding of the clip does not apply.
                targets, mask = teacher[[i % len(train_items) for i in idx]], torch.tensor(idx) < len(train_items)
                targets, mask = targets.to(device), mask.to(device)
            loss, cosine, distill = ddp(spec.to(device), y.to(device), targets, mask)
            if distill is not None:
                sum_distill += float(distill.detach())
                loss = loss + cfg.w_teacher * distill
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sum_loss += float(loss.detach())
            sum_acc += accuracy(cosine.detach(), y.to(device))
        record = {"epoch": epoch + 1, "loss": sum_loss / steps_per_epoch, "train_acc": sum_acc / steps_per_epoch,
                  **({"distill": sum_distill / steps_per_epoch} if teacher is not None else {}),
                  "lr": lr, "margin": model.loss.margin,
                  "epoch_seconds": round(time.monotonic() - t0, 1)}
        last = epoch + 1 == cfg.epochs or budget.no_room_for(t0, world=world, device=device)
        if main:
            if dev_items and ((epoch + 1) % cfg.eval_every == 0 or last):
                network.module.eval()
                res = evaluate_embeddings(network.embed(dev_waves), [it.speaker for it in dev_items],
                                          [it.path for it in dev_items], n_enroll=cfg.n_enroll)
                record.update(dev_top1=res.top1, dev_eer=res.eer, dev_min_dcf=res.min_dcf)
                if res.eer < best["dev_eer"]:
                    best = {"dev_eer": res.eer, "dev_top1": res.top1, "dev_min_dcf": res.min_dcf, "epoch": epoch + 1}
                    network.save(run.path / "best.pt", _metadata(cfg, labels, best, world))
            record["wall_seconds"] = round(budget.elapsed(), 1)
            run.append_log(record)
            log.info("epoch %s", record)
            run.save_state({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "best": best, "elapsed": budget.elapsed(), **({"encoder_config": extra["encoder"]}
                                                                         if extra else {})})
            if not dev_items:
                network.save(run.path / "best.pt", _metadata(cfg, labels, best, world))
        if on_epoch is not None:
            on_epoch(record, network.module)
        if last:
            if main:  # the network as the schedule left it, beside the best by dev EER
                network.save(run.path / "final.pt", _metadata(cfg, labels, {**best, "final_epoch": epoch + 1}, world))
            break
    if world > 1:
        dist.barrier()
    if own_group:  # a gloo group left to the interpreter's exit can abort a process ("terminate called ...")
        dist.destroy_process_group()
    return record


def random_length(spec: torch.Tensor, min_frames: int) -> torch.Tensor:
    """A random stretch of ``(batch, n_mels, frames)`` ``spec``, the same for the whole batch, between
    ``min_frames`` and all its frames long (``min_frames`` 0: ``spec`` unchanged)."""
    frames = spec.shape[-1]
    if min_frames <= 0 or min_frames >= frames:
        return spec
    n = int(torch.randint(min_frames, frames + 1, ()))
    start = int(torch.randint(0, frames - n + 1, ()))
    return spec[..., start:start + n]


def _teacher_targets(cfg: TrainConfig, items: list[Item], run: RunFolder, world: int, main: bool) -> torch.Tensor:
    """``(len(items), 256)`` teacher embeddings of the training clips, computed once into the cache (by the
    first process under ``torchrun``; the others wait for it)."""
    from asit_embed.training.teacher import teacher_embeddings

    cache = cfg.teacher_cache or str(run.path / "teacher.npz")
    if world > 1 and not main:
        dist.barrier()
    emb = teacher_embeddings([it.path for it in items], cache)
    if world > 1 and main:
        dist.barrier()
    return torch.from_numpy(emb)


def _metadata(cfg: TrainConfig, labels: SpeakerLabels, best: dict, world: int) -> dict:
    return {"speakers": labels.names, "train": {**cfg.to_dict(), "world_size": world}, "dev": best}
