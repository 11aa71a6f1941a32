"""octrain: give a chat model a character.

A written constitution shapes a model through synthetic preference data and LoRA DPO,
then introspective SFT, then evaluation. ``python -m octrain +recipe=NAME`` runs a recipe;
the same steps are importable from here.
"""

from octrain.core.telemetry import disable_telemetry

disable_telemetry()  # before anything imports huggingface_hub, which reads the variables once

from octrain.core.devices import fork_safe_environment  # noqa: E402

fork_safe_environment()  # before any CUDA check or vLLM engine start in this process (see octrain.core.devices)

from octrain.core import moved  # noqa: E402

moved.install()  # the flat layout's module names (octrain.pipeline, ...) still import, for one release

from octrain.constitution import Constitution, Trait, load_constitution  # noqa: E402
from octrain.core.config import OctrainConfig, StageName  # noqa: E402
from octrain.core.errors import ConfigError, DataFormatError, OctrainError, StageError  # noqa: E402
from octrain.core.records import (  # noqa: E402
    Conversation,
    EvalRecord,
    ModelRef,
    PreferencePair,
    PromptRecord,
    load_records,
    save_records,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Constitution",
    "Conversation",
    "DataFormatError",
    "EvalRecord",
    "ModelRef",
    "OctrainConfig",
    "OctrainError",
    "PreferencePair",
    "PromptRecord",
    "StageError",
    "StageName",
    "Trait",
    "load_constitution",
    "load_records",
    "save_records",
]
