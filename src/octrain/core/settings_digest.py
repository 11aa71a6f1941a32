"""The digest of a stage's settings, stable when octrain gains a setting.

A finished stage is skipped while its fingerprint (a digest of the settings it was made with,
see :mod:`octrain.run.markers`) still matches, so the fingerprint must change when a setting a
user could have changed changes, and only then. Every release adds settings; if each new field
of a config section joined the digest, every finished run would train again after an upgrade,
with the very settings it already ran. So a dataclass field whose value is its declared default
is left out of the digest: a setting added with a default that keeps the old behaviour leaves
old fingerprints alone, and any value a user sets (in a recipe or an override) is part of it.

What this costs: changing an existing field's *default* does not reach runs that never set it.
Such a change is a release note, and ``force=[STAGE]`` makes a stage again (docs/stages-and-outputs.md).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from pathlib import PurePath
from typing import Any


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def at_defaults(value: Any, names: tuple[str, ...]) -> Any:
    """A copy of the dataclass ``value`` with the fields ``names`` at their defaults: left out of its digest."""
    fields = {field.name: field for field in dataclasses.fields(value)}
    return dataclasses.replace(value, **{name: _default_of(fields[name]) for name in names})


def settings_json(value: Any) -> Any:
    """``value`` as JSON-ready data, with every dataclass field at its default value left out.

    Dataclasses become objects of their non-default fields (nested ones pruned the same way),
    enums their values, paths strings; mappings and sequences keep every entry.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kept = {}
        for field in dataclasses.fields(value):
            current = getattr(value, field.name)
            if current == _default_of(field):
                continue
            kept[field.name] = settings_json(current)
        return kept
    if isinstance(value, enum.Enum):
        return settings_json(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {str(key): settings_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [settings_json(item) for item in value]
    return value


def settings_digest(value: Any, *, length: int = 16) -> str:
    """A short hex digest of :func:`settings_json` of ``value`` (key order does not matter)."""
    text = json.dumps(settings_json(value), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
