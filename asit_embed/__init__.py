"""asit-embed: speaker embeddings from an ASiT-style spectrogram Vision Transformer.

>>> import asit_embed
>>> encoder = asit_embed.load_encoder()          # the bundled checkpoint
>>> encoder.dim
192
"""

from asit_embed.audio import AudioError, load_audio
from asit_embed.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from asit_embed.encoder import SpeakerEncoder, load_encoder, similarity
from asit_embed.model import ASiTEncoder, EncoderConfig, asit_small, asit_tiny

__all__ = [
    "ASiTEncoder",
    "AudioError",
    "CheckpointError",
    "EncoderConfig",
    "SpeakerEncoder",
    "asit_small",
    "asit_tiny",
    "load_audio",
    "load_checkpoint",
    "load_encoder",
    "save_checkpoint",
    "similarity",
]
__version__ = "0.1.0"
