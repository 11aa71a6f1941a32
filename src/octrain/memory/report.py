"""The memory report: a run's models, the stage x card table, the notes, and what it is read from.

:func:`memory_report` is what ``octrain memory`` prints: it takes the command's arguments (a recipe
with overrides, or a run directory), composes or reads the config, plans it on the cards and
renders the report as Markdown. Anything a user can fix raises :class:`~octrain.core.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from octrain.core.compose import compose_config
from octrain.core.config import ModelRole, OctrainConfig
from octrain.core.errors import ConfigError
from octrain.core.layout import CONFIG_FILE, load_config
from octrain.memory.needs import CARDS, TRAIN_HEADROOM, USEFUL_SEQUENCES, card_gib
from octrain.memory.planner import Row, plan
from octrain.memory.shapes import architecture_of


def memory_report(target: Sequence[str], cards: Sequence[float] = CARDS, *, detail: bool = False) -> str:
    """The report for ``octrain memory TARGET``: ``+recipe=NAME [key=value ...]``, or a run directory.

    Args:
        target: a recipe and its overrides, as a recipe run takes them; or one run directory (or
            its ``config.yaml``).
        cards: card sizes in GB (24, 48, 80, 141; other numbers are taken as GiB).
        detail: also list every row's parts (weights, LoRA, runtime, activations, ...).

    Raises:
        ConfigError: no recipe or more than one, an unknown recipe, a bad override, a directory
            without a config, or a model that cannot be sized.
    """
    config = config_from_target(target)
    return describe(config, plan(config, cards), cards, detail=detail)


def config_from_target(target: Sequence[str]) -> OctrainConfig:
    """The config ``target`` names: one run directory or config.yaml, or ``+recipe=NAME`` and overrides."""
    if len(target) == 1 and "=" not in target[0]:
        return load_run_config(target[0])
    recipes = [t.split("=", 1)[1] for t in target if t.lstrip("+").startswith("recipe=")]
    if len(recipes) != 1:
        raise ConfigError("name one recipe (+recipe=NAME) and any overrides, or a run directory")
    overrides = [t for t in target if not t.lstrip("+").startswith("recipe=")]
    try:
        return compose_config(recipes[0], overrides)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's and OmegaConf's errors: a bad override
        raise ConfigError(str(exc).strip().splitlines()[0]) from exc


def load_run_config(path: str | Path) -> OctrainConfig:
    """The typed config from a run directory's ``config.yaml`` (or that file itself)."""
    file = Path(path)
    if file.is_dir():
        file = file / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{path}: no {CONFIG_FILE} there")
    try:
        return load_config(file)
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf's and YAML's errors: a malformed file, or a key of the wrong type
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{file}: {first_line}") from exc


def markdown_table(rows: Sequence[Row], cards: Sequence[float] = CARDS) -> str:
    """Stage x card, with the GiB each needs; a "no" carries the change that makes it fit."""
    header = "| stage | what runs | needs (GiB) | " + " | ".join(f"{_card_name(c)}" for c in cards) + " |"
    lines = [header, "|" + "---|" * 3 + "---|" * len(cards)]
    for row in rows:
        need = row.need
        if need.kind == "vllm":
            needed = (
                f"{need.fixed:.1f} + KV ({need.minimum:.1f} min, {need.comfortable:.1f} for {USEFUL_SEQUENCES} seqs)"
            )
        elif need.kind == "none":
            needed = "0"
        else:
            needed = f"{need.comfortable:.1f}"
        cells = []
        for card in cards:
            verdict = row.verdicts[card]
            advice = row.advice.get(card, "")
            if verdict.status == "no":
                cells.append(f"no → {advice or 'does not fit one card of this size'}")
            else:
                cells.append(f"{verdict.text}; faster: {advice}" if advice else verdict.text)
        lines.append(f"| {row.stage} | {need.label} | {needed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _card_name(card: float) -> str:
    return f"{card:g} GB ({card_gib(card):g} GiB)"


def describe(config: OctrainConfig, rows: Sequence[Row], cards: Sequence[float], *, detail: bool = False) -> str:
    """The whole report: models, the table, then the notes and (``detail``) every row's parts."""
    lines = [f"# Memory plan: {config.name} (an estimate; see `octrain memory --help`)", ""]
    for role in ModelRole:
        model = config.model(role)
        arch = architecture_of(model)
        lines.append(
            f"- {role.value}: {model.path}, {arch.parameters:,} parameters, {arch.layers} layers, "
            f"KV {arch.kv_bytes_per_token() / 1024:.0f} KiB/token, max_model_len {model.max_model_len}"
            f"{', ' + model.quantization if model.quantization else ''} (shape from {arch.source})"
        )
    lines += ["", markdown_table(rows, cards), ""]
    notes = sorted({note for row in rows for note in row.need.notes})
    lines += [f"- {note}" for note in notes]
    lines.append(
        f"- vLLM rows: the engine takes gpu_memory_utilization x the card; 'fits' = KV for {USEFUL_SEQUENCES} "
        "sequences of the stage's length, 'tight' = it starts but batches fewer (slower), 'no' = not even one "
        "max_model_len sequence; their 'needs' is at the largest card's vLLM defaults (more batched tokens "
        "and sequences from 70 GiB up). Training rows: peak of the longest batch against "
        f"{TRAIN_HEADROOM:.0%} of the card."
    )
    if detail:
        lines.append("")
        for row in rows:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in row.need.parts.items())
            kv = f", KV {row.need.kv_token_bytes / 1024:.0f} KiB/token" if row.need.kv_token_bytes else ""
            lines.append(f"- {row.stage}, {row.need.label}: {parts} GiB{kv}")
    return "\n".join(lines)
