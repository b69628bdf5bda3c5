"""The peer systems the product benchmarks measure our encoder against (a module, not a script).

- ECAPA-TDNN: SpeechBrain's C=512 model over its own 80-dim ``Fbank`` front-end (:class:`ECAPA`); it trains with
  our recipe through our training loop as the :class:`~asit_embed.training.train.Network` of :func:`ecapa_network`.
- Resemblyzer 0.1.4 off the shelf (:func:`resemblyzer`; ``pip install 'asit-embed[train]'``): a GE2E encoder
  trained on thousands of VoxCeleb and LibriSpeech speakers, its weights inside the wheel.
- MFCC: mean + standard deviation of 20 MFCCs per clip (:func:`mfcc_stats`), compared by cosine; no training.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from torch import nn
from torchaudio.compliance import kaldi

from asit_embed.audio import load_audio
from asit_embed.training.teacher import Resemblyzer
from asit_embed.training.train import Network

ECAPA_NAME = "SpeechBrain ECAPA-TDNN C=512, 80-dim Fbank"
ECAPA_DIM = 192
ECAPA_FORMAT = "asit-embed/ecapa-benchmark"
MFCC_NAME = "MFCC mean+std (20 coeffs), cosine"
RESEMBLYZER_NAME = "Resemblyzer 0.1.4 (GE2E, off the shelf)"


class ECAPA(nn.Module):
    """SpeechBrain's ECAPA-TDNN C=512 with its front-end.

    ``features``: waveforms ``(batch, samples)`` at 16 kHz -> 80-dim fbank with per-utterance mean
    normalisation, ``(batch, 80, frames)``; calling the module: those features -> 192-dim embeddings.
    """

    def __init__(self):
        super().__init__()
        self.fbank = Fbank(n_mels=80)
        self.model = ECAPA_TDNN(80, lin_neurons=ECAPA_DIM)  # channels [512]*4 + [1536]: the C=512 model

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        feats = self.fbank(waves)                                            # (batch, frames, 80)
        return (feats - feats.mean(dim=1, keepdim=True)).transpose(1, 2)     # per-utterance mean normalisation

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model(feats.transpose(1, 2)).squeeze(1)

    @torch.no_grad()
    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Full clips, each embedded whole -> ``(n, 192)`` unit-norm embeddings (call in eval mode)."""
        out = [self(self.features(torch.from_numpy(w).unsqueeze(0))) for w in waves]
        return nn.functional.normalize(torch.cat(out), dim=1).numpy()


def ecapa_network(ecapa: ECAPA | None = None) -> Network:
    """ECAPA-TDNN as our training loop sees it; ``best.pt`` holds its ``state_dict`` and the run's metadata."""
    ecapa = ecapa if ecapa is not None else ECAPA()

    def save(path: Path, metadata: dict) -> None:
        torch.save({"format": ECAPA_FORMAT, "state_dict": ecapa.state_dict(), "metadata": metadata}, path)

    return Network(ecapa, ecapa.features, ECAPA_DIM, ecapa.embed, save)


def load_ecapa(path: str | Path) -> ECAPA:
    """The ECAPA-TDNN of a run's ``best.pt``, in eval mode."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != ECAPA_FORMAT:
        raise ValueError(f"{path} is not an ECAPA benchmark checkpoint")
    model = ECAPA()
    model.load_state_dict(state["state_dict"])
    return model.eval()


def resemblyzer() -> Resemblyzer:
    """Resemblyzer's voice encoder with its own preprocessing (``embed(wave_16k) -> (256,)``)."""
    return Resemblyzer()


def mfcc_stats(path: str | Path) -> np.ndarray:
    """Mean ⊕ standard deviation over time of 20 Kaldi MFCCs of one clip: a 40-dim vector."""
    mfcc = kaldi.mfcc(torch.from_numpy(load_audio(path)).unsqueeze(0), num_ceps=20, sample_frequency=16000)
    return torch.cat([mfcc.mean(0), mfcc.std(0)]).numpy()
