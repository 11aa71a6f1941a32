"""The trained model's files: its adapter directory, and the tokenizer it was trained with.

Both the export (:mod:`octrain.use.export`) and the parity check that holds an export to the trained
model (:mod:`octrain.use.parity`) start from these files; they live here, apart from either, so that
neither has to import the other to find them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from octrain.core.errors import ConfigError
from octrain.core.layout import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from octrain.models.builtin import resolve_model_path

if TYPE_CHECKING:
    from octrain.use.model_choice import ChosenModel


def adapter_of(chosen: ChosenModel) -> Path:
    """The local adapter directory of ``chosen``; ConfigError when it has none."""
    if chosen.ref.remote:
        raise ConfigError(f"{chosen.label} is a remote checkpoint ({chosen.ref.remote}): export needs local weights")
    if chosen.is_base or not chosen.ref.adapter:
        raise ConfigError(f"{chosen.label} is a base model with no adapter: there is nothing of a character to export")
    adapter = Path(chosen.ref.adapter)
    if not (adapter / ADAPTER_CONFIG_FILE).is_file() or not (adapter / ADAPTER_WEIGHTS_FILE).is_file():
        raise ConfigError(f"{adapter}: not a PEFT adapter (needs {ADAPTER_CONFIG_FILE} and {ADAPTER_WEIGHTS_FILE})")
    return adapter


def adapter_if_any(chosen: ChosenModel) -> Path | None:
    """``chosen``'s local adapter directory, or None for a base model served as it is (a teacher, a control).

    Serving may hold a base model to the same parity check as a trained one; exporting may not
    (:func:`adapter_of`). A remote checkpoint is refused by both: its weights are not here.
    """
    if chosen.is_base or (not chosen.ref.adapter and not chosen.ref.remote):
        return None
    return adapter_of(chosen)


def load_tokenizer(adapter: Path | None, base: str) -> Any:
    """The tokenizer the model was trained with: the adapter's copy when it has one, else the base's."""
    from transformers import AutoTokenizer

    has_own = adapter is not None and (adapter / "tokenizer_config.json").is_file()
    source = adapter if has_own else Path(resolve_model_path(base))
    return AutoTokenizer.from_pretrained(source)
