"""``octrain eval classifier|elo|model|revealed-preferences|quick``: evaluations outside a run.

The same commands as ``python -m octrain.evaluation`` (both run
:mod:`octrain.evaluation.commands`); errors and notes begin ``octrain:`` here. A run's
``eval`` stage does the whole evaluation; these run one part of it on any model or data file.
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
        help="evaluate outside a run: quick look, revealed preferences, a classifier, Elo, a run's eval on any model",
        description="Evaluations of any model or data file. classifier, elo and model print JSON; "
        "quick and revealed-preferences print text (--json for JSON).",
        epilog="examples:\n  octrain eval classifier --train train.jsonl --eval eval.jsonl --out runs/clf\n"
        "  octrain eval elo runs/pirate_tiny/eval/matches.jsonl\n"
        "  octrain eval model runs/pirate_tiny --model runs/pirate_tiny/dpo/model.json --out /tmp/eval-dpo\n"
        "  octrain eval quick --persona pirate\n"
        "  octrain eval revealed-preferences pirate_tiny/sft --per-trait 16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_commands(parser.add_subparsers(dest="eval_subcommand", metavar="COMMAND", required=True))
    parser.set_defaults(func=_run)
