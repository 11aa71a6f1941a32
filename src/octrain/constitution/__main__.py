"""``python -m octrain.constitution``: convert between constitution formats, or validate files.

    python -m octrain.constitution convert IN OUT [--to yaml|json|jsonl|text]
    python -m octrain.constitution validate FILE...

The same commands as ``octrain constitution convert|validate``; both run
:mod:`octrain.constitution.commands`, which describes what each does.
"""

from __future__ import annotations

import argparse
import sys

from octrain.constitution.commands import (
    add_convert_arguments,
    add_validate_arguments,
    convert,
    log_notes_to_stderr,
    validate,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m octrain.constitution", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_convert_arguments(commands.add_parser("convert", help="write a constitution in another format"))
    add_validate_arguments(
        commands.add_parser("validate", help="check constitution files; exit 2 if any does not load")
    )
    args = parser.parse_args(argv)
    log_notes_to_stderr()
    if args.command == "convert":
        return convert(args.source, args.out, args.to)
    return validate(args.files)


if __name__ == "__main__":
    sys.exit(main())
