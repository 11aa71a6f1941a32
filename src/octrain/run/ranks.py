"""A run started by ``accelerate launch -m octrain ...``: one run directory, rank 0 does the work, all ranks train.

``accelerate launch`` (or ``torchrun``) starts the same command once per process. Left alone,
every rank would sample the same prompts into the same files and clear each other's stage
folders. Here, before anything is written:

* every rank composes its config and run directory, and all of them compare (a collective
  gather): ranks that disagree stop together with one line, never a race;
* rank 0 alone takes the run's lock, samples, writes every file and marker, and runs the
  training stages in its own process, as one rank of the launch;
* the other ranks write nothing: for each training stage they wait until rank 0 says "train"
  or "skip" through a small file in ``RUN_DIR/.ranks/LAUNCH/`` (a file, not a collective,
  because rank 0 may sample for hours and a collective would time out), then train with it;
  TRL gathers the loss and the metrics across ranks, and rank 0 alone saves and reports.

The run directory must be on a file system every rank sees (one machine, or a shared disk):
that is checked when the ranks meet. Launched by the pipeline itself (``trainer.num_processes``),
the ranks run one training stage through :mod:`octrain.run.workers` and none of this is needed
beyond :func:`is_main_process`.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from octrain.core.errors import StageError
from octrain.core.files import write_text_atomic
from octrain.core.layout import RANK_SIGNAL_DIR

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# What a launcher sets in its processes. A sampling worker started from a rank must not inherit
# them (vLLM would take them for its own process group), and a new launch sets its own.
LAUNCH_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_ERROR_FILE",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
)


def world_size() -> int:
    """How many processes the launcher started (1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0, or a plain run: the process that writes files."""
    return rank() == 0


def environment_without_launch() -> dict[str, str]:
    """This process's environment less the launcher's variables: for a process that is not a rank."""
    return {key: value for key, value in os.environ.items() if key not in LAUNCH_VARIABLES}


@dataclass(frozen=True)
class Launch:
    """The ranks of one ``run()`` under a launcher, agreed on one run directory."""

    rank: int
    world_size: int
    signal_dir: Path

    @property
    def main(self) -> bool:
        return self.rank == 0

    def tell(self, stage: str, action: str, message: str = "") -> None:
        """Rank 0: tell the other ranks what to do at ``stage`` ("train" or "skip"), or that the run ended."""
        write_text_atomic(self.signal_dir / f"{stage}.json", json.dumps({"action": action, "message": message}) + "\n")

    def forget_earlier_launches(self) -> None:
        """Rank 0, holding the run's lock: remove the signals of launches that ended before this one."""
        import shutil

        for old in self.signal_dir.parent.iterdir():
            if old != self.signal_dir:
                shutil.rmtree(old, ignore_errors=True)

    def wait(self, stage: str) -> dict[str, str]:
        """The other ranks: rank 0's word for ``stage``, or its word that the run ended (``end.json``)."""
        wanted, ended = self.signal_dir / f"{stage}.json", self.signal_dir / "end.json"
        while True:
            for path in (wanted, ended):
                try:
                    return json.loads(path.read_text(encoding="utf-8"))
                except (FileNotFoundError, json.JSONDecodeError):
                    continue
            time.sleep(POLL_SECONDS)


def meet(run_dir: Path, description: str) -> Launch:
    """Every rank: check that all of them run ``description`` into ``run_dir``, and set up their signals.

    Raises:
        StageError: on every rank alike, when the ranks disagree on the run or do not share its directory.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object

    # cpu=True on a CPU-only machine: accelerate then makes a gloo group of the launch's processes
    # (as TRL's TrainingArguments(use_cpu=True) asks for later, so both see the same shared state).
    state = PartialState(cpu=not torch.cuda.is_available())
    mine = (str(run_dir.resolve()), description)
    everyone = gather_object([mine])
    if any(other != mine for other in everyone):
        runs = sorted({f"{path} ({what[:60]}...)" for path, what in everyone})
        raise StageError(
            f"the {state.num_processes} ranks of this launch do not run the same thing: {'; '.join(runs)}. "
            "Give every rank the same command and settings"
        )
    launch_id = [uuid.uuid4().hex[:12] if state.is_main_process else ""]
    broadcast_object_list(launch_id)
    signal_dir = run_dir / RANK_SIGNAL_DIR / launch_id[0]
    if state.is_main_process:
        signal_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(signal_dir / "hello.json", "{}\n")
    state.wait_for_everyone()
    sees = gather_object([(signal_dir / "hello.json").is_file()])
    if not all(sees):
        raise StageError(
            f"{run_dir} is not shared by every rank of this launch (ranks on other machines do not see rank 0's "
            "files): put run_root on a shared file system"
        )
    logger.info("rank %d of %d: run %s", state.process_index, state.num_processes, run_dir)
    return Launch(rank=state.process_index, world_size=state.num_processes, signal_dir=signal_dir)


def follow(launch: Launch, training_stages: list[tuple[str, Callable[[], object]]]) -> None:
    """A rank other than 0: join each training stage rank 0 runs, in order, until it says the run ended.

    Raises:
        StageError: rank 0 stopped with an error (its message), so this rank stops too.
    """
    for stage, train in training_stages:
        word = launch.wait(stage)
        if word["action"] == "train":
            logger.info("rank %d: training %s with rank 0", launch.rank, stage)
            train()
        elif word["action"] == "failed":
            raise StageError(f"rank 0 stopped: {word['message']}")
        elif word["action"] == "end":
            return
    word = launch.wait("end")
    if word["action"] == "failed":
        raise StageError(f"rank 0 stopped: {word['message']}")
