"""Which benchmark tasks capability retention runs, and checking them before any model loads.

A task is named as ``NAME[:SHOTS[:METRIC]]``: a task or group of lm-evaluation-harness (``mmlu``,
``arc_challenge``), how many solved examples precede each question, and which of its metrics the
table reports. ``paper`` stands for the paper's five (docs/evaluation.md#capability-retention):
MMLU 5-shot, ARC-Challenge 25-shot, HellaSwag 10-shot, Winogrande 5-shot and TruthfulQA (mc2)
0-shot, the Open LLM Leaderboard's first settings, with the metric each of them reports there.

The harness downloads its tasks' data from the Hugging Face Hub. ``octrain_basics``, shipped in
``octrain/data/capability``, needs nothing: 130 questions on everyday knowledge and small
arithmetic, in the harness's own task format, for machines with no Hub access and for a quick look
at a small model. A folder of the user's own task files (``eval.capability.task_dir``,
``--task-dir``) adds theirs.

Everything here runs before a model loads: the harness is installed, every task exists, and its
data can be read (:func:`check_tasks`).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError

logger = logging.getLogger(__name__)

# The paper's five tasks, as the harness names them, with the shots and metric of the Open LLM
# Leaderboard (v1), whose settings the paper's lighteval tasks follow (leaderboard|mmlu:*|5,
# arc:challenge|25, hellaswag|10, winogrande|5, truthfulqa:mc|0). lighteval's truthfulqa:mc reports
# mc1 and mc2; mc2 (the probability given to the true answers) is the leaderboard's figure.
PAPER_TASK_SPECS = (
    "mmlu:5:acc",
    "arc_challenge:25:acc_norm",
    "hellaswag:10:acc_norm",
    "winogrande:5:acc",
    "truthfulqa_mc2:0:acc",
)
SHIPPED_TASK = "octrain_basics"
SHIPPED_DIR = "data/capability"
INSTALL_HINT = "pip install 'octrain[capability]' (lm-evaluation-harness)"


@dataclass(frozen=True)
class CapabilityTask:
    """One row of the capability table: a harness task (or group), its shots and its reported metric."""

    name: str
    shots: int
    metric: str = "acc"

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.shots}:{self.metric}"


def parse_task(spec: str, *, where: str) -> CapabilityTask:
    """``NAME[:SHOTS[:METRIC]]`` as a task; shots default to 0 and the metric to ``acc``.

    Raises:
        ConfigError: an empty name, shots that are not a whole number from 0, or more than three parts.
    """
    parts = spec.strip().split(":")
    if not parts[0] or len(parts) > 3:
        raise ConfigError(
            f"{where}: {spec!r}: expected NAME[:SHOTS[:METRIC]], e.g. mmlu:5 or arc_challenge:25:acc_norm"
        )
    shots = 0
    if len(parts) > 1:
        try:
            shots = int(parts[1])
        except ValueError:
            shots = -1
        if shots < 0:
            raise ConfigError(f"{where}: {spec!r}: the shots must be a whole number from 0, got {parts[1]!r}")
    metric = parts[2] if len(parts) == 3 and parts[2] else "acc"
    return CapabilityTask(parts[0], shots, metric)


def parse_tasks(specs: str | Sequence[str], *, where: str) -> list[CapabilityTask]:
    """Tasks from a comma-separated string or a list; ``paper`` expands to the paper's five.

    Raises:
        ConfigError: no task, a malformed one (see :func:`parse_task`), or one named twice.
    """
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    tasks: list[CapabilityTask] = []
    for item in (i.strip() for i in items):
        if item == "paper":
            tasks.extend(parse_task(s, where=where) for s in PAPER_TASK_SPECS)
        elif item:
            tasks.append(parse_task(item, where=where))
    if not tasks:
        raise ConfigError(f"{where}: no task named; e.g. paper, or {SHIPPED_TASK}:5")
    names = [t.name for t in tasks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}: {', '.join(twice)} named more than once")
    return tasks


def require_harness() -> None:
    """Raise ConfigError with the install command when lm-evaluation-harness is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"capability evaluation runs on lm-evaluation-harness, which is not installed: {INSTALL_HINT}"
        ) from None


def shipped_task_dir(work: Path) -> Path:
    """A folder holding the shipped tasks' files as the harness reads them, under ``work``.

    The shipped YAML names its data file relative to itself; the harness passes that name to
    ``datasets``, which reads it relative to the working directory. The copy written here names
    the packaged file by its full path instead, so the task loads from wherever octrain runs.
    """
    import yaml

    source = resources.files("octrain").joinpath(SHIPPED_DIR)
    target = work / "shipped-tasks"
    target.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(source.joinpath(f"{SHIPPED_TASK}.yaml").read_text(encoding="utf-8"))
    data = source.joinpath(f"{SHIPPED_TASK}.jsonl")
    config["dataset_kwargs"]["data_files"]["test"] = str(Path(str(data)).resolve())
    (target / f"{SHIPPED_TASK}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return target


def task_manager(work: Path, task_dir: str | None) -> Any:
    """The harness's task index: its own tasks, the shipped ones and those in ``task_dir``.

    Raises:
        ConfigError: ``task_dir`` is not a folder.
    """
    from lm_eval.tasks import TaskManager

    include = [str(shipped_task_dir(work))]
    if task_dir:
        folder = Path(task_dir).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"capability task folder {task_dir}: not a folder (expected the harness's task YAMLs)")
        include.append(str(folder.resolve()))
    return TaskManager(include_path=include, verbosity="ERROR")


def check_tasks(tasks: Sequence[CapabilityTask], manager: Any, *, load_data: bool = True) -> None:
    """Every task is one the harness knows and, with ``load_data``, its data can be read.

    Reading the data here (the harness downloads a Hub dataset once, into the ``datasets``
    cache) puts a missing dataset or a broken local task before any model loads.

    Raises:
        ConfigError: an unknown task, naming the closest known ones; a task whose data or
            config cannot be loaded, naming it and the harness's error.
    """
    known = set(manager.all_tasks)
    for task in tasks:
        if task.name not in known:
            close = difflib.get_close_matches(task.name, sorted(known), n=4, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ConfigError(
                f"capability task {task.name!r}: not a task of lm-evaluation-harness{hint} "
                f"(`lm-eval ls tasks` lists them; {SHIPPED_TASK} needs no download)"
            )
    if not load_data:
        return
    for task in tasks:
        try:
            manager.load([task.name])
        except Exception as exc:  # the harness and datasets raise many kinds; each is the user's to fix
            raise ConfigError(
                f"capability task {task.name!r}: its data cannot be loaded ({type(exc).__name__}: {exc}); "
                "the harness downloads a task's dataset from the Hugging Face Hub on first use (then it is "
                f"cached), so run once with Hub access, or use a local task ({SHIPPED_TASK}, or --task-dir)"
            ) from exc
