"""The exceptions octrain raises on purpose.

Everything a user can fix (a bad config value, a malformed data file, a constitution
that does not validate) raises a subclass of :class:`OctrainError` whose message names
the file, line or key at fault. The CLI prints those as one line; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class OctrainError(Exception):
    """Base class for errors that carry a message meant for the user."""


class ConfigError(OctrainError, ValueError):
    """A configuration key has a value the pipeline cannot use."""


class DataFormatError(OctrainError, ValueError):
    """A data file (JSONL records, constitution, prompt list) does not match its format."""


class StageError(OctrainError, RuntimeError):
    """A pipeline stage cannot run, for example because its inputs are missing."""


class RegistryError(OctrainError, LookupError):
    """The checkpoint registry has no such entry, or cannot be read or written."""
