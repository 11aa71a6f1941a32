"""Which model a command means, from what a user types.

``octrain sample``, ``chat``, ``eval quick``, ``export``, ``push`` and ``serve`` all take a model
the same way, and this module is the one place that reads it. A spec is, in this order:

* a path: a ``model.json`` a stage wrote, a run directory (its final model: ``sft``, else
  ``dpo``), a stage directory holding ``model.json``, a PEFT adapter directory (its
  ``adapter_config.json`` names the base), or a plain model directory (a base model);
* a built-in base model (``builtin:smollm2-135m-instruct``; see :mod:`octrain.models.builtin`);
* a registry name (``pirate_mini/sft``; see :mod:`octrain.use.registry`);
* otherwise an error naming the closest registered names.

``--persona NAME`` picks that persona's latest final checkpoint (:func:`latest_of_persona`)
and ``--base`` the base model of whatever was chosen (:func:`base_of`); :func:`pick_model` takes
all of these as a front end receives them. :func:`sampler_settings` and :func:`load_sampler`
load the chosen model the way its run sampled. A model that came from
a run keeps its run directory, so that a command can read the run's student settings (dtype,
chat-template options) and its constitution rather than guess them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from octrain.constitution import Constitution
from octrain.core.config import ModelConfig, OctrainConfig, SamplerBackend, SamplerConfig
from octrain.core.errors import ConfigError, DataFormatError, RegistryError
from octrain.core.layout import ADAPTER_CONFIG_FILE, CONFIG_FILE, MODEL_FILE, REGISTRY_FILE
from octrain.core.records import ModelRef
from octrain.models.builtin import BUILTIN_PREFIX, builtin_names
from octrain.models.hub import fetch_hub_ref, is_hub_ref
from octrain.use.registry import Checkpoint, Registry

if TYPE_CHECKING:
    from octrain.samplers.base import Sampler

# A run's final model is its SFT stage's; a run stopped after DPO has only that one.
FINAL_STAGES = ("sft", "dpo")


@dataclasses.dataclass(frozen=True)
class ChosenModel:
    """A model to load, and what is known of where it came from.

    Attributes:
        label: how messages and transcripts name it (a registry name, a path, or ``base MODEL``).
        ref: the base and adapter (or remote path) to load.
        run_dir: the run that trained it, when known: its config and constitution apply.
        checkpoint: its registry entry, when it was chosen through the registry.
        is_base: True for a base model with no adapter of ours.
        thinking: whether a reasoning model thinks before it answers (its chat template's
            ``enable_thinking``), as the user chose it; None keeps the run's own setting. It is
            a choice of how to talk to the model, not part of the model: it belongs here, beside
            the weights, so that every front end that loads ``model_config()`` honours it, and
            :func:`base_of` keeps it (a comparison asks both models the same way).
    """

    label: str
    ref: ModelRef
    run_dir: Path | None = None
    checkpoint: Checkpoint | None = None
    is_base: bool = False
    thinking: bool | None = None

    def run_config(self) -> OctrainConfig | None:
        """The config of the run this model came from, or None when there is no run."""
        if self.run_dir is None or not (self.run_dir / CONFIG_FILE).is_file():
            return None
        from octrain.core.layout import load_config

        try:
            return load_config(self.run_dir / CONFIG_FILE)
        except Exception as exc:  # OmegaConf's errors have no common base worth naming
            raise DataFormatError(f"{self.run_dir / CONFIG_FILE}: cannot read the run's config ({exc})") from exc

    def model_config(self) -> ModelConfig:
        """How to load and talk to the model: the run's student settings with this model's base.

        Without a run, transformers' defaults (dtype auto, no thinking) for ``ref.base``. A
        :attr:`thinking` choice replaces the run's ``enable_thinking``: the samplers and
        ``octrain serve`` read it from here, so the choice reaches the chat template whatever
        the backend.
        """
        config = self.run_config()
        if config is None:
            model = ModelConfig(path=self.ref.base)
        else:
            model = dataclasses.replace(config.student, path=self.ref.base)
        if self.thinking is not None:
            model = dataclasses.replace(model, enable_thinking=self.thinking)
        return model

    def constitution(self) -> Constitution | None:
        """The constitution the model was trained on (the run's own copy), or None without a run."""
        if self.run_dir is None:
            return None
        from octrain.constitution import load_constitution

        copies = sorted(self.run_dir.glob("constitution.*"))
        if copies:
            return load_constitution(copies[0])
        config = self.run_config()
        if config is None:
            return None
        from octrain.run.pipeline import resolve_constitution

        return resolve_constitution(config)

    @property
    def persona(self) -> str | None:
        if self.checkpoint is not None:
            return self.checkpoint.persona
        constitution = self.constitution()
        return constitution.name if constitution is not None else None


def _run_dir_of(stage_dir: Path) -> Path | None:
    """The run directory holding ``stage_dir``, when its parent is one (it has config.yaml)."""
    parent = stage_dir.resolve().parent
    return parent if (parent / CONFIG_FILE).is_file() else None


def _from_model_file(path: Path) -> ChosenModel:
    ref = ModelRef.load(path)
    return ChosenModel(label=str(path), ref=ref, run_dir=_run_dir_of(path.parent))


def _from_directory(path: Path) -> ChosenModel:
    if (path / MODEL_FILE).is_file():
        return _from_model_file(path / MODEL_FILE)
    if (path / CONFIG_FILE).is_file():
        for stage in FINAL_STAGES:
            if (path / stage / MODEL_FILE).is_file():
                chosen = _from_model_file(path / stage / MODEL_FILE)
                return dataclasses.replace(chosen, label=f"{path} ({stage})")
        raise ConfigError(f"{path}: this run has no trained model yet (no sft/ or dpo/ {MODEL_FILE})")
    if (path / ADAPTER_CONFIG_FILE).is_file():
        return ChosenModel(label=str(path), ref=ModelRef(base=_adapter_base(path), adapter=str(path.resolve())))
    if (path / "config.json").is_file():
        return ChosenModel(label=f"base {path}", ref=ModelRef(base=str(path)), is_base=True)
    raise ConfigError(
        f"{path}: not a model: expected a run directory (config.yaml), a stage directory ({MODEL_FILE}), "
        f"a PEFT adapter ({ADAPTER_CONFIG_FILE}) or a model directory (config.json)"
    )


def _adapter_base(adapter_dir: Path) -> str:
    source = adapter_dir / ADAPTER_CONFIG_FILE
    try:
        base = json.loads(source.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise DataFormatError(f"{source}: not a readable adapter config ({exc})") from exc
    if not isinstance(base, str) or not base:
        raise DataFormatError(f"{source}: 'base_model_name_or_path' is missing: cannot tell which base it adapts")
    return base


def from_checkpoint(entry: Checkpoint) -> ChosenModel:
    """The model a registry entry names."""
    if entry.remote:
        ref = ModelRef(base=entry.base_model, remote=entry.adapter)
    else:
        ref = ModelRef(base=entry.base_model, adapter=entry.adapter or None)
    return ChosenModel(label=entry.name, ref=ref, run_dir=Path(entry.run_dir), checkpoint=entry)


def choose_model(spec: str, *, run_root: str | Path) -> ChosenModel:
    """The model ``spec`` names: a path (see the module docstring) or a registry name under ``run_root``.

    Raises:
        ConfigError, DataFormatError: a path that is not a model, or whose files cannot be read.
        RegistryError: neither a path nor a registered name (the message suggests close names).
    """
    if is_hub_ref(spec):  # the paper's adapters, a model: fetched once into the Hugging Face cache
        path = fetch_hub_ref(spec)
        return _from_model_file(path) if path.is_file() else _from_directory(path)
    if spec.startswith(BUILTIN_PREFIX):  # resolved (fetched, or an error saying how) where it loads
        if spec.removeprefix(BUILTIN_PREFIX) not in builtin_names():
            known = ", ".join(BUILTIN_PREFIX + name for name in builtin_names())
            raise ConfigError(f"{spec!r}: no such built-in model (built in: {known})")
        return ChosenModel(label=f"base {spec}", ref=ModelRef(base=spec), is_base=True)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".json":
            raise ConfigError(
                f"{path}: a model file is a {MODEL_FILE} a stage wrote; got a {path.suffix or 'plain'} file"
            )
        return _from_model_file(path)
    if path.is_dir():
        return _from_directory(path)
    root = Path(run_root)
    if not (root / REGISTRY_FILE).is_file():
        raise RegistryError(
            f"{spec!r} is not a path, and there is no checkpoint registry under {root} to look it up in "
            "(pass --run-root, or `octrain checkpoints rebuild --run-root DIR`)"
        )
    return from_checkpoint(Registry.at(root).get(spec))


def latest_of_persona(persona: str, *, run_root: str | Path, stage: str | None = None) -> ChosenModel:
    """``persona``'s newest final model: its latest ``sft`` checkpoint, else its latest ``dpo`` one
    (or exactly ``stage`` when given)."""
    root = Path(run_root)
    if not (root / REGISTRY_FILE).is_file():
        raise RegistryError(f"no checkpoint registry under {root}: train a model first, or pass --run-root")
    registry = Registry.at(root)
    stages = (stage,) if stage else FINAL_STAGES
    error: RegistryError | None = None
    for wanted in stages:
        try:
            return from_checkpoint(registry.latest(persona, wanted))
        except RegistryError as exc:
            error = error or exc
    assert error is not None
    raise error


def with_thinking(chosen: ChosenModel, on: bool | None) -> ChosenModel:
    """``chosen``, thinking before it answers (``on``) or not; ``on=None`` returns ``chosen`` unchanged.

    A run fixes ``student.enable_thinking`` for training and its eval, but whoever talks to the
    model afterwards may want the other mode (a quick answer from a reasoning model, or its
    thought for a hard question): this is the one switch every front end (``sample``, ``chat``,
    ``serve``, the studio) goes through. None leaves whatever ``chosen`` carries, so a caller can
    pass an unset option straight on. Only models whose chat template reads ``enable_thinking``
    (Qwen3's) react; for the others it changes nothing.
    """
    if on is None:
        return chosen
    return dataclasses.replace(chosen, thinking=on)


def base_of(chosen: ChosenModel) -> ChosenModel:
    """The base model ``chosen`` was trained from, with the same run (so the same settings apply).

    A :attr:`~ChosenModel.thinking` choice is kept: a base asked for comparison is asked the same way.
    """
    ref = ModelRef(base=chosen.ref.base)
    return dataclasses.replace(chosen, label=f"base {chosen.ref.base}", ref=ref, checkpoint=None, is_base=True)


def pick_model(
    spec: str | None = None,
    *,
    persona: str | None = None,
    base: bool = False,
    run_root: str | Path,
    thinking: bool | None = None,
) -> ChosenModel:
    """The model a user named: ``spec`` (a path or checkpoint name) or ``persona``; its base with ``base``.

    A ``spec`` that is neither a path nor a registered name is tried as a persona (its latest
    final model), so that ``/switch pirate`` works as ``--persona pirate`` does; when that fails
    too, the error is the checkpoint lookup's, which names the closest registered names.

    ``thinking`` lets a reasoning model think before it answers (True) or not (False); None
    keeps the run's setting (:func:`octrain.use.model_choice.with_thinking`). It is taken here so
    that every front end passes the user's choice as one more argument.

    Raises:
        ConfigError: both or neither of ``spec`` and ``persona`` (``base`` needs one of them).
        RegistryError, DataFormatError: see :func:`octrain.use.model_choice.choose_model`.
    """
    if spec and persona:
        raise ConfigError(f"give a model ({spec!r}) or --persona {persona}, not both")
    if persona:
        chosen = latest_of_persona(persona, run_root=run_root)
    elif spec:
        try:
            chosen = choose_model(spec, run_root=run_root)
        except RegistryError as not_a_checkpoint:
            try:
                chosen = latest_of_persona(spec, run_root=run_root)
            except RegistryError:
                raise not_a_checkpoint from None
    else:
        what = "--base: the base of which model?" if base else "which model?"
        raise ConfigError(f"{what} name one: a checkpoint (-c pirate_mini/sft), --persona NAME or a path")
    return with_thinking(base_of(chosen) if base else chosen, thinking)


def sampler_settings(chosen: ChosenModel, backend: str | None = None, *, single_engine: bool = True) -> SamplerConfig:
    """The sampler a command loads ``chosen`` with: the run's own (its backend and engine options),
    or the defaults (transformers) without a run; ``backend`` overrides the backend only.

    ``single_engine``: one engine process, whatever the run used (one prompt or one conversation
    gains nothing from several). Checked for this machine before anything loads.

    Raises:
        ConfigError: an unknown backend, or one that cannot run here.
    """
    from octrain.samplers import check_backend

    config = chosen.run_config()
    settings = config.sampler if config is not None else SamplerConfig()
    if backend is not None:
        try:
            settings = dataclasses.replace(settings, backend=SamplerBackend(backend))
        except ValueError:
            known = ", ".join(b.value for b in SamplerBackend)
            raise ConfigError(f"--sampler {backend}: expected one of {known}") from None
    if single_engine:
        settings = dataclasses.replace(settings, data_parallel_size=1)
    check_backend(settings)
    return settings


def weights_of(chosen: ChosenModel) -> str | None:
    """What goes on top of the base: a local adapter directory, a remote (``tinker://``) path, or None."""
    return chosen.ref.remote or chosen.ref.adapter


def load_sampler(chosen: ChosenModel, settings: SamplerConfig, *, serves: Sequence[str | None] = ()) -> Sampler:
    """A sampler for ``chosen`` (its adapter on its base), through :func:`octrain.samplers.build_sampler`.

    ``serves`` lists the other adapters the caller will ask for next (vLLM then starts one
    engine for all of them).

    Raises:
        ConfigError: a remote checkpoint on a local backend (it is sampled where it lives).
    """
    from octrain.samplers import build_sampler

    if chosen.ref.remote and settings.backend not in (SamplerBackend.tinker, SamplerBackend.fake):
        raise ConfigError(
            f"{chosen.label} is a remote checkpoint ({chosen.ref.remote}): sample it with --sampler tinker"
        )
    weights = weights_of(chosen)
    return build_sampler(
        settings, chosen.model_config(), adapter=weights, serves=[weights, *serves], show_progress=False
    )
