"""Errors every stage shares. Adapters map them: gRPC status codes, CLI exit codes."""

from __future__ import annotations


class FlatlandError(Exception):
    """Base class for errors a user can act on."""


class InvalidKeyError(FlatlandError, ValueError):
    """A store key that is malformed or tries to escape the store."""


class ObjectNotFoundError(FlatlandError, KeyError):
    """A store key that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "object not found"


class IntegrityError(FlatlandError):
    """An object whose size or checksum does not match its manifest entry."""


class SpecError(FlatlandError, ValueError):
    """An experiment spec that failed validation; ``str()`` names each bad field."""


class ResourceLimitError(FlatlandError):
    """A request beyond a configured cap (maps to RESOURCE_EXHAUSTED)."""
