"""Hydra launchers for octrain sweeps whose jobs run at once: on one multi-GPU machine, or on SLURM.

``hydra/launcher=local_gpus`` and ``hydra/launcher=slurm`` (``configs/hydra/launcher/``) name
these classes (through :mod:`hydra_plugins.octrain_launchers.launchers`). They are the submitit
plugin's launchers (``pip install -e '.[cluster]'``) with three changes:

* :class:`LocalGpuLauncher` gives each job its own GPU, or group of ``gpus_per_node`` GPUs
  (:mod:`octrain.run.job_devices`). Submitit's own local executor would show every job the same
  first ``gpus_per_node`` GPUs.
* The command waits for every job before it reports, so that one job that fails does not cancel
  the others still running (submitit cancels the jobs it stops waiting for).
* A job that fails with an error octrain explains comes back as that one line, and the command
  exits with status 2, as a sweep with Hydra's default launcher does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

logger = logging.getLogger("octrain.launchers")  # shown at INFO, as octrain's own messages are

# The one-line errors of this process's sweep jobs, for the command line to report and exit 2.
FAILED_JOBS: list[str] = []


def _job_logging() -> None:
    """The console logging ``python -m octrain`` sets up, in a job's own process."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("octrain").setLevel(logging.INFO)


def _reason(exc: BaseException) -> str:
    """The gist of submitit's report on a job that did not finish: the last line of its trace."""
    text = str(exc).strip()
    ended = next((line for line in text.splitlines() if line.startswith("has not produced any output")), None)
    if ended is not None:  # killed (by the OOM killer, say), or over its time limit
        lines = [line.strip() for line in text.split("-" * 40, 1)[-1].splitlines() if line.strip()]
        last = f"; its last log line: {lines[-1]}" if "-" * 40 in text and lines else ""
        return f"its process ended without a result (killed? out of memory?){last}"
    if "with trace:" in text:  # "...failed during processing with trace:\n----\n<trace>\n----\n<paths>"
        blocks = [b for b in text.split("----------------------") if b.strip()]
        if len(blocks) > 1:
            text = blocks[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class _OctrainSubmititLauncher(BaseSubmititLauncher):
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:  # in the job's process
        _job_logging()
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # The plugin's launch, except that it waits for every job before it looks at any.
        import submitit
        from hydra.core.singleton import Singleton
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        assert self.config is not None
        assert job_overrides
        init_keys = {"submitit_folder", "max_num_timeout"}
        init_params: dict[str, Any] = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:  # SLURM only
            init_params[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                (key if key in base else f"{self._EXECUTOR}_{key}"): value
                for key, value in self.params.items()
                if key not in init_keys
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        logger.info("submitit %s sweep: %d jobs into %s", self._EXECUTOR, len(job_overrides), sweep_dir)
        self._before_submit()
        params: list[tuple[Any, ...]] = []
        for offset, overrides in enumerate(job_overrides):
            number = initial_job_idx + offset
            logger.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            params.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*params, strict=True))
        for (_, _, number, _, _), job in zip(params, jobs, strict=True):
            logger.info("job #%d: submitit job %s, log %s", number, job.job_id, job.paths.stderr)
        for job in jobs:
            job.wait()
        returns = []
        for (overrides, _, number, _, _), job in zip(params, jobs, strict=True):
            label = f"job #{number} ({' '.join(filter_overrides(overrides))})"
            try:
                result: JobReturn = job.results()[0]
            except Exception as exc:  # killed, out of memory, over its time limit: submitit says which
                reason = _reason(exc)
                FAILED_JOBS.append(f"{label} did not finish: {reason}; log: {job.paths.stderr}")
                result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
                result.return_value = FAILED_JOBS[-1]
            else:
                if result.status == JobStatus.COMPLETED and isinstance(result.return_value, str):
                    FAILED_JOBS.append(f"{label}: {result.return_value}; log: {job.paths.stderr}")
            returns.append(result)
        return returns

    def _before_submit(self) -> None:
        """Runs in the command's process just before the jobs are pickled and submitted."""


class LocalGpuLauncher(_OctrainSubmititLauncher):
    """One fresh process per job on this machine, each with its own ``gpus_per_node`` GPUs."""

    _EXECUTOR = "local"
    _gpu_pool: list[str] | None = None

    def _before_submit(self) -> None:
        from octrain.run.job_devices import device_groups, gpu_pool

        self._gpu_pool = gpu_pool()  # the command's view: each job's own is cut down to its group
        per_job = self.params.get("gpus_per_node") or 0
        if per_job:
            device_groups(self._gpu_pool, per_job)  # a group bigger than the pool: one line here, not N jobs failing
            logger.info("sharing GPUs %s out, %d per job", ",".join(self._gpu_pool) or "(none found)", per_job)

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, *rest: Any) -> JobReturn:
        _job_logging()
        per_job = self.params.get("gpus_per_node") or 0
        if not per_job:
            return BaseSubmititLauncher.__call__(self, sweep_overrides, job_dir_key, job_num, *rest)
        from octrain.run.job_devices import claim_devices

        with claim_devices(job_num, per_job, self._gpu_pool or []):
            return BaseSubmititLauncher.__call__(self, sweep_overrides, job_dir_key, job_num, *rest)


class SlurmLauncher(_OctrainSubmititLauncher):
    """One sbatch array task per job; SLURM gives each its own GPUs."""

    _EXECUTOR = "slurm"
