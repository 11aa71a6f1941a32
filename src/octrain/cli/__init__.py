"""The ``octrain`` command's subcommands: ``octrain COMMAND [options]``.

Running a recipe stays Hydra's (``octrain +recipe=NAME ...``, see :mod:`octrain.__main__`);
every other command is an argparse subcommand here. Each lives in a module of this package
named after it, exposing ``add_parser(subparsers)``, which adds the command's parser and
sets ``func``, the handler that takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module builds its parser only; what a command needs is imported when it runs, so that
# --help and the dispatch stay quick.
SUBCOMMANDS: tuple[str, ...] = (
    "checkpoints",
    "sample",
    "chat",
    "serve",
    "export",
    "push",
    "deploy",
    "constitution",
    "eval",
    "info",
    "memory",
    "models",
    "ui",
)


def _description() -> str:
    from octrain.core.paths import available_recipes

    recipes = ", ".join(available_recipes()) or "none (no recipes/ directory found)"
    return (
        "Character training for chat models.\n\n"
        "run a recipe (Hydra):\n"
        "  octrain +recipe=NAME [key=value ...]       also: python -m octrain +recipe=NAME ...\n"
        "  octrain -m +recipe=NAME dpo.beta=0.1,0.3   a sweep over comma-separated values\n"
        "  octrain +recipe=NAME --cfg job             the composed config, without running\n"
        "  octrain +recipe=NAME --help                every config group and key (Hydra's help)\n"
        '  eval "$(octrain -sc install=bash)"         tab completion of recipes and keys in bash\n'
        f"  recipes: {recipes}\n\n"
        "live with a trained character:\n"
        '  octrain sample "Ahoy?" --persona pirate --compare   base and trained side by side\n'
        "  octrain chat pirate_mini/sft                       a streaming terminal chat\n"
        "  octrain serve pirate_mini/sft                      an OpenAI-compatible server"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="octrain",
        description=_description(),
        epilog="Each command has its own --help with examples, e.g. octrain constitution --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; the exit status (0, or 2 for a user's error, with one line on stderr)."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        parsed = parser.parse_args(args)
    except SystemExit as exc:  # argparse exits for --help (0) and for bad arguments (2, its usage printed)
        return exc.code if isinstance(exc.code, int) else 2
    from octrain.core.errors import OctrainError

    try:
        return parsed.func(parsed)
    except OctrainError as exc:
        print(f"octrain: error: {exc}", file=sys.stderr)
        return 2
