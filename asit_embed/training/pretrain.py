"""ASiT self-supervised pretraining: GMML masked spectrogram modelling + local–global teacher–student.

Following Atito et al., "ASiT: Local-Global Audio Spectrogram vIsion Transformer for Event
Classification" (TASLP 2024), scaled down for small CPUs:

- **GMML corruption** (:func:`~asit_embed.training.ssl_objectives.gmml_corrupt`): 50–70 % of each crop's area is
  covered by random blocks (each up to 30 % of the height/width, not aligned to patches), filled with
  noise, zeros, or — for some samples — the same area of another clip in the batch.
- **Reconstruction**: a linear head maps each student token back to its patch; L1 on the corrupted area only.
- **Global**: DINO-style distillation of the CLS token across two views (teacher sees clean crops;
  projection head, centering, teacher temperature warm-up).
- **Local**: token-level distillation of every patch token of the same view.
- Teacher = EMA of the student, momentum on a cosine schedule from ``ema_start`` to 1.
- Optional **KoLeo** spread (``w_koleo``, from DINOv2) on the student's global bottleneck: on this small
  corpus the global targets otherwise go uniform within two epochs (every clip gets the same teacher output,
  which centering flattens); `experiments/ssl/global_targets.py` measures it.

Only unlabelled audio is used; the result is an encoder checkpoint that ``asit-embed train --init`` fine-tunes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from asit_embed.checkpoint import load_checkpoint, save_checkpoint
from asit_embed.training.data import CropDataset, SpeakerLabels, load_sources
from asit_embed.features import features, samples_for_frames
from asit_embed.model import ASiTEncoder, EncoderConfig
from asit_embed.training.ssl_objectives import (crop_pair, distill_loss, gmml_corrupt, gmml_mask, koleo_loss,
                                       mean_pairwise_cosine, reconstruction_loss, target_entropy,
                                       teacher_log_probs)
from asit_embed.training.finetune import load_init
from asit_embed.training.train import epoch_order, feature_stats
from asit_embed.training.runs import Budget, LoopConfig, RunFolder, cosine, lr_at, read_log, seed_all

log = logging.getLogger(__name__)

STATE_FORMAT = "asit-embed/pretrain-state"


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(LoopConfig):
    data: str | tuple[str, ...]      # manifest .csv, folder or archive; or several (labels are unused)
    out_dir: str = "runs/pretrain"
    role: str | None = "train"
    encoder: dict = field(default_factory=dict)
    # a longer, gentler schedule than supervised training (ASiT / DINO)
    epochs: int = 100
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    # weight decay rises on a cosine from weight_decay to weight_decay_end
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    # GMML
    mask_ratio: tuple[float, float] = (0.5, 0.7)
    max_block: float = 0.3
    p_replace: float = 0.5           # per sample: fill from another clip instead of noise/zeros
    # teacher–student
    ema_start: float = 0.996
    global_dim: int = 1024           # 8192 in the paper; scaled down with the data
    local_dim: int = 256             # 1024 in the paper
    teacher_temp: float = 0.04
    teacher_temp_end: float = 0.07
    teacher_temp_epochs: int = 30
    student_temp: float = 0.1
    center_momentum: float = 0.9
    w_koleo: float = 0.0             # KoLeo spread of the student's global bottleneck (DINOv2); 0: off
    view_shift: float | None = None  # max seconds between the two crops of a clip; None: independent crops
    # loss weights; 0 switches a term off
    w_global: float = 1.0
    w_local: float = 1.0
    w_recon: float = 2.0
    # data: a clip shorter than two crops is joined with other clips of its speaker (labels used only for
    # that); several corpora are sampled by speakers as in fine-tuning (epoch_clips crops per epoch)
    epoch_clips: int | None = None
    balance_corpora: bool = True
    first_corpus_share: float | None = None
    init: str | None = None          # encoder checkpoint to continue from (its config and feature statistics)

    def __post_init__(self) -> None:
        if isinstance(self.data, list):
            object.__setattr__(self, "data", tuple(self.data))
        object.__setattr__(self, "mask_ratio", tuple(self.mask_ratio))
        lo, hi = self.mask_ratio
        if not 0 < lo <= hi < 1:
            raise ValueError(f"mask_ratio {self.mask_ratio} must satisfy 0 < low <= high < 1")
        if not 0 <= self.ema_start <= 1:
            raise ValueError(f"ema_start {self.ema_start} must be in [0, 1]")
        if self.view_shift is not None and self.view_shift < 0:
            raise ValueError(f"view_shift {self.view_shift} must be >= 0 seconds")
        if self.w_global == self.w_local == self.w_recon == 0:
            raise ValueError("every loss weight is 0: nothing to train")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Head(nn.Module):
    """DINO projection head: 3-layer MLP, L2-normalised bottleneck, weight-normalised prototype layer."""

    def __init__(self, width: int, out_dim: int, hidden: int = 512, bottleneck: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.bottleneck(x))


class ASiTPretrainer(nn.Module):
    """Student encoder + global / local / reconstruction heads; the teacher is an EMA copy of all of it."""

    def __init__(self, config: EncoderConfig, cfg: PretrainConfig):
        super().__init__()
        self.encoder = ASiTEncoder(config)
        w = config.width
        self.global_head = Head(w, cfg.global_dim)
        self.local_head = Head(w, cfg.local_dim)
        self.recon = nn.Linear(w, config.patch_size[0] * config.patch_size[1])

    def tokens(self, spec: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(spec)[0]

    def reconstruct(self, tokens: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens → spectrogram ``(batch, n_mels, frames)`` (overlaps averaged) and a coverage mask."""
        c = self.encoder.config
        b, n, _ = tokens.shape
        n_t = n // c.freq_patches
        patches = self.recon(tokens).view(b, n_t, c.freq_patches, -1)           # time-major tokens
        cols = patches.permute(0, 3, 2, 1).reshape(b, -1, c.freq_patches * n_t)  # fold wants row-major (f, t)
        out_size = (c.n_mels, (n_t - 1) * c.patch_stride[1] + c.patch_size[1])
        fold = dict(output_size=out_size, kernel_size=c.patch_size, stride=c.patch_stride)
        summed = F.fold(cols, **fold)
        count = F.fold(torch.ones_like(cols[:1]), **fold)
        recon = (summed / count.clamp(min=1)).squeeze(1)
        covered = (count > 0).squeeze(1).squeeze(0)
        return F.pad(recon, (0, size[1] - out_size[1])), F.pad(covered, (0, size[1] - out_size[1]))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def build_student_teacher(enc_cfg: EncoderConfig, cfg: PretrainConfig) -> tuple[ASiTPretrainer, ASiTPretrainer]:
    """The student and its teacher: a frozen copy kept in eval mode, so its targets are deterministic (no
    stochastic depth, as in DINO / ASiT) and it moves only by :func:`ema_update`."""
    student = ASiTPretrainer(enc_cfg, cfg)
    teacher = copy.deepcopy(student).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def pretrain(cfg: PretrainConfig, *, resume: bool = False) -> dict:
    """Pretrain; writes ``config.json``, ``log.jsonl``, ``last.pt`` (resumable) and ``encoder.pt`` into
    ``cfg.out_dir``. Returns the last log record."""
    run = RunFolder(cfg.out_dir, STATE_FORMAT)
    items = load_sources(cfg.data, role=cfg.role, workdir=run.path)
    state = run.load_state() if resume else None
    init = None
    if state is not None:
        enc_cfg = EncoderConfig.from_dict(state["encoder_config"])
    elif cfg.init:
        init = load_checkpoint(cfg.init)
        enc_cfg = init.config.replace(**cfg.encoder)
    else:
        enc_cfg = EncoderConfig.from_dict(cfg.encoder)
        mean, std = feature_stats(items, enc_cfg)
        enc_cfg = enc_cfg.replace(feat_mean=mean, feat_std=std)
    seed_all(cfg.seed)
    student, teacher = build_student_teacher(enc_cfg, cfg)
    if init is not None:  # the teacher starts as the student does: the initial encoder, fresh heads
        load_init(student.encoder, init.state_dict, cfg.init)
        teacher.load_state_dict(student.state_dict())
    centers = {"global": torch.zeros(cfg.global_dim), "local": torch.zeros(cfg.local_dim)}
    decay = [p for n, p in student.named_parameters() if p.ndim > 1 and not n.endswith(("cls_token", "pos_embed"))]
    no_decay = [p for n, p in student.named_parameters() if not (p.ndim > 1 and not n.endswith(("cls_token", "pos_embed")))]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    start_epoch = 0
    budget = Budget(cfg.max_minutes, state["elapsed"] if state else 0.0)
    if state is not None:
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        opt.load_state_dict(state["optimizer"])
        centers = state["centers"]
        start_epoch = state["epoch"] + 1
    run.write_config({"pretrain": cfg.to_dict(), "encoder": enc_cfg.to_dict()})

    crop = samples_for_frames(enc_cfg.crop_frames, enc_cfg.front_end)
    data = CropDataset(items, SpeakerLabels([it.speaker for it in items]), crop_samples=crop,
                       sample_rate=enc_cfg.sample_rate)
    steps = (cfg.epoch_clips or len(data)) // cfg.batch_size
    if steps == 0:
        raise ValueError(f"{cfg.epoch_clips or len(data)} clips do not fill one batch of {cfg.batch_size}")
    total = cfg.epochs * steps

    max_shift = None if cfg.view_shift is None else round(cfg.view_shift * enc_cfg.sample_rate)

    def views(idx: list[int]) -> torch.Tensor:
        """Two crops of each clip (a short one joined with others of its speaker first), all first views then
        all second views: ``(2B, n_mels, frames)``."""
        pairs = [crop_pair(data.speaker_run(i, 2 * crop), crop, max_shift) for i in idx]
        return torch.stack([features(w, enc_cfg.front_end).T for view in zip(*pairs) for w in view])

    record = {}
    if state is not None and budget.spent():
        start_epoch = cfg.epochs
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.monotonic()
        seed_all(cfg.seed * 100003 + epoch)
        perm = epoch_order(data, items, cfg, epoch).tolist()
        t_t = cfg.teacher_temp_end if epoch >= cfg.teacher_temp_epochs else (
            cfg.teacher_temp + (cfg.teacher_temp_end - cfg.teacher_temp) * epoch / max(1, cfg.teacher_temp_epochs))
        sums = {"global": 0.0, "local": 0.0, "recon": 0.0, "koleo": 0.0, "total": 0.0}
        diagnostics = {}  # collapse diagnostics (target entropies, teacher CLS cosine), summed over the epoch
        it = range(steps)
        if cfg.progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"pretrain {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
        student.train()
        for step in it:
            g = epoch * steps + step
            lr = lr_at(g, total, cfg.warmup_epochs * steps, cfg.lr, cfg.min_lr)
            opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = lr
            opt.param_groups[0]["weight_decay"] = cosine(cfg.weight_decay_end, cfg.weight_decay, 1 - g / total)
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            clean = views(idx)
            mask = gmml_mask(tuple(clean.shape), ratio=cfg.mask_ratio, max_block=cfg.max_block)
            corrupted = gmml_corrupt(clean, mask, p_replace=cfg.p_replace)
            s_tok = student.tokens(corrupted)
            if cfg.w_global or cfg.w_local:
                with torch.no_grad():
                    t_tok = teacher.tokens(clean)
            losses = {}
            b = len(idx)
            if cfg.w_global:
                z_s = student.global_head.bottleneck(s_tok[:, 0])
                s_g, t_g = student.global_head.last(z_s), teacher.global_head(t_tok[:, 0])
                swapped = torch.cat([t_g[b:], t_g[:b]])             # view 1 learns from view 2 and back
                log_t = teacher_log_probs(swapped, centers["global"], t_t)
                losses["global"] = distill_loss(s_g, log_t, cfg.student_temp)
                _add_entropy(diagnostics, "global", target_entropy(log_t))
                cos = mean_pairwise_cosine(t_tok[:, 0])
                diagnostics["teacher_cls_cosine"] = diagnostics.get("teacher_cls_cosine", 0.0) + cos
                centers["global"] = centers["global"] * cfg.center_momentum + t_g.mean(0) * (1 - cfg.center_momentum)
            if cfg.w_koleo and cfg.w_global:
                losses["koleo"] = (koleo_loss(z_s[:b]) + koleo_loss(z_s[b:])) / 2
            if cfg.w_local:
                s_l, t_l = student.local_head(s_tok[:, 1:]), teacher.local_head(t_tok[:, 1:])
                log_t = teacher_log_probs(t_l, centers["local"], t_t)
                losses["local"] = distill_loss(s_l, log_t, cfg.student_temp)
                _add_entropy(diagnostics, "local", target_entropy(log_t))
                centers["local"] = (centers["local"] * cfg.center_momentum
                                    + t_l.mean((0, 1)) * (1 - cfg.center_momentum))
            if cfg.w_recon:
                recon, covered = student.reconstruct(s_tok[:, 1:], clean.shape[1:])
                losses["recon"] = reconstruction_loss(recon, clean, mask & covered)
            loss = (cfg.w_global * losses.get("global", 0) + cfg.w_local * losses.get("local", 0)
                    + cfg.w_recon * losses.get("recon", 0) + cfg.w_koleo * losses.get("koleo", 0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
            opt.step()
            momentum = cosine(cfg.ema_start, 1.0, g / total)
            ema_update(teacher, student, momentum)
            for k, v in losses.items():
                sums[k] += float(v.detach())
            sums["total"] += float(loss.detach())
        record = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items() if k in losses or k == "total"},
                  **{k: round(v / steps, 4) for k, v in diagnostics.items()},
                  "lr": lr, "teacher_temp": t_t, "ema": momentum,
                  "epoch_seconds": round(time.monotonic() - t0, 1), "wall_seconds": round(budget.elapsed(), 1)}
        run.append_log(record)
        log.info("pretrain epoch %s", json.dumps(record))
        _warn_if_uniform(record, cfg)
        run.save_state({"epoch": epoch, "student": student.state_dict(), "teacher": teacher.state_dict(),
                        "optimizer": opt.state_dict(), "centers": centers, "elapsed": budget.elapsed(),
                        "encoder_config": enc_cfg.to_dict()})
        # The teacher's encoder is the smoother of the two (as in DINO / ASiT); it is what fine-tuning starts from.
        save_checkpoint(run.path / "encoder.pt", teacher.encoder,
                        metadata={"pretrain": {**cfg.to_dict(), "epochs_done": epoch + 1}})
        if budget.no_room_for(t0):
            break
    return record


def _add_entropy(sums: dict, term: str, values: tuple[float, float]) -> None:
    for key, v in zip((f"{term}_target_entropy", f"{term}_batch_entropy"), values):
        sums[key] = sums.get(key, 0.0) + v


def _warn_if_uniform(record: dict, cfg: PretrainConfig) -> None:
    """Uniform targets make a distillation loss trivially small: say so instead of letting it look like progress."""
    for term, dim in (("global", cfg.global_dim), ("local", cfg.local_dim)):
        h = record.get(f"{term}_target_entropy")
        if h is not None and h > 0.95 * math.log(dim):
            log.warning("%s distillation targets are near-uniform (entropy %.2f of %.2f nats): the teacher's outputs "
                        "barely differ between clips (centering outweighs sharpening), so this loss teaches little "
                        "and its falling value is not progress; the other terms still train the encoder (for the "
                        "global term, --w-koleo 0.3 with --teacher-temp 0.02 keeps the targets informative)",
                        term, h, math.log(dim))


def plot_log(log_path: str | os.PathLike, out: str | os.PathLike):
    """One panel per loss term of a pretraining ``log.jsonl``; returns the (closed) figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    terms = [k for k in ("global", "local", "recon", "koleo", "total", "global_target_entropy", "local_target_entropy")
             if k in records[0]]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.6 * len(terms), 3.2), squeeze=False)
    for ax, k in zip(axes[0], terms):
        ax.plot([r["epoch"] for r in records], [r[k] for r in records])
        ax.set_title(k.replace("_", " ") if "entropy" in k else f"{k} loss")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return fig
