"""Capability retention: what training the character cost the model on standard benchmarks.

``octrain eval capability MODEL`` (and the ``eval`` stage with ``eval.capability.enabled=true``)
scores the base model and the trained one on the same benchmark items through
lm-evaluation-harness, and sets them side by side: each model's score with the harness's standard
error, and the change with a 95% interval from the per-item differences (the same items, so the
interval is paired and narrower than the two standard errors would give).

Why lm-evaluation-harness rather than lighteval (the paper's): it is one pure-Python wheel that
pins none of octrain's own dependencies (lighteval pins nltk, termcolor and others and brings
inspect-ai), its ``hf`` model takes a PEFT adapter on its base as octrain's adapters are saved
(``peft=``) and its ``vllm`` model a LoRA (``lora_local_path=``), its task files read local data
with no Hub access (the shipped ``octrain_basics`` and the tests use that), and the paper's five
tasks are in it with the Open LLM Leaderboard's settings. Every benchmark item, prompt and metric is
the harness's: octrain picks the models, the tasks and the seeds, and reads the harness's results.

The multiple-choice tasks are scored by log-likelihood, not by sampling, so the paper's sampling
settings (temperature 0.7, top_p 0.8, ...) do not apply to them; its seed (123456) is used for
the few-shot examples' order and every random generator. Each model's scores are committed to
``OUT/scores-<name>.json`` as soon as they are made, keyed by what produced them, so a rerun after
a crash scores only the model that was missing.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import tempfile
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from octrain.core.config import OctrainConfig, TrainerBackend
from octrain.core.errors import ConfigError, StageError
from octrain.core.files import write_text_atomic
from octrain.core.layout import ADAPTER_CONFIG_FILE
from octrain.evaluation.capability_tasks import (
    CapabilityTask,
    check_tasks,
    parse_tasks,
    require_harness,
    task_manager,
)

logger = logging.getLogger(__name__)

CAPABILITY_FILE = "capability.json"
CAPABILITY_REPORT = "capability.md"
Z95 = 1.959964
BACKENDS = ("hf", "vllm")


@dataclasses.dataclass(frozen=True)
class ScoredModel:
    """A model the harness loads: a local base folder and an optional local PEFT adapter on it."""

    name: str  # "base" or "trained": the column it fills
    label: str  # how reports name it
    base: str  # as configured (a Hub id, builtin:..., hub:...)
    adapter: str | None = None
    dtype: str = "auto"


def base_and_trained(base: str, adapter: str | None, trained_label: str, dtype: str = "auto") -> list[ScoredModel]:
    """The table's columns: ``base`` alone, then (with an ``adapter``) ``base`` with it, as ``trained_label``."""
    columns = [ScoredModel("base", f"base {base}", base, None, dtype)]
    if adapter is not None:
        columns.append(ScoredModel("trained", trained_label, base, adapter, dtype))
    return columns


@dataclasses.dataclass(frozen=True)
class CapabilitySettings:
    """How to run the harness; the same fields as ``eval.capability`` in a run's config."""

    tasks: tuple[CapabilityTask, ...]
    task_dir: str | None = None
    limit: int | None = None  # at most this many items per task: a check of the pipeline, not a figure
    batch_size: int = 8
    backend: str = "hf"
    seed: int = 123456

    @classmethod
    def from_config(cls, section: Any, *, where: str = "eval.capability") -> CapabilitySettings:
        """From a run config's ``eval.capability`` section (or anything with the same fields)."""
        return cls(
            tasks=tuple(parse_tasks(list(section.tasks), where=f"{where}.tasks")),
            task_dir=section.task_dir,
            limit=section.limit,
            batch_size=section.batch_size,
            backend=section.backend,
            seed=section.seed,
        ).checked(where)

    def checked(self, where: str) -> CapabilitySettings:
        if self.backend not in BACKENDS:
            raise ConfigError(f"{where}.backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"{where}.limit: expected at least 1 item per task (or null for all), got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size: expected at least 1, got {self.batch_size}")
        return self


def _lora_rank(adapter: str) -> int:
    """The rank of a PEFT adapter (vLLM must be told the largest rank it will serve)."""
    try:
        config = json.loads((Path(adapter) / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
        return int(config.get("r", 16))
    except (OSError, ValueError):
        return 16


def harness_model_args(model: ScoredModel, settings: CapabilitySettings) -> dict[str, Any]:
    """The harness's ``model_args`` for ``model``: its base folder, and the adapter where it has one."""
    from octrain.models.builtin import resolve_model_path

    args: dict[str, Any] = {"pretrained": resolve_model_path(model.base), "dtype": _device_and_dtype(model.dtype)[1]}
    if model.adapter is not None:
        if settings.backend == "vllm":
            args.update(enable_lora=True, lora_local_path=model.adapter, max_lora_rank=_lora_rank(model.adapter))
        else:
            args["peft"] = model.adapter
    if settings.backend == "vllm":
        args["seed"] = settings.seed
    return args


def _device_and_dtype(requested: str) -> tuple[str, str]:
    """Where the harness runs and in which dtype: the samplers' choice (bf16 on a GPU that has it, else fp32)."""
    from octrain.samplers.hf import pick_device, pick_dtype

    device = pick_device()
    return device, str(pick_dtype(requested, device)).removeprefix("torch.")


def _key(model: ScoredModel, settings: CapabilitySettings) -> dict[str, Any]:
    """What a model's scores depend on: a committed file with another key is scored again."""
    return {
        "base": model.base,
        "adapter": model.adapter,
        "dtype": model.dtype,
        "tasks": [t.spec for t in settings.tasks],
        "task_dir": settings.task_dir,
        "limit": settings.limit,
        "backend": settings.backend,
        "seed": settings.seed,
        "harness": version("lm_eval"),
    }


def _subtasks(name: str, groups: dict[str, list[str]]) -> list[str]:
    """The leaf tasks under ``name`` (a group such as mmlu holds groups that hold tasks)."""
    if name not in groups:
        return [name]
    return [leaf for child in groups[name] for leaf in _subtasks(child, groups)]


def _read_task(task: CapabilityTask, output: dict[str, Any]) -> dict[str, Any]:
    """One task's score, standard error, item count and per-item values from the harness's output."""
    results = output["results"].get(task.name, {})
    value = results.get(f"{task.metric},none")
    if value is None:
        metrics = sorted({k.split(",")[0] for k in results if "," in k and "_stderr" not in k})
        raise StageError(
            f"capability task {task.name!r}: the harness reports no metric {task.metric!r} for it "
            f"(it reports: {', '.join(metrics) or 'none'}); name one as {task.name}:{task.shots}:METRIC"
        )
    stderr = results.get(f"{task.metric}_stderr,none")
    leaves = _subtasks(task.name, output.get("group_subtasks", {}))
    samples = output.get("samples", {})
    items: dict[str, float] = {}
    for leaf in leaves:
        for sample in samples.get(leaf, []):
            if task.metric in sample:
                items[f"{leaf}/{sample['doc_id']}"] = float(sample[task.metric])
    # The choices' log-likelihoods of the first item: what a reader (and the tests) can recompute with
    # the model itself, to see that the harness scored the model asked for (the adapter on, say).
    first = min(samples.get(leaves[0], []), key=lambda s: s["doc_id"], default=None)
    logliks = None
    if first is not None and all(isinstance(r, list | tuple) and r for r in first.get("filtered_resps", [])):
        logliks = {"item": f"{leaves[0]}/{first['doc_id']}", "choices": [float(r[0]) for r in first["filtered_resps"]]}
    return {
        "task": task.name,
        "shots": task.shots,
        "metric": task.metric,
        "value": float(value),
        "stderr": float(stderr) if isinstance(stderr, int | float) and math.isfinite(stderr) else None,
        "n": len(items),
        "items": items,
        # The choices' log-likelihoods for the task's first item: what a reader (and the tests) can
        # recompute with the model itself, to see that the adapter was on when the harness scored.
        "first_item_logliks": logliks,
    }


def score_model(model: ScoredModel, settings: CapabilitySettings, out: Path, manager: Any) -> dict[str, Any]:
    """Score one model on every task (one harness run per distinct shot count), committed to ``out``.

    A committed file with the same key is read back instead of scoring again.
    """
    path = out / f"scores-{model.name}.json"
    key = _key(model, settings)
    if path.is_file():
        try:
            committed = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            committed = {}
        if committed.get("key") == key:
            logger.info("capability: %s's scores read back from %s", model.label, path)
            return committed
    import lm_eval
    from lm_eval.api.registry import get_model

    logger.info("capability: scoring %s on %s", model.label, ", ".join(t.spec for t in settings.tasks))
    lm = get_model(settings.backend).create_from_arg_obj(
        harness_model_args(model, settings),
        {"batch_size": settings.batch_size, "device": _device_and_dtype(model.dtype)[0]},
    )
    tasks: dict[str, dict[str, Any]] = {}
    try:
        for shots in sorted({t.shots for t in settings.tasks}):
            group = [t for t in settings.tasks if t.shots == shots]
            output = lm_eval.simple_evaluate(
                model=lm,
                tasks=[t.name for t in group],
                num_fewshot=shots,
                limit=settings.limit,
                task_manager=manager,
                log_samples=True,
                random_seed=settings.seed,
                numpy_random_seed=settings.seed,
                torch_random_seed=settings.seed,
                fewshot_random_seed=settings.seed,
                verbosity="ERROR",
            )
            if output is None:  # only rank 0 of a distributed harness run returns results
                raise StageError("capability: the harness returned no results (run it as one process)")
            for task in group:
                tasks[task.name] = _read_task(task, output)
    finally:
        del lm
        gc.collect()
        from octrain.core.devices import free_device_memory

        free_device_memory()
    scores = {"key": key, "model": model.label, "tasks": tasks}
    write_text_atomic(path, json.dumps(scores) + "\n")
    return scores


def preflight_capability(config: OctrainConfig) -> None:
    """``eval.capability``'s checks before a run starts: settings, the harness, the tasks and their data.

    Raises:
        ConfigError: what the user must change, named by its key.
    """
    if config.trainer.backend is TrainerBackend.tinker:
        raise ConfigError(
            "eval.capability.enabled: a Tinker run's adapter lives on the service, which the harness cannot "
            "load; download it (`octrain checkpoints download`) and run `octrain eval capability` on the copy"
        )
    settings = CapabilitySettings.from_config(config.eval.capability)
    require_harness()
    with tempfile.TemporaryDirectory(prefix="octrain-capability-") as work:
        check_tasks(settings.tasks, task_manager(Path(work), settings.task_dir))


def paired_change(base: dict[str, float], trained: dict[str, float]) -> dict[str, Any]:
    """Mean of trained - base over the items both scored, with its standard error and 95% interval."""
    shared = sorted(base.keys() & trained.keys())
    differences = [trained[k] - base[k] for k in shared]
    n = len(differences)
    if n == 0:
        return {"mean": None, "stderr": None, "ci": None, "n": 0}
    mean = sum(differences) / n
    if n < 2:
        return {"mean": mean, "stderr": None, "ci": None, "n": n}
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
    stderr = math.sqrt(variance / n)
    return {"mean": mean, "stderr": stderr, "ci": [mean - Z95 * stderr, mean + Z95 * stderr], "n": n}


def _public(task_scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in task_scores.items() if k not in ("items", "task", "shots", "metric")}


def measure_capability(models: Sequence[ScoredModel], settings: CapabilitySettings, out: Path) -> dict[str, Any]:
    """Score ``models`` (base first, then trained) and compare; writes capability.json and .md in ``out``.

    The harness, the tasks and their data are checked before any model loads.
    """
    require_harness()
    out.mkdir(parents=True, exist_ok=True)
    manager = task_manager(out, settings.task_dir)
    check_tasks(settings.tasks, manager)
    scores = {m.name: score_model(m, settings, out, manager) for m in models}
    rows = []
    for task in settings.tasks:
        row: dict[str, Any] = {"task": task.name, "shots": task.shots, "metric": task.metric}
        for name, scored in scores.items():
            row[name] = _public(scored["tasks"][task.name])
        if "base" in scores and "trained" in scores:
            row["change"] = paired_change(
                scores["base"]["tasks"][task.name]["items"], scores["trained"]["tasks"][task.name]["items"]
            )
        rows.append(row)
    notes = []
    if settings.limit is not None:
        notes.append(
            f"limit {settings.limit}: at most {settings.limit} items per task, a check that the pipeline runs; "
            "the figures are not the benchmarks' and must not be compared with published ones"
        )
    small = [r["task"] for r in rows if min(r[n]["n"] for n in scores) < 100]
    if small:
        notes.append(
            f"under 100 items: {', '.join(small)}: a change there of less than about 10 points is within noise"
        )
    result = {
        "harness": f"lm-evaluation-harness {version('lm_eval')}",
        "backend": settings.backend,
        "seed": settings.seed,
        "models": {m.name: m.label for m in models},
        "tasks": rows,
        "notes": notes,
    }
    write_text_atomic(out / CAPABILITY_FILE, json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / CAPABILITY_REPORT, render_capability(result))
    result["files"] = [str(out / CAPABILITY_FILE), str(out / CAPABILITY_REPORT)]
    return result


def _score_text(entry: dict[str, Any]) -> str:
    stderr = entry.get("stderr")
    return f"{entry['value']:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")


def render_capability(result: dict[str, Any]) -> str:
    """The side-by-side table as Markdown: each model's score ± standard error, and the paired change."""
    names = list(result["models"])
    header = ["task", "shots", "metric", "items", *names]
    compare = "base" in names and "trained" in names
    if compare:
        header.append("change [95% CI]")
    lines = [
        "# Capability retention",
        "",
        f"{result['harness']}, backend {result['backend']}, seed {result['seed']}. "
        + ", ".join(f"{name}: `{label}`" for name, label in result["models"].items())
        + ". Scores are the harness's (± its standard error); the change is trained minus base over the "
        "same items, with a paired 95% interval.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in result["tasks"]:
        cells = [row["task"], str(row["shots"]), row["metric"], str(row[names[0]]["n"])]
        cells += [_score_text(row[name]) for name in names]
        if compare:
            change = row["change"]
            if change["mean"] is None:
                cells.append("n/a")
            elif change["ci"] is None:
                cells.append(f"{change['mean']:+.3f}")
            else:
                low, high = change["ci"]
                cells.append(f"{change['mean']:+.3f} [{low:+.3f}, {high:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- note: {n}" for n in result["notes"])]
    return "\n".join(lines).rstrip() + "\n"
