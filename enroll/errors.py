"""The registry's exceptions (one module, so the store and the registry raise the same classes)."""


class RegistryError(ValueError):
    """A registry cannot be opened or changed as asked."""


class RegistryDatabaseError(RegistryError):
    """The registry's database file is missing its tables, foreign, damaged or unwritable."""


class ReadOnlyRegistryError(RegistryError):
    """A change was asked of a registry opened read-only."""


class DuplicateClipError(RegistryError):
    """A clip (by its content hash) is already enrolled."""


class EncoderMismatchError(RegistryError):
    """The registry was built with another encoder; its embeddings are not comparable."""


class UnknownSpeakerError(KeyError):
    """No speaker of that name is enrolled."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown speaker"
