"""``octrain constitution list|show|validate|convert|score|new``: the constitutions octrain can find.

* ``list``: every constitution in the search directories (``./constitutions`` first, then the
  shipped ones; :func:`octrain.constitution.search_dirs.lookup_dirs`), with its format, traits and seed
  questions. A name in the first directory shadows the same name further down, as in a run.
* ``show NAME``: the traits as the teacher reads them (``Constitution.numbered_traits``).
* ``validate FILE...`` and ``convert IN OUT``: :mod:`octrain.constitution.commands` does the work.
  ``python -m octrain.constitution``, the verb's old name, runs this verb after a deprecation line.
* ``score NAME``: the 0-100 score of :mod:`octrain.constitution.quality`, with a reason per check.
* ``new NAME --describe "..."``: a constitution drafted by a chat model (an OpenAI-compatible
  endpoint, or a local model), validated by the loader and scored before it is saved in the
  first search directory (:mod:`octrain.constitution.drafting` does the work).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from octrain.constitution.commands import convert, validate
from octrain.constitution.convert import FORMATS

if TYPE_CHECKING:
    from octrain.constitution.quality import QualityScore

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
    from octrain.constitution.catalog import catalog
    from octrain.constitution.search_dirs import lookup_dirs

    rows: list[tuple[str, str, str, str, str]] = []
    problems: list[str] = []
    for entry in catalog():
        constitution, path = entry.constitution, entry.path
        try:
            kind = _file_format(path, path.read_text(encoding="utf-8-sig")) if constitution is not None else ""
        except (OSError, UnicodeDecodeError) as exc:
            constitution, entry_error = None, str(exc).splitlines()[0]
        else:
            entry_error = entry.error
        if constitution is None:
            problems.append(f"  {path}: does not load: {entry_error}")
            continue
        name = path.stem + (" (shadowed)" if entry.shadowed else "")
        rows.append((name, kind, str(len(constitution.traits)), str(constitution.question_count), str(entry.directory)))
    if not rows and not problems:
        print(f"no constitutions found (looked in {', '.join(map(str, lookup_dirs()))})")
        return 0
    header = ("name", "format", "traits", "seed questions", "directory")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for line in problems:
        print(line)
    return 2 if problems else 0


def _show(args: argparse.Namespace) -> int:
    from octrain.constitution.catalog import resolve_constitution_name

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


def _print_score(name: str, score: QualityScore, file: TextIO | None = None) -> None:
    print(f"{name}: {score.total}/100", file=file)
    for check in score.checks:
        print(f"  {check.name:<15}{check.points:>5.1f} / {check.most:<3} {check.reason}", file=file)


def _score(args: argparse.Namespace) -> int:
    from octrain.constitution.catalog import resolve_constitution_name
    from octrain.constitution.quality import score_constitution

    logging.getLogger("octrain.constitution").setLevel(logging.ERROR)  # the score reports repeats itself
    constitution = resolve_constitution_name(args.name)
    _print_score(constitution.name, score_constitution(constitution))
    return 0


def _new(args: argparse.Namespace) -> int:
    from octrain.constitution import drafting
    from octrain.constitution.persona_files import check_name, check_target, target_path
    from octrain.core.errors import ConfigError
    from octrain.samplers import SamplingParams, release_engines

    name = check_name(args.name)
    target = None
    if not args.print:
        # Refuse before the model is asked: a name that is taken should not cost a request.
        target = target_path(name, args.out)
        check_target(name, target, force=args.force)
    if args.base_url:
        if not args.model:
            raise ConfigError("--base-url needs --model, the model name the endpoint serves")
        sampler = drafting.openai_sampler(args.base_url, args.model, api_key_env=args.api_key_env, timeout=args.timeout)
    else:
        sampler = drafting.local_sampler(args.local_model, backend=args.backend, device=args.device)
    params = SamplingParams(
        temperature=args.temperature, top_p=0.95, repetition_penalty=1.0, max_new_tokens=args.max_tokens, seed=args.seed
    )
    print(f"drafting {name!r} with {sampler.name}...", file=sys.stderr)
    try:
        draft = drafting.draft_constitution(
            sampler,
            name,
            args.describe,
            traits=args.traits,
            questions=args.questions,
            retries=args.retries,
            params=params,
            report=lambda line: print(f"octrain: {line}", file=sys.stderr),
        )
    finally:
        sampler.close()
        if not args.base_url:
            release_engines()
    constitution = draft.constitution
    summary = (
        f"{len(constitution.traits)} traits, {constitution.question_count} seed questions "
        f"(draft {draft.attempts} of {args.retries + 1})"
    )
    for note in draft.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.print:
        # stdout holds the YAML alone, so that `> file.yaml` keeps a loadable file; the rest goes to stderr.
        sys.stdout.write(draft.text)
        print(f"validated, not saved: {summary}", file=sys.stderr)
        _print_score(name, draft.score, file=sys.stderr)
        return 0
    assert target is not None
    replaced = drafting.save_draft(draft, target, force=args.force)
    print(f"saved {target}: {summary}")
    for path in replaced:
        print(f"  {'replaced' if path == target else 'shadows'} {path}")
    _print_score(name, draft.score)
    return 0


def log_notes_to_stderr() -> None:
    """Send the loader's notes (a merged near-duplicate) and warnings (a repeated question) to
    stderr, so that stdout keeps one line per file."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("octrain").setLevel(logging.INFO)


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


NEW_EXAMPLES = """\
examples:
  # an OpenAI-compatible endpoint; the key is read from $OPENAI_API_KEY and written nowhere
  %(prog)s stoic_coach --describe "a calm stoic coach who answers with Marcus Aurelius" \\
      --base-url https://api.openai.com/v1 --model gpt-4o-mini
  # a local vLLM or llama.cpp server that takes no key, twelve traits, printed instead of saved
  %(prog)s gardener --describe "a cheerful old gardener" --base-url http://127.0.0.1:8000/v1 \\
      --model Qwen/Qwen3-8B --api-key-env "" --traits 12 --print
  # a local model through transformers, offline
  %(prog)s gardener --describe "a cheerful old gardener" --local-model Qwen/Qwen3-4B

The draft is validated by octrain's loader before anything is saved; one that does not load is
sent back to the model with the loader's error (--retries), and if it still fails, the error is
printed, the draft is kept as NAME.rejected.txt in a temporary directory, and the exit status is 2.
"""


def _add_new(commands: argparse._SubParsersAction) -> None:
    from octrain.constitution.draft_messages import DEFAULT_MAX_TOKENS, DEFAULT_TRAITS
    from octrain.constitution.quality import QUESTIONS_PER_TRAIT

    help_text = "draft a constitution from a one-line description with a chat model, validated before it is saved"
    new = commands.add_parser(
        "new",
        help=help_text,
        description=help_text
        + " (to ./constitutions/NAME.yaml, or to the user constitution directory when run from octrain's checkout;"
        " list and runs read both; or to --out)",
        epilog=NEW_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    new.set_defaults(func=_new)
    new.add_argument("name", metavar="NAME", help="the persona's name: letters, digits, '-', '_', '.'")
    new.add_argument("--describe", required=True, metavar="TEXT", help="who the character is, in a sentence")
    new.add_argument(
        "--traits",
        type=int,
        default=DEFAULT_TRAITS,
        metavar="N",
        help=f"traits as the teacher sees them, the identity included (default {DEFAULT_TRAITS})",
    )
    new.add_argument(
        "--questions",
        type=int,
        default=QUESTIONS_PER_TRAIT,
        metavar="N",
        help=f"seed questions per trait (default {QUESTIONS_PER_TRAIT})",
    )
    new.add_argument(
        "--retries", type=int, default=1, metavar="N", help="drafts sent back with the loader's error (default 1)"
    )
    where = new.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        metavar="PATH",
        help="write here (.yaml) instead of NAME.yaml in the default directory (see above)",
    )
    where.add_argument(
        "--print", "--dry-run", action="store_true", help="print the validated YAML on stdout; save nothing"
    )
    new.add_argument("--force", action="store_true", help="replace (or shadow) an existing constitution of that name")

    model = new.add_argument_group("the drafting model (give --base-url or --local-model)")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--base-url", metavar="URL", help="an OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1"
    )
    source.add_argument("--local-model", metavar="PATH", help="a local model directory or cached Hub id")
    model.add_argument("--model", metavar="NAME", help="with --base-url: the model name to request")
    model.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        metavar="VAR",
        help="with --base-url: the environment variable holding the key (default OPENAI_API_KEY; '' for none)",
    )
    model.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="seconds per HTTP request (default 300)"
    )
    model.add_argument(
        "--backend", choices=("hf", "vllm"), default="hf", help="with --local-model: transformers or vLLM (default hf)"
    )
    model.add_argument("--device", default="auto", help="with --local-model --backend hf: auto, cpu, cuda, cuda:N")
    model.add_argument("--temperature", type=float, default=0.7, metavar="T", help="sampling temperature (default 0.7)")
    model.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        metavar="N",
        help=f"the longest reply, in tokens (default {DEFAULT_MAX_TOKENS})",
    )
    model.add_argument("--seed", type=int, help="a sampling seed, for servers and backends that honour one")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "constitution",
        help="list, show, validate, convert, score and draft constitutions",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="examples:\n  octrain constitution list\n  octrain constitution show pirate\n"
        "  octrain constitution score pirate\n"
        '  octrain constitution new gardener --describe "a cheerful old gardener" \\\n'
        "      --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen3-8B --api-key-env ''",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="constitution_command", metavar="COMMAND", required=True)
    _add(commands, "list", "every constitution found, with its format, traits and seed questions", _list)
    show = _add(commands, "show", "the numbered traits, as the teacher sees them", _show)
    show.add_argument("name", metavar="NAME", help="a name from the constitution directories, or a path")
    show.add_argument("--questions", action="store_true", help="each trait's seed questions beneath it")
    validate_parser = _add(commands, "validate", "check constitution files; exit 2 if any does not load", _validate)
    validate_parser.add_argument("files", metavar="FILE", nargs="+")
    convert_parser = _add(commands, "convert", "write a constitution in another format", _convert)
    convert_parser.add_argument("source", metavar="IN")
    convert_parser.add_argument("out", metavar="OUT")
    convert_parser.add_argument("--to", choices=FORMATS, help="the format to write (default: from OUT's extension)")
    score = _add(commands, "score", "a 0-100 quality score, with the reason for each part", _score)
    score.add_argument("name", metavar="NAME", help="a name from the constitution directories, or a path")
    _add_new(commands)
