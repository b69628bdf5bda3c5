"""The pieces of the ASiT pretraining objective, as pure functions: GMML corruption, paired crops, the
reconstruction / distillation / KoLeo losses, and the collapse diagnostics. :mod:`asit_embed.training.pretrain` puts
them together into the training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gmml_mask(shape: tuple[int, int, int], *, ratio: tuple[float, float] = (0.5, 0.7), max_block: float = 0.3,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Random block masks: ``(batch, n_mels, frames)`` bool, True where corrupted.

    Each sample draws a target fraction in ``ratio`` and adds rectangles (each at most ``max_block`` of the
    height and width) until the target is reached; the last block is trimmed so the area stays close to it
    and the crop is never wholly covered.
    """
    b, h, w = shape
    masks = torch.zeros(shape, dtype=torch.bool)
    for i in range(b):
        target = max(1, round(float(torch.empty(()).uniform_(*ratio, generator=generator)) * h * w))
        m = masks[i]
        while int(m.sum()) < target:
            bh = int(torch.randint(1, max(2, int(max_block * h) + 1), (), generator=generator))
            bw = int(torch.randint(1, max(2, int(max_block * w) + 1), (), generator=generator))
            y = int(torch.randint(0, h - bh + 1, (), generator=generator))
            x = int(torch.randint(0, w - bw + 1, (), generator=generator))
            block = torch.zeros_like(m)
            block[y:y + bh, x:x + bw] = True
            new = block & ~m
            missing = target - int(m.sum())
            if new.sum() > missing:  # trim: keep only as many new cells as needed, row by row
                flat = new.flatten().nonzero().squeeze(1)[:missing]
                new = torch.zeros(h * w, dtype=torch.bool)
                new[flat] = True
                new = new.view(h, w)
            m |= new
    return masks


def crop_pair(wave: torch.Tensor, n: int, max_shift: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``n``-sample crops of ``(samples,)`` ``wave`` (tiled first when shorter), whose starts lie at most
    ``max_shift`` samples apart (``None``: anywhere, independently)."""
    if wave.shape[0] < n:
        wave = wave.repeat(n // wave.shape[0] + 1)
    last = wave.shape[0] - n
    a = int(torch.randint(0, last + 1, ()))
    lo, hi = (0, last) if max_shift is None else (max(0, a - max_shift), min(last, a + max_shift))
    b = int(torch.randint(lo, hi + 1, ()))
    return wave[a:a + n], wave[b:b + n]


def gmml_corrupt(spec: torch.Tensor, mask: torch.Tensor, *, p_replace: float = 0.5) -> torch.Tensor:
    """Fill the masked area of ``spec (batch, n_mels, frames)``: with probability ``p_replace`` per sample
    the same area of the next clip in the batch, otherwise Gaussian noise or zeros (even odds)."""
    b = spec.shape[0]
    choice = torch.rand(b)
    noise = torch.randn_like(spec) * (torch.rand(b) < 0.5).float().view(b, 1, 1)  # noise, or zeros
    other = spec.roll(1, dims=0)
    fill = torch.where((choice < p_replace).view(b, 1, 1) & (b > 1), other, noise)
    return torch.where(mask, fill, spec)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 over corrupted cells only (``mask`` True); 0 when nothing is masked."""
    m = mask.float()
    return ((recon - target).abs() * m).sum() / m.sum().clamp(min=1)


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko–Leonenko spread regulariser (DINOv2): −mean log distance from each L2-normalised row of
    ``x (batch, dim)`` to its nearest neighbour. Applied to the student's global bottleneck, it keeps
    different clips apart there, so the teacher (its average) cannot map every clip to one output that
    centering then turns into uniform targets. Neither torch nor SpeechBrain ships it."""
    x = F.normalize(x.float(), dim=-1)
    d = torch.cdist(x, x)
    d = d + torch.eye(len(x), dtype=d.dtype) * 4.0  # distances of unit vectors are <= 2: never pick oneself
    return -torch.log(d.min(1).values + eps).mean()


def teacher_log_probs(teacher: torch.Tensor, center: torch.Tensor, t_t: float) -> torch.Tensor:
    """The teacher's centred, sharpened target distribution over the last dim, as log-probabilities."""
    return F.log_softmax((teacher - center) / t_t, dim=-1)


def distill_loss(student: torch.Tensor, log_t: torch.Tensor, t_s: float) -> torch.Tensor:
    """KL(teacher ‖ student) over the last dim, ``log_t`` from :func:`teacher_log_probs`.

    DINO minimises the cross-entropy H(t, s); KL = H(t, s) − H(t) has the same gradient for the student
    (the teacher gets none) but, unlike the cross-entropy, falls as the student learns even while
    centering raises the teacher's entropy — so the logged value shows progress.
    """
    return (log_t.exp() * (log_t - F.log_softmax(student / t_s, dim=-1))).sum(-1).mean()


@torch.no_grad()
def target_entropy(log_t: torch.Tensor) -> tuple[float, float]:
    """Collapse diagnostics of the teacher's targets (``log_t`` from :func:`teacher_log_probs`), in nats:
    the mean per-sample entropy and the entropy of the batch-mean distribution.

    Healthy distillation has sharp targets that differ between samples (low first, high second). Both near
    ``log K`` means the targets are uniform and carry nothing (the teacher's outputs barely differ between
    clips); both near 0 means one prototype wins for all.
    """
    log_t = log_t.flatten(0, -2)
    p = log_t.exp()
    per_sample = -(p * log_t).sum(-1).mean()
    mean = p.mean(0)
    return float(per_sample), float(-(mean * mean.clamp_min(1e-12).log()).sum())


@torch.no_grad()
def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine similarity between different rows of ``x (batch, dim)``: near 1 when every clip's CLS is the
    same vector, which is what uniform global targets come from."""
    x = F.normalize(x.float(), dim=-1)
    n = len(x)
    return float(((x @ x.T).sum() - n) / max(1, n * (n - 1)))
