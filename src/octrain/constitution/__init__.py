"""Constitutions: the written persona, loaded from any supported format into one type.

Four formats load into :class:`Constitution`, told apart by content (the extension is a hint):

* **Studio YAML** (``.yaml``/``.yml``), the Open Character Studio schema
  (:mod:`octrain.constitution.studio`);
* **JSON list** and **JSON lines**, the paper's (:mod:`octrain.constitution.flat`), also when
  saved as ``.txt`` as the paper does;
* **plain text** (``.txt``/``.md``): one trait a line, seed questions indented beneath it
  (:mod:`octrain.constitution.plain`).

Everything is validated here, before any model loads, and every error is one line naming
the file, the line and the field. ``octrain constitution convert|validate`` converts between
the formats and validates files.
"""

from __future__ import annotations

from octrain.constitution.load import SUFFIXES, find_constitution, load_constitution
from octrain.constitution.model import Constitution, Trait
from octrain.constitution.studio import DIRECTIVE_KEYS, META_KEYS, PERSONA_KEYS, SAFETY_KEYS, YAML_KEYS
from octrain.constitution.voice import VOICE_KEYS

__all__ = [
    "DIRECTIVE_KEYS",
    "META_KEYS",
    "PERSONA_KEYS",
    "SAFETY_KEYS",
    "SUFFIXES",
    "VOICE_KEYS",
    "YAML_KEYS",
    "Constitution",
    "Trait",
    "find_constitution",
    "load_constitution",
]
