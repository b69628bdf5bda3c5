"""asit-embed: speaker embeddings from an ASiT-style spectrogram Vision Transformer.

>>> import asit_embed
>>> encoder = asit_embed.load_encoder()          # the bundled checkpoint
>>> encoder.dim
192

Trainer-side names stay importable from their modules (:mod:`asit_embed.config`, :mod:`asit_embed.model`,
:mod:`asit_embed.checkpoint`, :mod:`asit_embed.training`).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

__all__ = ["AudioError", "CheckpointError", "SpeakerEncoder", "load_audio", "load_encoder", "similarity"]
_HOMES = {"AudioError": "audio", "load_audio": "audio", "CheckpointError": "checkpoint",
          "SpeakerEncoder": "encoder", "load_encoder": "encoder", "similarity": "encoder"}


def __getattr__(name: str):
    # Imported on first use, so `asit-embed doctor` runs even where torch or torchaudio fail to import.
    if name in _HOMES:
        value = getattr(import_module(f"asit_embed.{_HOMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'asit_embed' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])

try:
    __version__ = version("asit-embed")  # single source: setup.cfg
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
