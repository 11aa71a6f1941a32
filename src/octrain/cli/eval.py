"""``octrain eval classifier|elo|model|revealed-preferences|quick|summary|capability|ood|reproduce``: evaluations
outside a run.

The commands are :mod:`octrain.evaluation.commands`'s (the Studio's Evaluate page runs the same
ones); errors and notes begin ``octrain:``. ``python -m octrain.evaluation`` is an old name for
this verb and runs it. A run's ``eval`` stage does the whole evaluation; these run one part of it
on any model or data file.
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
        help="evaluate outside a run: quick look, revealed preferences, a classifier, Elo, a run's eval on any model, "
        "benchmarks, out of distribution, the paper's adapters",
        description="Evaluations of any model or data file. classifier, elo and model print JSON; "
        "quick, revealed-preferences and summary print text (--json for JSON).",
        epilog="examples:\n  octrain eval classifier --train train.jsonl --eval eval.jsonl --out runs/clf\n"
        "  octrain eval elo runs/pirate_tiny/eval/matches.jsonl --judge-url http://127.0.0.1:8000/v1 "
        "--judge-model judge\n"
        "  octrain eval capability pirate_smollm2/sft --tasks octrain_basics:5\n"
        "  octrain eval ood pirate_smollm2/sft\n"
        "  octrain eval model runs/pirate_tiny --model runs/pirate_tiny/dpo/model.json --out /tmp/eval-dpo\n"
        "  octrain eval quick --persona pirate\n"
        "  octrain eval revealed-preferences pirate_tiny/sft --per-trait 16\n"
        "  octrain eval summary runs/pirate_smollm2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_commands(parser.add_subparsers(dest="eval_subcommand", metavar="COMMAND", required=True))
    parser.set_defaults(func=_run)
