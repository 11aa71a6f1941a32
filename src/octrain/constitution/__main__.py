"""``python -m octrain.constitution``: convert between constitution formats, or validate files.

    python -m octrain.constitution convert IN OUT [--to yaml|json|jsonl|text]
    python -m octrain.constitution validate FILE...

``convert`` takes the format from OUT's extension unless ``--to`` names it (the paper keeps
JSON in ``.txt`` files: ``--to json``), prints what the target format cannot hold, and
writes OUT atomically, so a failed run never leaves half a file. ``validate`` prints one
line per file and exits 0 when every file loads, 2 otherwise, for scripts and CI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from octrain.constitution.convert import EXTENSION_FORMATS, FORMATS, not_kept, render
from octrain.constitution.load import load_constitution
from octrain.errors import DataFormatError
from octrain.jsonl import write_text_atomic


def _convert(source: str, out: str, target: str | None) -> int:
    out_path = Path(out)
    target = target or EXTENSION_FORMATS.get(out_path.suffix.lower())
    if target is None:
        print(
            f"octrain: error: {out}: cannot tell the format from '{out_path.suffix}'; give --to ({', '.join(FORMATS)})",
            file=sys.stderr,
        )
        return 2
    try:
        constitution = load_constitution(source)
    except DataFormatError as exc:
        print(f"octrain: error: {exc}", file=sys.stderr)
        return 2
    write_text_atomic(out_path, render(constitution, target))
    print(
        f"{source} -> {out} ({target}): {len(constitution.traits)} traits, {constitution.question_count} seed "
        f"questions, {constitution.additional_count} additional questions"
    )
    for item in not_kept(constitution, target, out_path.stem):
        print(f"  not kept in {target}: {item}")
    return 0


def _validate(files: list[str]) -> int:
    status = 0
    for name in files:
        try:
            constitution = load_constitution(name)
        except DataFormatError as exc:
            print(exc)
            status = 2
        except OSError as exc:
            print(f"{name}: cannot read the file ({exc.strerror})")
            status = 2
        else:
            print(
                f"{name}: ok ({len(constitution.traits)} traits, {constitution.question_count} seed questions, "
                f"{constitution.additional_count} additional questions)"
            )
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m octrain.constitution", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="write a constitution in another format")
    convert.add_argument("source", metavar="IN")
    convert.add_argument("out", metavar="OUT")
    convert.add_argument("--to", choices=FORMATS, help="the format to write (default: from OUT's extension)")
    validate = commands.add_parser("validate", help="check constitution files; exit 2 if any does not load")
    validate.add_argument("files", metavar="FILE", nargs="+")
    args = parser.parse_args(argv)
    # Notes (a merged near-duplicate) and warnings (a repeated question) go to stderr, so
    # stdout keeps one line per file.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("octrain").setLevel(logging.INFO)
    if args.command == "convert":
        return _convert(args.source, args.out, args.to)
    return _validate(args.files)


if __name__ == "__main__":
    sys.exit(main())
