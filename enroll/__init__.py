"""enroll: a persistent speaker registry over asit-embed embeddings (SQLite truth, FAISS search).

>>> from enroll import SpeakerRegistry
>>> reg = SpeakerRegistry()            # in memory, bundled encoder
>>> len(reg)
0
"""

from enroll.errors import DuplicateClipError, ReadOnlyRegistryError, RegistryDatabaseError
from enroll.index import IndexConfig
from enroll.registry import (
    EncoderMismatchError,
    Match,
    RegistryError,
    Speaker,
    SpeakerRegistry,
    Turn,
    UnknownSpeakerError,
    validate_name,
)

__all__ = [
    "DuplicateClipError",
    "EncoderMismatchError",
    "IndexConfig",
    "Match",
    "ReadOnlyRegistryError",
    "RegistryDatabaseError",
    "RegistryError",
    "Speaker",
    "SpeakerRegistry",
    "Turn",
    "UnknownSpeakerError",
    "validate_name",
]
