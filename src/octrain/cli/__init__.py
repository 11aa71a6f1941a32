"""The ``octrain`` command's subcommands: ``octrain COMMAND [options]``.

Running a recipe stays Hydra's (``octrain +recipe=NAME ...``, see :mod:`octrain.__main__`);
every other command is an argparse subcommand here. Each lives in a module of this package
named after it, exposing ``add_parser(subparsers)``, which adds the command's parser and
sets ``func``, the handler that takes the parsed arguments and returns the exit status.

``checkpoints`` is written separately: it joins the list when its module is present, so that
this dispatcher works with or without it. ``sample`` and ``chat`` are names kept for
commands not in this version: they fail with one line instead of reaching Hydra, which would
complain about a missing recipe.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# Each module builds its parser only; what a command needs is imported when it runs, so that
# --help and the dispatch stay quick.
_OPTIONAL = ("checkpoints",)
SUBCOMMANDS: tuple[str, ...] = tuple(
    name
    for name in ("checkpoints", "constitution", "eval", "info")
    if name not in _OPTIONAL or importlib.util.find_spec(f"{__name__}.{name}") is not None
)
NOT_YET = {
    "sample": "sampling a model from the command line",
    "chat": "chatting with a trained model",
}


def _description() -> str:
    from octrain.paths import available_recipes

    recipes = ", ".join(available_recipes()) or "none (no recipes/ directory found)"
    not_yet = ", ".join(f"'{name}' ({what})" for name, what in NOT_YET.items())
    return (
        "Character training for chat models.\n\n"
        "run a recipe (Hydra):\n"
        "  octrain +recipe=NAME [key=value ...]       also: python -m octrain +recipe=NAME ...\n"
        "  octrain -m +recipe=NAME dpo.beta=0.1,0.3   a sweep over comma-separated values\n"
        "  octrain +recipe=NAME --cfg job             the composed config, without running\n"
        "  octrain +recipe=NAME --help                every config group and key (Hydra's help)\n"
        '  eval "$(octrain -sc install=bash)"         tab completion of recipes and keys in bash\n'
        f"  recipes: {recipes}\n\n"
        f"not in this version yet: {not_yet};\n"
        "  'constitution new'; 'eval revealed-preferences' and 'eval quick' (a run's eval stage\n"
        "  measures revealed preferences)"
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
    if args and args[0] in NOT_YET:
        print(f"octrain: error: '{args[0]}' ({NOT_YET[args[0]]}) is not in this version yet", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        parsed = parser.parse_args(args)
    except SystemExit as exc:  # argparse exits for --help (0) and for bad arguments (2, its usage printed)
        return exc.code if isinstance(exc.code, int) else 2
    from octrain.errors import OctrainError

    try:
        return parsed.func(parsed)
    except OctrainError as exc:
        print(f"octrain: error: {exc}", file=sys.stderr)
        return 2
