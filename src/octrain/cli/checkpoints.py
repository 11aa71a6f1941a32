"""``octrain checkpoints``: list, inspect, download, delete and rebuild the checkpoint registry.

The registry (:mod:`octrain.use.registry`) indexes the trained models under a run root. These
commands read it and keep it in order; the run directories stay the record, so ``rebuild``
recreates the index from them whenever it is lost or out of date.

Models trained on Tinker are registered too, marked remote: their weights live on the service
(a ``tinker://`` path). ``download`` turns one into a local PEFT adapter
(:mod:`octrain.use.tinker_download`), in ``<stage dir>/downloaded_adapter`` by default; the entry
stays the remote one and ``info`` shows the local copy. ``list --remote`` also asks the service
for the user's checkpoints that no registered entry records (it needs ``TINKER_API_KEY``).
What ``delete`` may delete, and in which order, is :mod:`octrain.use.checkpoint_deletion`'s:
this module parses the arguments, asks at the terminal and prints what was done.

``add_parser`` adds the command to the ``octrain`` dispatcher; ``main`` runs it on its own
(``python -m octrain.cli.checkpoints list``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError, RegistryError
from octrain.core.layout import REGISTRY_FILE
from octrain.use.registry import Checkpoint, Registry

DEFAULT_RUN_ROOT = "runs"  # the config's run_root default

_EXAMPLES = {
    "checkpoints": """examples:
  octrain checkpoints list --persona pirate
  octrain checkpoints info pirate_mini/sft
  octrain checkpoints download pirate_tinker/sft
  octrain checkpoints delete pirate_mini/dpo
  octrain checkpoints rebuild --run-root /data/runs""",
    "list": """examples:
  octrain checkpoints list
  octrain checkpoints list --persona pirate --stage sft
  octrain checkpoints list --base Qwen/Qwen3-4B --json | jq '.[0].adapter'
  octrain checkpoints list --remote      # also the Tinker checkpoints no registered one records

Registered Tinker checkpoints are listed with the local ones, marked (remote). --remote asks
the service (TINKER_API_KEY) for the rest; with --json it prints {"registered": [...],
"unregistered": [...]}, the second the SDK's checkpoint records. Filters apply to the registry.""",
    "info": """examples:
  octrain checkpoints info pirate_mini/sft
  octrain checkpoints info pirate_mini-sweep/dpo.beta=0.1/dpo --json""",
    "delete": """examples:
  octrain checkpoints delete pirate_mini/dpo            # the entry only; the files stay
  octrain checkpoints delete pirate_mini/dpo --files    # also the stage directory, after a y/N question
  octrain checkpoints delete pirate_mini/dpo --files --yes   # the same, for scripts

Without --files the run directory still holds the finished stage, so a later rebuild
registers it again. With --files the stage directory goes, and the next run of that run
trains the stage afresh. For a Tinker (remote) checkpoint, --files also deletes the stage's
checkpoints on the service (its sampler weights and the training states it recorded), which
needs TINKER_API_KEY; a downloaded copy inside the stage directory goes with it.""",
    "download": """examples:
  octrain checkpoints download pirate_tinker/sft            # into RUN/sft/downloaded_adapter
  octrain checkpoints download pirate_tinker/sft --out ~/adapters/pirate --force
  octrain checkpoints download tinker://RUN-ID/weights/sft-final --out ./pirate

  octrain sample "Hello" runs/pirate_tinker/sft/downloaded_adapter --sampler hf

Tinker downloads training states, not sampler weights: the stage's final state (named in its
tinker_progress.json) is exported once more as Hugging Face weights, downloaded and checked to
be a PEFT LoRA adapter (rank and alpha as its adapter_config.json says), with
base_model_name_or_path set to the checkpoint's base model. Nothing is left behind on failure;
--force replaces an existing folder only once the new one is complete. Needs TINKER_API_KEY.""",
    "rebuild": """examples:
  octrain checkpoints rebuild
  octrain checkpoints rebuild --run-root /data/runs""",
}

Handler = Callable[[argparse.Namespace], int]


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


def _marked(entry: Checkpoint) -> str:
    if not entry.remote:
        return entry.name
    from octrain.use.tinker_download import local_copy

    return entry.name + (" (remote, downloaded)" if local_copy(entry) else " (remote)")


def _aligned(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


def format_table(entries: list[Checkpoint]) -> str:
    """The entries as an aligned table, one line each, newest first as given."""
    header = ("NAME", "PERSONA", "STAGE", "BASE", "STEPS", "LOSS", "FINISHED")
    rows = [
        (
            _marked(e),
            e.persona,
            e.stage,
            e.base_model,
            _number(e.metrics.get("steps")),
            _number(e.metrics.get("final_loss")),
            _when(e.created),
        )
        for e in entries
    ]
    return _aligned(header, rows)


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"  # unreachable: GB ends the loop


def format_remote(checkpoints: list[Any]) -> str:
    """The service's checkpoint records (``tinker.types.Checkpoint``) as an aligned table."""
    header = ("TINKER PATH", "TYPE", "SIZE", "CREATED")
    rows = [(c.tinker_path, c.checkpoint_type, _size(c.size_bytes), _when(c.time.timestamp())) for c in checkpoints]
    return _aligned(header, rows)


def format_info(entry: Checkpoint) -> str:
    """Every field of one entry, one per line, metrics indented beneath."""
    from octrain.use.tinker_download import local_copy_info

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
    local = local_copy_info(entry)
    if local is not None:
        lines.insert(5, f"local copy:  {local['path']} (LoRA rank {local['rank']}, alpha {_number(local['alpha'])})")
    return "\n".join(lines)


def _entry_json(entry: Checkpoint) -> dict[str, Any]:
    from octrain.use.tinker_download import local_copy_info

    value = entry.to_json()
    if entry.remote:
        value["local_copy"] = local_copy_info(entry)
    return value


def list_command(args: argparse.Namespace) -> int:
    registry = _registry(args)
    entries = registry.entries(persona=args.persona, stage=args.stage, base=args.base)
    # Asked before anything is printed, so a missing key is the only line of output.
    unregistered = None
    if args.remote:
        from octrain.use.tinker_remote import unregistered_remote

        unregistered = unregistered_remote(registry)
    if args.json:
        listed = [_entry_json(entry) for entry in entries]
        if unregistered is None:
            print(json.dumps(listed, indent=2))
        else:
            remote = [c.model_dump(mode="json") for c in unregistered]
            print(json.dumps({"registered": listed, "unregistered": remote}, indent=2))
        return 0
    if entries:
        print(format_table(entries))
    else:
        filters = [
            f"{key}={value}" for key, value in vars(args).items() if key in {"persona", "stage", "base"} and value
        ]
        which = f" matching {', '.join(filters)}" if filters else ""
        print(f"no checkpoints{which} in {registry.path} (`octrain checkpoints rebuild` scans the run directories)")
    if unregistered is not None:
        if unregistered:
            print(f"\non Tinker, recorded by no registered checkpoint ({len(unregistered)}):")
            print(format_remote(unregistered))
        else:
            print("\non Tinker: no checkpoints besides the registered ones")
    return 0


def info_command(args: argparse.Namespace) -> int:
    entry = _registry(args).get(args.name)
    print(json.dumps(_entry_json(entry), indent=2) if args.json else format_info(entry))
    return 0


def download_command(args: argparse.Namespace) -> int:
    from octrain.use import tinker_download

    def say(step: str) -> None:
        print(step, file=sys.stderr)  # progress on stderr, the result on stdout

    if args.name.startswith("tinker://"):
        # A checkpoint no registered run made (list --remote shows them): no stage to put it in.
        if args.out is None:
            raise ConfigError(f"{args.name} is not a registered checkpoint: say where it goes with --out DIR")
        out = Path(args.out).expanduser()
        result = tinker_download.download_path(args.name, out, force=args.force, announce=say)
        label = args.name
    else:
        entry = _registry(args).get(args.name)
        if not entry.remote:
            raise RegistryError(f"{entry.name} is a local checkpoint: its adapter is in {entry.adapter} already")
        out = Path(args.out).expanduser() if args.out else None
        result = tinker_download.download_entry(entry, out, force=args.force, announce=say)
        label = entry.name
    was = (
        f" (the service wrote {result.original_base!r})"
        if result.original_base and result.original_base != result.base_model
        else ""
    )
    print(
        f"downloaded {label} to {result.path}: a PEFT LoRA adapter, rank {result.rank}, alpha {_number(result.alpha)}, "
        f"for {result.base_model}{was}\nsample it here: octrain sample 'PROMPT' {result.path} --sampler hf"
    )
    return 0


def _confirmed(question: str) -> bool:
    """A yes from the person at the terminal; RegistryError when nobody is there to ask."""
    if not sys.stdin.isatty():
        raise RegistryError("delete --files asks for confirmation, and stdin is not a terminal: add --yes to confirm")
    return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}


def delete_command(args: argparse.Namespace) -> int:
    from octrain.use.checkpoint_deletion import delete_checkpoint

    registry = _registry(args)
    confirm = None if args.yes else _confirmed
    deletion = delete_checkpoint(registry, args.name, Path(args.run_root), files=args.files, confirm=confirm)
    if deletion is None:
        print("nothing deleted")
        return 1
    entry = deletion.entry
    if deletion.stage_dir is None:
        print(f"removed {entry.name} from the registry; its files stay in {entry.stage_dir} (--files deletes them)")
    elif entry.remote:
        remote = len(deletion.remote)
        print(f"deleted {entry.name}: {remote} checkpoint(s) on Tinker and its files in {deletion.stage_dir}")
    else:
        print(f"deleted {entry.name} and its files in {deletion.stage_dir}")
    return 0


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
        help="list, inspect, download, delete and rebuild the registry of trained checkpoints",
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
    listing.add_argument(
        "--remote",
        action="store_true",
        help="also ask Tinker for the user's checkpoints that no registered entry records (needs TINKER_API_KEY)",
    )

    info = _subcommand(commands, "info", "show everything the registry holds about one checkpoint", info_command)
    info.add_argument("name", metavar="NAME", help="a checkpoint name, as list shows it (pirate_mini/sft)")
    info.add_argument("--json", action="store_true", help="print a JSON object, for scripts")

    delete = _subcommand(
        commands, "delete", "remove a checkpoint from the registry, and its files with --files", delete_command
    )
    delete.add_argument("name", metavar="NAME", help="a checkpoint name, as list shows it (pirate_mini/dpo)")
    delete.add_argument("--files", action="store_true", help="also delete the stage directory (asks first)")
    delete.add_argument("--yes", action="store_true", help="do not ask before deleting files (for scripts)")

    fetch = _subcommand(
        commands, "download", "download a Tinker checkpoint as a local PEFT adapter folder", download_command
    )
    fetch.add_argument(
        "name",
        metavar="NAME",
        help="a remote checkpoint's name (pirate_tinker/sft), or a tinker://.../weights/... path",
    )
    fetch.add_argument(
        "--out", metavar="DIR", help="the adapter folder to create (default: the stage's downloaded_adapter)"
    )
    fetch.add_argument("--force", action="store_true", help="replace DIR if it exists (once the download is complete)")

    _subcommand(commands, "rebuild", "recreate the registry from the run directories", rebuild_command)


def main(argv: list[str] | None = None) -> int:
    """``octrain checkpoints ARGS`` on its own (``python -m octrain.cli.checkpoints``): the exit code."""
    from octrain.cli import main as octrain_main

    return octrain_main(["checkpoints", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
