"""``octrain memory``: how much GPU memory each stage of a run needs, and what to change when a card is too small.

Reads a recipe with overrides (the same ``+recipe=NAME key=value ...`` a run takes), or a run
directory's resolved ``config.yaml``, and prints a Markdown table: each model a stage loads, the
GiB it needs, and on each card whether it fits, is tight (runs, slower) or does not fit, with the
overrides that make it fit. The work is :func:`octrain.memory.memory_report`; this module parses and prints.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  octrain memory +recipe=pirate_mini
  octrain memory +recipe=pirate_mini model@teacher=qwen3_8b --card 24 --card 48
  octrain memory +recipe=pirate_mini trainer.trl.gradient_checkpointing=false --detail
  octrain memory runs/pirate_mini          a run directory's resolved config.yaml

'fits': runs at a useful speed; 'tight': starts, but batches fewer sequences (slower); 'no': does not
start, followed by the overrides that make it fit. An estimate: the smoke runs (smoke=large) are the real test."""


def _run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: the parser alone must stay quick (see octrain.cli).
    from octrain.memory import CARDS, memory_report

    cards = tuple(args.card) if args.card else CARDS
    print(memory_report(args.target, cards, detail=args.detail))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "memory",
        help="GPU memory each stage needs on 24/48/80/141 GB cards, and what to change where it does not fit",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        nargs="*",
        metavar="TARGET",
        help="+recipe=NAME [key=value ...] (the overrides a run takes), or a run directory or its config.yaml",
    )
    parser.add_argument(
        "--card",
        action="append",
        type=float,
        metavar="GB",
        help="a card size in GB (repeatable; default: 24, 48, 80 and 141); other sizes are taken as GiB",
    )
    parser.add_argument("--detail", action="store_true", help="also list each row's parts (weights, KV, ...)")
    parser.set_defaults(func=_run)
