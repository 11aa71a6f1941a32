"""``octrain constitution list|show|validate|convert|score``: the constitutions octrain can find.

* ``list``: every constitution in the search directories (``./constitutions`` first, then the
  shipped ones; :func:`octrain.paths.constitution_dirs`), with its format, traits and seed
  questions. A name in the first directory shadows the same name further down, as in a run.
* ``show NAME``: the traits as the teacher reads them (``Constitution.numbered_traits``).
* ``validate FILE...`` and ``convert IN OUT``: the same code as ``python -m octrain.constitution``
  (:mod:`octrain.constitution.commands`).
* ``score NAME``: the 0-100 score of :mod:`octrain.constitution.quality`, with a reason per check.

Writing a new constitution from a description (``new NAME --describe``) needs a sampler and
is not in this version.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from octrain.constitution.commands import (
    add_convert_arguments,
    add_validate_arguments,
    convert,
    log_notes_to_stderr,
    validate,
)

EXAMPLES = {
    "list": "",
    "show": "pirate",
    "validate": "constitutions/pirate.yaml my_persona.txt",
    "convert": "constitutions/pirate.yaml /tmp/pirate.json",
    "score": "pirate",
}


def _file_format(path: Path, text: str) -> str:
    """The format the loader reads the file as: JSON is told by content, whatever the extension."""
    from octrain.constitution import flat
    from octrain.constitution.load import SUFFIXES

    kind = SUFFIXES[path.suffix.lower()]
    if kind == "text" and flat.looks_like_json(text):
        try:
            _, rows = flat.parse_json_or_lines(text)
        except flat.NotJson:
            return kind  # the loader's error says why; the listing shows it
        return "jsonl" if rows is not None else "json"
    return kind


def _list(args: argparse.Namespace) -> int:
    from octrain.constitution.load import SUFFIXES, load_constitution
    from octrain.errors import DataFormatError
    from octrain.paths import constitution_dirs

    # A listing reads every file; the loader's notes about each would drown it.
    logging.getLogger("octrain.constitution").setLevel(logging.ERROR)
    rows: list[tuple[str, str, str, str, str]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for directory in constitution_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()):
            shadowed = path.stem in seen
            seen.add(path.stem)
            try:
                constitution = load_constitution(path)
                kind = _file_format(path, path.read_text(encoding="utf-8-sig"))
            except (DataFormatError, OSError, UnicodeDecodeError) as exc:
                problems.append(f"  {path}: does not load: {str(exc).splitlines()[0]}")
                continue
            name = path.stem + (" (shadowed)" if shadowed else "")
            rows.append((name, kind, str(len(constitution.traits)), str(constitution.question_count), str(directory)))
    if not rows and not problems:
        print(f"no constitutions found (looked in {', '.join(map(str, constitution_dirs()))})")
        return 0
    header = ("name", "format", "traits", "seed questions", "directory")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for line in problems:
        print(line)
    return 2 if problems else 0


def _show(args: argparse.Namespace) -> int:
    from octrain.pipeline import resolve_constitution_name

    constitution = resolve_constitution_name(args.name)
    print(
        f"# {constitution.name} ({constitution.source}): {len(constitution.traits)} traits, "
        f"{constitution.question_count} seed questions"
    )
    if args.questions:
        for number, trait in enumerate(constitution.traits, start=1):
            print(f"{number}: {trait.text}")
            for question in trait.questions:
                print(f"    - {question}")
    else:
        print(constitution.numbered_traits())
    return 0


def _score(args: argparse.Namespace) -> int:
    from octrain.constitution.quality import score_constitution
    from octrain.pipeline import resolve_constitution_name

    logging.getLogger("octrain.constitution").setLevel(logging.ERROR)  # the score reports repeats itself
    constitution = resolve_constitution_name(args.name)
    score = score_constitution(constitution)
    print(f"{constitution.name}: {score.total}/100")
    for check in score.checks:
        print(f"  {check.name:<15}{check.points:>5.1f} / {check.most:<3} {check.reason}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    log_notes_to_stderr()
    return validate(args.files)


def _convert(args: argparse.Namespace) -> int:
    log_notes_to_stderr()
    return convert(args.source, args.out, args.to)


def _add(
    commands: argparse._SubParsersAction, name: str, help_text: str, handler: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  %(prog)s {EXAMPLES[name]}".rstrip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=handler)
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "constitution",
        help="list, show, validate, convert and score constitutions",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="examples:\n  octrain constitution list\n  octrain constitution show pirate\n"
        "  octrain constitution score pirate\n\nnot in this version yet: 'new NAME --describe' "
        "(writing a constitution from a description needs a sampler)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="constitution_command", metavar="COMMAND", required=True)
    _add(commands, "list", "every constitution found, with its format, traits and seed questions", _list)
    show = _add(commands, "show", "the numbered traits, as the teacher sees them", _show)
    show.add_argument("name", metavar="NAME", help="a name from the constitution directories, or a path")
    show.add_argument("--questions", action="store_true", help="each trait's seed questions beneath it")
    add_validate_arguments(
        _add(commands, "validate", "check constitution files; exit 2 if any does not load", _validate)
    )
    add_convert_arguments(_add(commands, "convert", "write a constitution in another format", _convert))
    score = _add(commands, "score", "a 0-100 quality score, with the reason for each part", _score)
    score.add_argument("name", metavar="NAME", help="a name from the constitution directories, or a path")
