"""Classification with an additive angular margin (AAM-softmax), from SpeechBrain's pieces."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
from torch import nn


class CosineClassifier(nn.Module):
    """Cosine similarity between unit embeddings and unit class weights: ``(batch, n_classes)`` in [-1, 1]."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))


class AAMSoftmax(nn.Module):
    """Cosine head + SpeechBrain's :class:`AdditiveAngularMargin` + :class:`LogSoftmaxWrapper` (cross-entropy).

    The margin can be raised during warm-up with :meth:`set_margin` (SpeechBrain fixes its margin
    constants at construction, so the margin module is rebuilt; it has no parameters).

    >>> loss_fn = AAMSoftmax(4, 3, margin=0.0, scale=10.0)
    >>> loss, cosine = loss_fn(torch.randn(2, 4), torch.tensor([0, 2]))
    >>> cosine.shape
    torch.Size([2, 3])
    """

    def __init__(self, dim: int, n_classes: int, *, margin: float = 0.2, scale: float = 30.0):
        super().__init__()
        self.classifier = CosineClassifier(dim, n_classes)
        self.scale = scale
        self.set_margin(margin)

    @property
    def margin(self) -> float:
        return self._margin

    def set_margin(self, margin: float) -> None:
        self._margin = float(margin)
        self.criterion = LogSoftmaxWrapper(AdditiveAngularMargin(margin=self._margin, scale=self.scale))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss over the batch and the ``(batch, n_classes)`` cosines (for accuracy)."""
        cosine = self.classifier(embeddings)
        return self.criterion(cosine.unsqueeze(1), labels.unsqueeze(1)), cosine


def margin_at(epoch: float, *, final: float, start: float, ramp: float) -> float:
    """Margin schedule (WeSpeaker's): 0 before ``start`` epochs, linear to ``final`` over ``ramp`` epochs."""
    if epoch < start:
        return 0.0
    return final if ramp <= 0 else final * min(1.0, (epoch - start) / ramp)


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``(batch, n_classes)`` scores against ``(batch,)`` labels."""
    return float((scores.argmax(1) == labels).float().mean())
