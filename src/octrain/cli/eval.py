"""``octrain eval classifier|elo|model``: evaluations on any data files, outside a run.

The same commands as ``python -m octrain.evaluation`` (both run
:mod:`octrain.evaluation.commands`); errors and notes begin ``octrain:`` here. A run's
``eval`` stage does the whole evaluation, revealed preferences included; ``revealed-preferences``
and ``quick`` as commands of their own are not in this version.
"""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from octrain.evaluation.commands import run_command

    return run_command(args, "octrain")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from octrain.evaluation.commands import add_commands

    parser = subparsers.add_parser(
        "eval",
        help="evaluate outside a run: a persona classifier, Elo from matches, a run's eval on another model",
        description="Evaluations on any data files; results print as JSON.",
        epilog="examples:\n  octrain eval classifier --train train.jsonl --eval eval.jsonl --out runs/clf\n"
        "  octrain eval elo runs/pirate_tiny/eval/matches.jsonl\n"
        "  octrain eval model runs/pirate_tiny --model runs/pirate_tiny/dpo/model.json --out /tmp/eval-dpo\n\n"
        "not in this version yet: 'revealed-preferences' and 'quick' (a run's eval stage measures "
        "revealed preferences)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_commands(parser.add_subparsers(dest="eval_subcommand", metavar="COMMAND", required=True))
    parser.set_defaults(func=_run)
