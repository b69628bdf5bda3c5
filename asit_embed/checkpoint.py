"""Encoder checkpoints: ``{format, config, state_dict, metadata}`` loaded with ``weights_only=True``.

``weights_only`` unpickling accepts tensors and plain containers only, so a foreign or malicious file can
never run code; anything that is not one of our checkpoints raises :class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asit_embed.model import ASiTEncoder, EncoderConfig

FORMAT = "asit-embed/encoder"
VERSION = 1


class CheckpointError(ValueError):
    """A file is not a valid asit-embed encoder checkpoint (wrong, truncated, foreign, or mismatched)."""


@dataclass
class Checkpoint:
    config: EncoderConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict = field(default_factory=dict)

    def build(self) -> ASiTEncoder:
        """An :class:`ASiTEncoder` in eval mode with these weights."""
        model = ASiTEncoder(self.config)
        try:
            if "whitening.mean" in self.state_dict or "whitening.matrix" in self.state_dict:
                model.set_whitening(self.state_dict.get("whitening.mean"), self.state_dict.get("whitening.matrix"))
            if any(k.startswith("prehead.") for k in self.state_dict):
                model.set_prehead(self.state_dict.get("prehead.whitening.mean"),
                                  self.state_dict.get("prehead.whitening.matrix"),
                                  float(self.state_dict.get("prehead.share", torch.tensor(0.0))))
            model.load_state_dict(self.state_dict)
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(f"checkpoint weights do not fit its config: {err}") from err
        return model.eval()


def save_checkpoint(path: str | os.PathLike, model: ASiTEncoder, *, metadata: dict | None = None,
                    half: bool = False) -> Path:
    """Write ``model`` (config + weights) and JSON-serialisable ``metadata`` to ``path``.

    Args:
        half: store floating-point weights as float16 (half the size; loaded back as float32); scalars (a
            pre-head share) keep their precision.
    """
    state = {k: (v.half() if half and v.is_floating_point() and v.ndim else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
               "state_dict": state, "metadata": dict(metadata or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint under the real name
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated, corrupt, foreign or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, TypeError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable asit-embed checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an asit-embed encoder checkpoint (no {FORMAT!r} marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {payload.get('version')}; expected {VERSION}")
    try:
        config = EncoderConfig.from_dict(payload["config"])
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{str(path)!r} has an invalid encoder config: {err}") from err
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    return Checkpoint(config, state, payload.get("metadata") or {})


def fingerprint(config: EncoderConfig, state_dict: dict[str, torch.Tensor]) -> str:
    """Stable hash of a model's config and weights (hex, 16 chars): what a registry was built with."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
