"""The command line: ``octrain +recipe=NAME [key=value ...]`` (or ``python -m octrain ...``).

A first argument that names a subcommand (``octrain info``, ``octrain constitution list``, ...)
goes to :mod:`octrain.cli`, as does ``--help`` alone, which shows both forms. Everything else
is a recipe run, and this is the only module that knows about Hydra. It composes the configs under
``configs/`` and the chosen recipe from ``recipes/`` onto the typed schema, converts the
result to :class:`~octrain.core.config.OctrainConfig` once, and hands it to
:func:`octrain.run.pipeline.run` with the run directory Hydra chose (``runs/<name>``, or one
subdirectory per job in a ``-m`` sweep).

Hydra would write its record of the command line (``.hydra/config.yaml``, ``hydra.yaml``,
``overrides.yaml``) into the run directory before the job starts, so a second process that the
run's lock then refuses would already have replaced the first one's record. ``configs/octrain.yaml``
turns that off (``hydra.output_subdir: null``) and this module hands the same three files to
:func:`octrain.run.pipeline.run`, which writes them once it holds the lock (:func:`hydra_record`).

Errors a user can fix (an unknown recipe, a misspelled key, a bad value, a malformed
file, a run directory that cannot be written or a full disk) print as one line on stderr and
exit with status 2.

Hydra's shell completion (``-sc install=bash``, and the ``-sc query=bash`` its script runs on
each Tab) needs no recipe, so it skips the recipe check and goes to Hydra.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from octrain.core.telemetry import disable_telemetry

disable_telemetry()

from octrain.core.paths import available_recipes, configs_dir  # noqa: E402

USAGE = "usage: python -m octrain +recipe=NAME [key=value ...]   (-m for a sweep over comma-separated values)"
_RECIPE_ARG = re.compile(r"^\+{0,2}recipe=(.*)$")
# What Hydra does without a recipe: its help, the composed config, its own info, shell completion.
_NO_RECIPE_FLAGS = ("-h", "--help", "--hydra-help", "--info", "-i", "-sc", "--shell-completion")
# A bare word, which Hydra would never take: a subcommand, or a misspelling of one.
_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_PYTHON_M = re.compile(r"^\s*\S*python[0-9.]*\s+-m\s+octrain(?=\s|$)")


def _completion_line() -> None:
    """Let a completion query come from ``python -m octrain ...`` too: Hydra strips ``python
    script.py`` or an app's name from ``COMP_LINE``, and would read ``-m octrain`` as a sweep
    flag and an override."""
    line = os.environ.get("COMP_LINE")
    if line is not None:
        os.environ["COMP_LINE"] = _PYTHON_M.sub("octrain", line, count=1)


def _commands_line() -> str:
    from octrain.cli import SUBCOMMANDS

    return f"commands: {', '.join(SUBCOMMANDS)} (octrain --help)"


def _recipe_problem(argv: list[str]) -> str | None:
    """Why the command line cannot run a recipe, or None when it names known recipes."""
    known = available_recipes()
    listing = "available recipes: " + (", ".join(known) or "none (no recipes/ directory found)")
    values = [m.group(1) for m in (_RECIPE_ARG.match(arg) for arg in argv) if m]
    if not values:
        return f"no recipe given.\n{USAGE}\n{listing}\n{_commands_line()}"
    for value in values:
        for name in value.split(","):
            if name.strip() not in known:
                return f"unknown recipe {name.strip()!r}.\n{listing}"
    return None


def error_message(exc: BaseException) -> str:
    """The most specific message in an exception chain, on one line, with its config key."""
    from octrain.core.errors import OctrainError

    innermost = exc
    while not isinstance(innermost, OctrainError):
        inner = innermost.__cause__ or (None if innermost.__suppress_context__ else innermost.__context__)
        if inner is None:
            break
        innermost = inner
    message = str(innermost).strip().splitlines()[0] if str(innermost).strip() else type(innermost).__name__
    key = getattr(innermost, "full_key", None)
    if key and str(key) not in message:
        message = f"{key}: {message}"
    return message


def _end_progress_bars() -> None:
    """Close the progress bars a failed stage left open, so that the error starts its own line
    instead of trailing a half-drawn bar."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        with contextlib.suppress(Exception):  # a bar that cannot close must not hide the error
            bar.close()


# Where Hydra keeps its record of a run's command line (its default ``hydra.output_subdir``).
HYDRA_RECORD_DIR = ".hydra"


def hydra_record(task_config: Any, hydra_config: Any) -> dict[str, str]:
    """The files Hydra writes into ``RUN_DIR/.hydra``, by path within the run directory, with the
    text Hydra gives them: the job's config, Hydra's own config, and the command line's overrides.

    ``task_config`` is the config the job received and ``hydra_config`` Hydra's (the ``hydra``
    node of :class:`~hydra.core.hydra_config.HydraConfig`). Hydra's config is recorded with
    ``output_subdir`` naming where the record is, as Hydra would have written it, rather than the
    ``null`` that only stops Hydra from writing it early.
    """
    from omegaconf import OmegaConf, open_dict, read_write

    recorded = OmegaConf.create({"hydra": hydra_config})
    with read_write(recorded.hydra), open_dict(recorded.hydra):  # HydraConfig's node is read-only
        recorded.hydra.output_subdir = HYDRA_RECORD_DIR
    return {
        f"{HYDRA_RECORD_DIR}/config.yaml": OmegaConf.to_yaml(task_config),
        f"{HYDRA_RECORD_DIR}/hydra.yaml": OmegaConf.to_yaml(recorded),
        f"{HYDRA_RECORD_DIR}/overrides.yaml": OmegaConf.to_yaml(hydra_config.overrides.task),
    }


def _hydra_app() -> bool:
    """Run the Hydra application; True when a job failed with an error already printed."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from octrain.core.compose import register_schema
    from octrain.core.config import OctrainConfig
    from octrain.run.pipeline import run

    register_schema()

    from octrain.core.errors import OctrainError

    failures: list[str] = []

    @hydra.main(version_base="1.3", config_path=str(configs_dir()), config_name="octrain")
    def app(cfg: DictConfig) -> str | None:
        config: OctrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        logging.getLogger("octrain").setLevel(config.log_level.upper())
        from octrain.core.scale_presets import recipe_departures

        for line in recipe_departures(config, HydraConfig.get().overrides.task):
            print(f"octrain: note: {line}", file=sys.stderr)
        hydra_config = HydraConfig.get()
        try:
            result = run(config, hydra_config.runtime.output_dir, records=hydra_record(cfg, hydra_config))
        except OctrainError as exc:
            # Caught here rather than left to Hydra, which would add its own report line;
            # in a sweep the other jobs still run.
            _end_progress_bars()
            print(f"octrain: error: {exc}", file=sys.stderr)
            failures.append(str(exc))
            # A job in a process of its own (hydra/launcher=local_gpus or slurm) hands its error
            # back to this command through the launcher (hydra_plugins.octrain_launchers).
            return error_message(exc)
        from octrain.run.ranks import is_main_process

        if is_main_process():  # under a launcher, rank 0 speaks for the run
            print(result.summary_table())
        return None

    app()
    launched = sys.modules.get("hydra_plugins.octrain_launchers._submitit")  # octrain's launchers (local_gpus, slurm)
    for failure in getattr(launched, "FAILED_JOBS", ()):
        print(f"octrain: error: {failure}", file=sys.stderr)
    return bool(failures) or bool(getattr(launched, "FAILED_JOBS", ()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        from octrain.cli import SUBCOMMANDS

        if args[0] in SUBCOMMANDS or args in (["-h"], ["--help"]):
            from octrain.cli import main as cli_main

            return cli_main(args)
        if _WORD.match(args[0]):
            known = ", ".join(available_recipes()) or "none"
            print(
                f"octrain: error: unknown command {args[0]!r}; {_commands_line()}; "
                f"or run a recipe: octrain +recipe=NAME (recipes: {known})",
                file=sys.stderr,
            )
            return 2
    wants_help = any(a in _NO_RECIPE_FLAGS or a.startswith(("--cfg", "--shell-completion=")) for a in args)
    if any(a in ("-sc", "--shell-completion") or a.startswith("--shell-completion=") for a in args):
        _completion_line()
    if not wants_help:
        problem = _recipe_problem(args)
        if problem:
            print(f"octrain: error: {problem}", file=sys.stderr)
            return 2
    # octrain's own messages at INFO; the libraries underneath only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("octrain").setLevel(logging.INFO)
    # Let Hydra raise instead of printing its own multi-line report: we print one line.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.argv = [sys.argv[0], *args]
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from octrain.core.errors import OctrainError
    from octrain.core.storage_errors import describe_write_failure

    try:
        if _hydra_app():
            return 2
    except (OctrainError, HydraException, OmegaConfBaseException) as exc:
        print(f"octrain: error: {error_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Hydra makes the run directory before octrain's own check of it runs.
        message = describe_write_failure(exc, Path.cwd())
        if message is None:
            raise
        print(f"octrain: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
