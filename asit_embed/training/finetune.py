"""Starting from a trained encoder: its weights (:func:`load_init`), a speaker head imprinted with the
classes' mean embeddings (:func:`class_centroids`), and lower learning rates for its earlier blocks
(:func:`param_groups`, layer-wise lr decay)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from asit_embed.model import ASiTEncoder

if TYPE_CHECKING:  # the training loop imports this module
    from asit_embed.training.data import CropDataset
    from asit_embed.training.train import Network

log = logging.getLogger(__name__)


def load_init(encoder: ASiTEncoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy every encoder weight from ``state``; any missing or mis-shaped tensor is an error. A whitening in
    ``state`` (``tools/whiten.py``, with its pre-head analysis) is left out: it was fitted to the weights being trained away from."""
    own = encoder.state_dict()
    if any(k.startswith(("whitening.", "prehead.")) for k in state):
        log.info("%s carries a whitening; fine-tuning starts without it (tools/whiten.py fits a new one)", source)
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad:
        details = ", ".join(f"{k} {tuple(state[k].shape) if k in state else 'missing'} vs {tuple(own[k].shape)}"
                            for k in bad[:5])
        raise ValueError(f"{source!r} does not fit this encoder: {details}")
    encoder.load_state_dict({k: state[k] for k in own})


@torch.no_grad()
def class_centroids(network: Network, data: CropDataset, device: torch.device, *, crops: int = 4,
                    batch_size: int = 64) -> torch.Tensor:
    """``(num_classes, dim)`` unit-norm mean embeddings of ``crops`` un-augmented crops per class.

    Runs under the caller's seed, so every process of a data-parallel run computes the same weights."""
    module = network.module.to(device)
    was_training = module.training
    module.eval()
    picks = [i for c in range(data.num_speakers)
             for i in (data.labels == c).nonzero().flatten()[torch.randperm(int((data.labels == c).sum()))[:crops]]]
    sums = torch.zeros(data.num_speakers, network.embedding_dim)
    for start in range(0, len(picks), batch_size):
        idx = [int(i) for i in picks[start:start + batch_size]]
        emb = module(network.front_end(torch.stack([data[i][0] for i in idx])).to(device)).float().cpu()
        sums.index_add_(0, data.labels[idx], nn.functional.normalize(emb, dim=1))
    module.train(was_training)
    return nn.functional.normalize(sums, dim=1)


def param_groups(model: nn.Module, depth: int, *, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups of a model holding the network as ``encoder`` beside its heads: no decay on norms, biases
    and tokens; each group's ``lr_scale`` decays by ``layer_decay`` per block below the heads (1: none)."""
    def layer_id(name: str) -> int:
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        if name.startswith(("encoder.patch_embed", "encoder.cls_token", "encoder.pos_embed")):
            return 0
        return depth + 1

    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, p in model.named_parameters():
        no_decay = p.ndim == 1 or name.endswith(("cls_token", "pos_embed"))
        lid = layer_id(name)
        network = name.startswith("encoder.")
        g = groups.setdefault((lid, no_decay, network), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - lid), "network": network})
        g["params"].append(p)
    return list(groups.values())
