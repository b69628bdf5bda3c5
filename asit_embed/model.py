"""The ASiT speaker encoder: a Vision Transformer over the log-mel spectrogram.

The spectrogram ``(n_mels, frames)`` is cut into patches (square ``16×16`` or frame-like ``128×2``, with an
optional stride for overlap), a CLS token is prepended, and pre-norm transformer blocks mix them. The
embedding head fuses the *global* CLS token with *local* attentive statistics pooled over the patch tokens
and projects the result to the speaker-embedding size. A checkpoint may carry a fixed :class:`Whitening`,
fitted on the training speakers' embeddings once training is done (``tools/whiten.py``), which
:class:`~asit_embed.encoder.SpeakerEncoder` applies to a clip's embedding after averaging its windows, and
a :class:`PreHead` branch: a second analysis, of the head's input, whose output joins the embedding.

Tokens are ordered time-major (all frequency patches of time step 0, then of step 1, ...), so the valid
tokens of a zero-padded clip always form a prefix and a batch of clips of different lengths gives the same
embeddings as one clip at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling
from torch import nn

from asit_embed.config import EncoderConfig, asit_small, asit_tiny


class PatchEmbed(nn.Module):
    """Spectrogram ``(batch, n_mels, frames)`` to time-major patch tokens ``(batch, tokens, width)``."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, config.width, kernel_size=config.patch_size, stride=config.patch_stride)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.proj(spec.unsqueeze(1))  # (B, D, F', T')
        return x.permute(0, 3, 2, 1).flatten(1, 2)  # (B, T'·F', D), time-major


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]  # True = attend
        if q.dtype == torch.bfloat16 and q.device.type == "cpu" and not torch.is_grad_enabled():
            x = _attention_bf16(q, k, v, attn_mask)
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


def _attention_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Inference attention in bfloat16 on the CPU as two batched products around a float32 softmax.

    Written out because at our sizes (about 100 tokens, 64-dim heads) PyTorch's CPU kernels for
    ``scaled_dot_product_attention`` in bfloat16 take twice as long (flash) or longer (math) than these two
    products, and attention was a third of the encoder's time (``benchmarks/throughput.py``). The softmax
    runs in float32, so the embeddings match float32 as closely as SDPA's in bfloat16.
    """
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.float().softmax(-1).to(v.dtype) @ v


class DropPath(nn.Module):
    """Stochastic depth per sample (a few lines; timm, which has it, is not a dependency)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Whitening(nn.Module):
    """A fixed affine map of the unit-norm embedding, ``(e / |e| - mean) @ matrix``, fitted after training.
    ``matrix`` is ``(d, k)`` with ``k <= d``: square for the embedding's whitening, fewer columns for a
    :class:`PreHead` analysis, which keeps its first ``k`` directions.

    ``tools/whiten.py`` fits it as a linear discriminant analysis of the training speakers' embeddings
    (:func:`asit_embed.training.backend.fit_whitening`): centred, and scaled so that the spread of one
    speaker's clips is the same in every direction, which cosine scoring assumes. It is part of the weights
    (the fingerprint includes it) but not of :meth:`ASiTEncoder.forward` (nor of the ONNX graph): it maps a
    clip's embedding, the average of its windows' (:meth:`ASiTEncoder.whiten`), in float32 under any autocast.

    >>> w = Whitening(torch.zeros(4), torch.eye(4))
    >>> w(torch.tensor([[3.0, 0.0, 4.0, 0.0]]))
    tensor([[0.6000, 0.0000, 0.8000, 0.0000]])
    """

    def __init__(self, mean: torch.Tensor, matrix: torch.Tensor):
        super().__init__()
        if mean.ndim != 1 or matrix.ndim != 2 or matrix.shape[0] != len(mean) or not 0 < matrix.shape[1] <= len(mean):
            raise ValueError(f"whitening needs a (d,) mean and a (d, k) matrix with 0 < k <= d, got "
                             f"{tuple(mean.shape)} and {tuple(matrix.shape)}")
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("matrix", matrix.detach().float().clone())

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        with torch.autocast(e.device.type, enabled=False):
            return (F.normalize(e.float(), dim=1) - self.mean) @ self.matrix


class PreHead(nn.Module):
    """A second analysis of a clip, beside its (whitened) embedding: of the ``3 * width`` features the
    embedding head reads (CLS token ⊕ attentive mean and standard deviation of the patch tokens), which hold
    speaker information the head's projection drops.

    ``tools/whiten.py --prehead-share`` fits it like the whitening (a linear discriminant analysis of the
    training speakers, :func:`asit_embed.training.backend.fit_whitening`) and keeps its first ``k``
    directions. The clip embedding becomes ``[sqrt(1 - share) * e, sqrt(share) * p]`` for the unit vectors
    ``e`` (the whitened embedding) and ``p`` (this analysis), still unit norm, so its cosine is
    ``(1 - share) * cos(e) + share * cos(p)``: a fusion of two scores that a registry and FAISS's inner
    product compute in one product. Fixed after training; part of the weights and the fingerprint.
    """

    def __init__(self, mean: torch.Tensor, matrix: torch.Tensor, share: float):
        super().__init__()
        if not 0 < float(share) < 1:
            raise ValueError(f"pre-head share {float(share)} must lie in (0, 1)")
        self.whitening = Whitening(mean, matrix)
        self.register_buffer("share", torch.tensor(float(share)))

    @property
    def dim(self) -> int:
        return self.whitening.matrix.shape[1]


class ASiTEncoder(nn.Module):
    """Spectrogram Vision Transformer with a local–global speaker-embedding head.

    >>> model = ASiTEncoder(asit_tiny(depth=2)).eval()
    >>> model(torch.randn(3, 128, 150)).shape
    torch.Size([3, 192])
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        d = config.width
        self.patch_embed = PatchEmbed(config)
        n_pos = config.time_patches(config.crop_frames) * config.freq_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, d))
        rates = torch.linspace(0, config.drop_path, config.depth).tolist()
        self.blocks = nn.ModuleList(Block(d, config.num_heads, config.mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.pool = AttentiveStatisticsPooling(d, attention_channels=config.pool_attention_dim)
        self.head = nn.Linear(3 * d, config.embedding_dim)
        self.head_norm = nn.BatchNorm1d(config.embedding_dim)
        self.whitening: Whitening | None = None  # set by set_whitening (state_dict keys "whitening.*")
        self.prehead: PreHead | None = None  # set by set_prehead (state_dict keys "prehead.*")
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def _pos_embed(self, valid: torch.Tensor, n_time: int) -> torch.Tensor:
        """Positional tables ``(batch, n_time * freq_patches, width)`` for clips of ``valid`` patch columns
        each: the stored table cropped for a clip no longer than it, stretched along time for a longer one
        (linear, as ``F.interpolate(mode="bilinear", align_corners=False)`` stretches it: the frequency axis
        keeps its size). Written as a gather with tensor arithmetic rather than one ``F.interpolate`` per clip,
        so a traced graph (the ONNX export) stays dynamic in batch and length."""
        c = self.config
        table = self.pos_embed.view(-1, c.freq_patches, c.width)  # (T'max, F', D)
        size = table.shape[0]
        scale = (size / valid.clamp(min=1).to(table.dtype)).clamp(max=1.0)[:, None]  # 1: cropped
        src = ((torch.arange(n_time, device=table.device, dtype=table.dtype)[None, :] + 0.5) * scale - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=size - 1)
        i1 = (i0 + 1).clamp(max=size - 1)
        w = (src - i0.to(table.dtype))[..., None, None]
        return (table[i0] * (1 - w) + table[i1] * w).flatten(1, 2)

    def _valid_time(self, lengths: torch.Tensor) -> torch.Tensor:
        c = self.config
        return (torch.div(lengths - c.patch_size[1], c.patch_stride[1], rounding_mode="floor") + 1).clamp(min=0)

    def token_mask(self, lengths: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """``(batch, tokens)`` bool, True for patch tokens lying wholly inside each clip's ``lengths`` frames."""
        n_valid = self._valid_time(lengths) * self.config.freq_patches
        return torch.arange(n_tokens, device=lengths.device)[None, :] < n_valid[:, None]

    def forward_features(self, spec: torch.Tensor, lengths: torch.Tensor | None = None):
        """Transformer tokens of a batch of spectrograms.

        Args:
            spec: ``(batch, n_mels, frames)`` float32, normalised features, zero-padded past each length.
            lengths: ``(batch,)`` int64 valid frames per clip; ``None`` when every clip fills ``frames``.

        Returns:
            ``(tokens, mask)``: ``(batch, 1 + patches, width)`` normalised tokens (CLS first) and the
            ``(batch, patches)`` bool validity mask of the patch tokens (``None`` without ``lengths``).
        """
        c = self.config
        if spec.shape[1] != c.n_mels:
            raise ValueError(f"expected {c.n_mels} mel bins, got input of shape {tuple(spec.shape)}")
        if spec.shape[2] < c.min_frames:
            raise ValueError(f"input has {spec.shape[2]} frames; at least {c.min_frames} are needed")
        x = self.patch_embed(spec)
        n_time = x.shape[1] // c.freq_patches
        # Each clip gets the table for its own length (stretched past the training crop's length).
        valid = torch.full((x.shape[0],), n_time, device=x.device) if lengths is None else self._valid_time(lengths)
        x = x + self._pos_embed(valid, n_time)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        mask = None if lengths is None else self.token_mask(lengths, x.shape[1] - 1)
        attn_mask = None if mask is None else F.pad(mask, (1, 0), value=True)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.norm(x), mask

    def head_input(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The global CLS token beside attentive statistics of the patch tokens: ``(batch, 3 * width)``."""
        cls, patches = tokens[:, 0], tokens[:, 1:]
        rel = None
        if mask is not None:
            # SpeechBrain masks positions < rel·L; half a token below the count keeps float error out of it.
            rel = (mask.sum(1).to(patches.dtype) - 0.5) / patches.shape[1]
        stats = self.pool(patches.transpose(1, 2), rel).squeeze(-1)  # (B, 2D)
        return torch.cat([cls, stats], dim=1)

    def forward_head(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse the global CLS token with attentive statistics of the patch tokens: ``(batch, embedding_dim)``."""
        return self.head_norm(self.head(self.head_input(tokens, mask)))

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Speaker embeddings of windows (not yet unit-normalised, nor whitened): ``(batch, embedding_dim)``;
        with a :class:`PreHead`, the head's input follows: ``(batch, window_dim)``."""
        tokens, mask = self.forward_features(spec, lengths)
        x = self.head_input(tokens, mask)
        e = self.head_norm(self.head(x))
        return e if self.prehead is None else torch.cat([e, x], dim=1)

    @property
    def window_dim(self) -> int:
        """Size of :meth:`forward`'s output."""
        return self.config.embedding_dim + (0 if self.prehead is None else 3 * self.config.width)

    @property
    def output_dim(self) -> int:
        """Size of a clip embedding (:meth:`whiten`'s output)."""
        return self.config.embedding_dim + (0 if self.prehead is None else self.prehead.dim)

    def unit_windows(self, e: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s output unit-normalised, each part (embedding, head input) on its own, in float32:
        what a clip's windows are averaged as."""
        e = e.float()
        if self.prehead is None:
            return F.normalize(e, dim=1)
        d = self.config.embedding_dim
        return torch.cat([F.normalize(e[:, :d], dim=1), F.normalize(e[:, d:], dim=1)], dim=1)

    def whiten(self, e: torch.Tensor) -> torch.Tensor:
        """Clip embeddings ``(batch, window_dim)`` through the :class:`Whitening`, if the model has one
        (unit-normalised first either way), and beside them their :class:`PreHead` analysis, if it has one
        (then unit norm: ``(batch, output_dim)``)."""
        d = self.config.embedding_dim
        head = e[:, :d] if self.prehead is not None else e
        out = F.normalize(head.float(), dim=1) if self.whitening is None else self.whitening(head)
        if self.prehead is None:
            return out
        share = float(self.prehead.share)
        pre = F.normalize(self.prehead.whitening(e[:, d:]), dim=1)
        return torch.cat([(1 - share) ** 0.5 * F.normalize(out, dim=1), share ** 0.5 * pre], dim=1)

    def set_whitening(self, mean: torch.Tensor | None, matrix: torch.Tensor | None = None) -> None:
        """Add (or replace) the :class:`Whitening` of clip embeddings; ``None`` removes it."""
        if mean is None:
            self.whitening = None
            return
        d = self.config.embedding_dim
        if matrix is None:
            raise ValueError("a whitening needs a matrix beside its mean")
        if tuple(mean.shape) != (d,):
            raise ValueError(f"whitening mean of shape {tuple(mean.shape)} does not fit embedding_dim {d}")
        if tuple(matrix.shape) != (d, d):
            raise ValueError(f"whitening matrix of shape {tuple(matrix.shape)} is not ({d}, {d})")
        self.whitening = Whitening(mean, matrix).to(self.head.weight.device)

    def set_prehead(self, mean: torch.Tensor | None, matrix: torch.Tensor | None = None, share: float = 0.5) -> None:
        """Add (or replace) the :class:`PreHead` analysis: ``mean (3 * width,)``, ``matrix (3 * width, k)``
        and the share of the cosine it carries; ``None`` removes it."""
        if mean is None:
            self.prehead = None
            return
        d = 3 * self.config.width
        if matrix is None:
            raise ValueError("a pre-head analysis needs a matrix beside its mean")
        if tuple(mean.shape) != (d,):
            raise ValueError(f"pre-head mean of shape {tuple(mean.shape)} does not fit the head's input of {d}")
        self.prehead = PreHead(mean, matrix, share).to(self.head.weight.device)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        w = m.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))


__all__ = ["EncoderConfig", "ASiTEncoder", "Whitening", "PreHead", "PatchEmbed", "Attention", "Block", "asit_tiny", "asit_small"]
