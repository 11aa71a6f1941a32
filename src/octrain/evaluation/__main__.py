"""Standalone evaluations on any data files: ``python -m octrain.evaluation COMMAND``.

    python -m octrain.evaluation classifier --train train.jsonl --eval eval.jsonl --out runs/clf
    python -m octrain.evaluation elo matches.jsonl [--judge-url URL --judge-model NAME] [--export-studio OUT]
    python -m octrain.evaluation model RUN_DIR --model MODEL.json --out DIR

The same commands as ``octrain eval``; both run :mod:`octrain.evaluation.commands`, which
describes what each does. Results print as JSON.
"""

from __future__ import annotations

import argparse
import sys

from octrain.core.telemetry import disable_telemetry

disable_telemetry()

from octrain.evaluation.commands import add_commands, run_command  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m octrain.evaluation", description=__doc__.splitlines()[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv), "octrain.evaluation")


if __name__ == "__main__":
    sys.exit(main())
