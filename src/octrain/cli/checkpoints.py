"""``octrain checkpoints``: list, inspect, delete and rebuild the checkpoint registry.

The registry (:mod:`octrain.registry`) indexes the trained models under a run root. These
commands read it and keep it in order; the run directories stay the record, so ``rebuild``
recreates the index from them whenever it is lost or out of date.

``add_parser`` adds the command to the ``octrain`` dispatcher; ``main`` runs it on its own
(``python -m octrain.cli.checkpoints list``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from octrain.errors import OctrainError, RegistryError
from octrain.registry import REGISTRY_FILE, Checkpoint, Registry

DEFAULT_RUN_ROOT = "runs"  # the config's run_root default
REMOTE_NOTE = "Tinker checkpoints: the Tinker backend is not in this version; listing local checkpoints"

_EXAMPLES = {
    "checkpoints": """examples:
  octrain checkpoints list --persona pirate
  octrain checkpoints info pirate_mini/sft
  octrain checkpoints delete pirate_mini/dpo
  octrain checkpoints rebuild --run-root /data/runs""",
    "list": """examples:
  octrain checkpoints list
  octrain checkpoints list --persona pirate --stage sft
  octrain checkpoints list --base Qwen/Qwen3-4B --json | jq '.[0].adapter'""",
    "info": """examples:
  octrain checkpoints info pirate_mini/sft
  octrain checkpoints info pirate_mini-sweep/dpo.beta=0.1/dpo --json""",
    "delete": """examples:
  octrain checkpoints delete pirate_mini/dpo            # the entry only; the files stay
  octrain checkpoints delete pirate_mini/dpo --files    # also the stage directory, after a y/N question
  octrain checkpoints delete pirate_mini/dpo --files --yes   # the same, for scripts

Without --files the run directory still holds the finished stage, so a later rebuild
registers it again. With --files the stage directory goes, and the next run of that run
trains the stage afresh.""",
    "rebuild": """examples:
  octrain checkpoints rebuild
  octrain checkpoints rebuild --run-root /data/runs""",
}

Handler = Callable[[argparse.Namespace], int]


def _reports_errors(handler: Handler) -> Handler:
    """Print a user error as one line on stderr and exit 2, as the rest of octrain's CLI does."""

    @wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except OctrainError as exc:
            print(f"octrain: error: {exc}", file=sys.stderr)
            return 2

    return run


def _registry(args: argparse.Namespace) -> Registry:
    root = Path(args.run_root)
    if not root.is_dir():
        raise RegistryError(f"run root {root} is not a directory: pass the directory your runs are in with --run-root")
    return Registry.at(root)


def _when(created: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(created))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def format_table(entries: list[Checkpoint]) -> str:
    """The entries as an aligned table, one line each, newest first as given."""
    header = ("NAME", "PERSONA", "STAGE", "BASE", "STEPS", "LOSS", "FINISHED")
    rows = [
        (
            e.name + (" (remote)" if e.remote else ""),
            e.persona,
            e.stage,
            e.base_model,
            _number(e.metrics.get("steps")),
            _number(e.metrics.get("final_loss")),
            _when(e.created),
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


def format_info(entry: Checkpoint) -> str:
    """Every field of one entry, one per line, metrics indented beneath."""
    lines = [
        f"name:        {entry.name}",
        f"persona:     {entry.persona}",
        f"stage:       {entry.stage}",
        f"base model:  {entry.base_model}",
        f"{'remote:' if entry.remote else 'adapter:':<13}{entry.adapter}",
        f"run dir:     {entry.run_dir}",
        f"fingerprint: {entry.fingerprint}",
        f"finished:    {_when(entry.created)}",
        "metrics:",
    ]
    lines.extend(f"  {key}: {_number(value)}" for key, value in sorted(entry.metrics.items()))
    return "\n".join(lines)


@_reports_errors
def list_command(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if args.remote:
        print(REMOTE_NOTE, file=sys.stderr)  # stderr: --json output stays parseable
    entries = registry.entries(persona=args.persona, stage=args.stage, base=args.base)
    if not args.remote:
        entries = [entry for entry in entries if not entry.remote]
    if args.json:
        print(json.dumps([entry.to_json() for entry in entries], indent=2))
    elif entries:
        print(format_table(entries))
    else:
        filters = [
            f"{key}={value}" for key, value in vars(args).items() if key in {"persona", "stage", "base"} and value
        ]
        which = f" matching {', '.join(filters)}" if filters else ""
        print(f"no checkpoints{which} in {registry.path} (`octrain checkpoints rebuild` scans the run directories)")
    return 0


@_reports_errors
def info_command(args: argparse.Namespace) -> int:
    entry = _registry(args).get(args.name)
    print(json.dumps(entry.to_json(), indent=2) if args.json else format_info(entry))
    return 0


def _confirmed(question: str) -> bool:
    """A yes from the person at the terminal; RegistryError when nobody is there to ask."""
    if not sys.stdin.isatty():
        raise RegistryError("delete --files asks for confirmation, and stdin is not a terminal: add --yes to confirm")
    return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}


def _delete_files(entry: Checkpoint, run_root: Path) -> Path:
    """Delete the entry's stage directory, holding its run's lock; the directory deleted.

    The whole stage directory goes, not only the adapter inside it: a ``done.json`` left without
    its adapter would make the pipeline skip the stage and ``rebuild`` register missing weights.
    """
    from octrain.run_lock import run_lock
    from octrain.stage_share import retire_directory

    if entry.remote:
        raise RegistryError(f"{entry.name} is a remote checkpoint: the Tinker backend is not in this version")
    stage_dir = entry.stage_dir.resolve()
    # An entry is data: never follow one to delete outside the run root it is registered in.
    if not stage_dir.is_relative_to(run_root.resolve()):
        raise RegistryError(f"{entry.name}: {stage_dir} is outside the run root {run_root}: delete it by hand")
    if stage_dir.is_dir():
        with run_lock(Path(entry.run_dir)):  # StageError while a run is working there
            retire_directory(stage_dir)
    return stage_dir


@_reports_errors
def delete_command(args: argparse.Namespace) -> int:
    registry = _registry(args)
    entry = registry.get(args.name)
    if args.files:
        if not args.yes and not _confirmed(f"delete {entry.stage_dir} (adapter, checkpoints, metrics)?"):
            print("nothing deleted")
            return 1
        removed = _delete_files(entry, Path(args.run_root))
        registry.delete(entry.name)
        print(f"deleted {entry.name} and its files in {removed}")
    else:
        registry.delete(entry.name)
        print(f"removed {entry.name} from the registry; its files stay in {entry.stage_dir} (--files deletes them)")
    return 0


@_reports_errors
def rebuild_command(args: argparse.Namespace) -> int:
    registry = _registry(args)
    count = registry.rebuild(args.run_root)
    print(f"registered {count} checkpoint{'s' if count != 1 else ''} from the runs under {args.run_root}")
    return 0


def _subcommand(
    commands: argparse._SubParsersAction, name: str, summary: str, handler: Handler
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=_EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run-root",
        default=DEFAULT_RUN_ROOT,
        metavar="DIR",
        help=f"the directory the runs are in, holding {REGISTRY_FILE} (default: {DEFAULT_RUN_ROOT})",
    )
    parser.set_defaults(func=handler)
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``checkpoints`` and its subcommands to the ``octrain`` command line."""
    parser = subparsers.add_parser(
        "checkpoints",
        help="list, inspect, delete and rebuild the registry of trained checkpoints",
        description="The registry of the trained checkpoints (dpo and sft stages) of the runs under a run root.",
        epilog=_EXAMPLES["checkpoints"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="checkpoints_command", metavar="COMMAND", required=True)

    listing = _subcommand(commands, "list", "list the registered checkpoints, newest first", list_command)
    listing.add_argument("--persona", help="only this persona's checkpoints (the constitution's name)")
    listing.add_argument("--stage", choices=["dpo", "sft"], help="only this stage's checkpoints")
    listing.add_argument("--base", metavar="MODEL", help="only checkpoints trained on this base model (path or Hub id)")
    listing.add_argument("--json", action="store_true", help="print a JSON list, for scripts")
    listing.add_argument("--remote", action="store_true", help="include Tinker checkpoints (not in this version)")

    info = _subcommand(commands, "info", "show everything the registry holds about one checkpoint", info_command)
    info.add_argument("name", metavar="NAME", help="a checkpoint name, as list shows it (pirate_mini/sft)")
    info.add_argument("--json", action="store_true", help="print a JSON object, for scripts")

    delete = _subcommand(
        commands, "delete", "remove a checkpoint from the registry, and its files with --files", delete_command
    )
    delete.add_argument("name", metavar="NAME", help="a checkpoint name, as list shows it (pirate_mini/dpo)")
    delete.add_argument("--files", action="store_true", help="also delete the stage directory (asks first)")
    delete.add_argument("--yes", action="store_true", help="do not ask before deleting files (for scripts)")

    _subcommand(commands, "rebuild", "recreate the registry from the run directories", rebuild_command)


def main(argv: list[str] | None = None) -> int:
    """``octrain checkpoints ARGS`` on its own: the exit code."""
    parser = argparse.ArgumentParser(prog="octrain")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["checkpoints", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
