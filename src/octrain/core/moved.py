"""Old module names that still import, for one release: octrain's modules moved into rooms.

``import octrain.pipeline`` (or ``from octrain.registry import Registry``) gives a stand-in that
forwards every name to the module's new home, after one :class:`FutureWarning` naming it.
The finder goes last on ``sys.meta_path``, so it is asked only about names no file answers.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

# Where each module of the flat layout went (docs/python-api.md has the table). The memory
# planner's old name is a real module instead (octrain.memory_plan): `python -m` needs a file.
MOVED: dict[str, str] = {
    "octrain.accelerate_configs": "octrain.trainers.accelerate_configs",
    "octrain.answer_checks": "octrain.stages.answer_checks",
    "octrain.assistant_mask": "octrain.trainers.assistant_mask",
    "octrain.builtin_models": "octrain.models.builtin",
    "octrain.chat_session": "octrain.use.chat",
    "octrain.compose": "octrain.core.compose",
    "octrain.config": "octrain.core.config",
    "octrain.context": "octrain.stages.context",
    "octrain.data_import": "octrain.core.data_import",
    "octrain.deploy_modal": "octrain.use.modal",
    "octrain.devices": "octrain.core.devices",
    "octrain.distributed": "octrain.run.ranks",
    "octrain.errors": "octrain.core.errors",
    "octrain.export": "octrain.use.export",
    "octrain.generation": "octrain.samplers.generation",
    "octrain.gguf_import": "octrain.models.gguf",
    "octrain.hub_push": "octrain.use.hub",
    "octrain.job_devices": "octrain.run.job_devices",
    "octrain.jsonl": "octrain.core.files",
    "octrain.merge": "octrain.trainers.merge",
    "octrain.model_card": "octrain.use.model_card",
    "octrain.model_choice": "octrain.use.model_choice",
    "octrain.nvidia": "octrain.core.nvidia",
    "octrain.paths": "octrain.core.paths",
    "octrain.persona_prompts": "octrain.constitution.persona_prompts",
    "octrain.pipeline": "octrain.run.pipeline",
    "octrain.records": "octrain.core.records",
    "octrain.registry": "octrain.use.registry",
    "octrain.run_lock": "octrain.run.lock",
    "octrain.seeding": "octrain.core.seeding",
    "octrain.serving": "octrain.use.serving",
    "octrain.smoke": "octrain.run.smoke",
    "octrain.stage_share": "octrain.run.stage_share",
    "octrain.stage_worker": "octrain.run.workers",
    "octrain.storage_errors": "octrain.core.storage_errors",
    "octrain.telemetry": "octrain.core.telemetry",
    "octrain.tinker_download": "octrain.use.tinker_download",
    "octrain.tiny_model": "octrain.models.tiny",
    "octrain.training_report": "octrain.trainers.report",
}


class _ForwardingLoader(importlib.abc.Loader):
    """Makes the old name a module that hands out the new module's names."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} is now {self.new_name}; the old name goes in the next release",
            FutureWarning,  # shown by default, unlike DeprecationWarning outside __main__
            stacklevel=2,
        )
        target = importlib.import_module(self.new_name)

        def forward(name: str) -> Any:
            return getattr(target, name)

        module.__getattr__ = forward  # type: ignore[method-assign]  # PEP 562: every name from the new home
        module.__doc__ = f"Moved: see {self.new_name}."


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Answers the old names in :data:`MOVED`, and nothing else."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _ForwardingLoader(new_name))


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
