"""asit-embed: speaker embeddings from an ASiT-style spectrogram Vision Transformer.

>>> import asit_embed
>>> encoder = asit_embed.load_encoder()          # the bundled checkpoint
>>> encoder.dim
192

Trainer-side names stay importable from their modules (:mod:`asit_embed.config`, :mod:`asit_embed.model`,
:mod:`asit_embed.checkpoint`, :mod:`asit_embed.training`).
"""

from importlib.metadata import PackageNotFoundError, version

from asit_embed.audio import AudioError, load_audio
from asit_embed.checkpoint import CheckpointError
from asit_embed.encoder import SpeakerEncoder, load_encoder, similarity

__all__ = ["AudioError", "CheckpointError", "SpeakerEncoder", "load_audio", "load_encoder", "similarity"]

try:
    __version__ = version("asit-embed")  # single source: setup.cfg
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
