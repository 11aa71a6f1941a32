"""The README and docs/ say only what is true of this checkout.

Every relative link (and its anchor) resolves; every ``from octrain... import ...`` in a Python example
imports; every ``octrain VERB [SUBVERB]`` in a shell example or inline code names a real command of
:func:`octrain.cli.build_parser`; every ``+recipe=NAME`` names a recipe; every ``make TARGET`` is a
Makefile target; every ``python -m octrain.X`` names a module; and the README stays a first hour's read.
No command is run: the checks read the parser, the files and the import system, so the file takes seconds.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 350
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
# +recipe=NAME values that are not meant to name a shipped recipe: one a user writes themselves, and the
# one the command-line page runs to show the unknown-recipe error.
EXAMPLE_RECIPES = {"my_persona", "pirate_huge"}

_FENCE = re.compile(r"^\s*```(\S*)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_RECIPE = re.compile(r"\+recipe=([A-Za-z0-9_]+)")
_PYTHON_M = re.compile(r"\bpython[0-9.]*\s+-m\s+(octrain[A-Za-z0-9_.]*)")
_WORD = re.compile(r"^[a-z][a-z0-9-]*$")
_MAKE_TARGET = re.compile(r"^([A-Za-z0-9_.-]+)\s*:(?!=)")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, its text and where it starts."""

    page: Path
    line: int
    language: str
    text: str


@dataclass(frozen=True)
class Page:
    """A Markdown page split into prose lines (numbered) and fenced code blocks."""

    path: Path
    prose: tuple[tuple[int, str], ...]
    blocks: tuple[Block, ...]

    def where(self, line: int) -> str:
        return f"{self.path.relative_to(REPO)}:{line}"


@cache
def read_page(path: Path) -> Page:
    prose: list[tuple[int, str]] = []
    blocks: list[Block] = []
    fence: tuple[int, str] | None = None
    body: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        opened = _FENCE.match(line)
        if fence is None and opened:
            fence, body = (number, opened.group(1).lower()), []
        elif fence is not None and line.strip().startswith("```"):
            blocks.append(Block(path, fence[0], fence[1], "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        else:
            prose.append((number, line))
    assert fence is None, f"{path.relative_to(REPO)}:{fence[0]}: a code block is never closed"
    return Page(path, tuple(prose), tuple(blocks))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in read_page(path).prose:
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(found)


def page_ids(pages: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in pages]


@pytest.mark.parametrize("path", PAGES, ids=page_ids(PAGES))
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    page = read_page(path)
    broken = []
    for number, line in page.prose:
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            if not resolved.exists():
                broken.append(f"{page.where(number)}: {target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.where(number)}: {target}: no heading with that anchor")
    assert not broken, "\n".join(broken)


def python_blocks() -> list[Block]:
    return [b for p in PAGES for b in read_page(p).blocks if b.language in {"python", "py"}]


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"{b.page.name}:{b.line}")
def test_every_octrain_import_in_a_python_example_imports(block: Block) -> None:
    tree = ast.parse(block.text)
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom | ast.Import)]
    for node in imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "octrain":
                    importlib.import_module(alias.name)
            continue
        if not (node.module or "").startswith("octrain"):
            continue
        module = importlib.import_module(node.module)
        for alias in node.names:
            if hasattr(module, alias.name):
                continue
            try:
                importlib.import_module(f"{node.module}.{alias.name}")  # a submodule
            except ImportError:
                where = f"{block.page.relative_to(REPO)}:{block.line + node.lineno}"
                pytest.fail(f"{where}: from {node.module} import {alias.name}: no such name")


def verbs() -> dict[str, set[str]]:
    """Every subcommand of ``octrain`` and the subcommands each takes (empty when it takes none)."""
    from octrain.cli import build_parser

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    return {name: set(subcommands(sub)) for name, sub in subcommands(build_parser()).items()}


def shell_lines(page: Page) -> list[tuple[str, str]]:
    """(place, command line) for every command in a shell block, continuation lines joined."""
    lines = []
    for block in page.blocks:
        if block.language not in SHELL_LANGUAGES:
            continue
        pending = ""
        for offset, raw in enumerate(block.text.splitlines(), start=1):
            if block.language == "console":
                if not raw.startswith("$ "):
                    continue
                raw = raw[2:]
            pending += raw
            if pending.rstrip().endswith("\\"):
                pending = pending.rstrip()[:-1] + " "
                continue
            lines.append((page.where(block.line + offset), pending))
            pending = ""
    return lines


def words_of(command: str) -> list[str]:
    """A shell line's words, comments dropped (quotes kept together where the line parses)."""
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # a quote closed on a later line (python -c "...")
        return command.split("#", 1)[0].split()


def octrain_commands(words: list[str]) -> list[tuple[str, list[str]]]:
    """Each ``octrain WORD [WORD ...]`` in a list of words: the verb and the words after it."""
    found = []
    for index, word in enumerate(words[:-1]):
        if word == "octrain" or word.endswith("/octrain"):
            if index > 0 and words[index - 1] == "-m":
                continue  # python -m octrain +recipe=...: a recipe run, never a verb
            found.append((words[index + 1], words[index + 2 : index + 3]))
    return found


def command_places(page: Page, prefix: str) -> list[tuple[str, list[str]]]:
    """Every command line of a page, as (where, words): each shell-block line, and each inline code span
    of the prose that starts with ``prefix``."""
    places = [(where, words_of(line)) for where, line in shell_lines(page)]
    places += [
        (page.where(number), span.split())
        for number, line in page.prose
        for span in _INLINE_CODE.findall(line)
        if span.startswith(prefix)
    ]
    return places


def test_every_octrain_verb_and_subverb_in_the_docs_exists() -> None:
    known = verbs()
    unknown = []
    for path in PAGES:
        for where, words in command_places(read_page(path), "octrain "):
            for verb, rest in octrain_commands(words):
                if not _WORD.match(verb):
                    continue  # +recipe=..., -m, --help, -sc: a recipe run or Hydra's own flags
                if verb not in known:
                    unknown.append(f"{where}: octrain {verb}")
                    continue
                if not known[verb] or not rest or rest[0].startswith("-"):
                    continue
                # The README's table writes a verb's subverbs as alternatives: list\|info\|...
                choices = re.split(r"\\?\|", rest[0])
                if all(_WORD.match(choice) for choice in choices):
                    unknown += [f"{where}: octrain {verb} {c}" for c in choices if c not in known[verb]]
    assert not unknown, "not a command of octrain.cli.build_parser():\n" + "\n".join(unknown)


def test_every_recipe_named_exists() -> None:
    shipped = {p.stem for p in (REPO / "recipes").glob("*.yaml")}
    missing = []
    for path in PAGES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for name in _RECIPE.findall(line):
                if name not in shipped and name not in EXAMPLE_RECIPES and not name.isupper():
                    missing.append(f"{path.relative_to(REPO)}:{number}: +recipe={name}")
    assert not missing, f"no such recipe in recipes/ ({', '.join(sorted(shipped))}):\n" + "\n".join(missing)


def makefile_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text(encoding="utf-8").splitlines():
        match = _MAKE_TARGET.match(line)
        if match and not line.startswith(("\t", " ", ".")):
            targets.add(match.group(1))
    return targets


def test_every_make_target_named_exists() -> None:
    targets = makefile_targets()
    missing = []
    for path in PAGES:
        for where, words in command_places(read_page(path), "make "):
            for index, word in enumerate(words[:-1]):
                target = words[index + 1]
                if word == "make" and "=" not in target and not target.startswith("-") and target not in targets:
                    missing.append(f"{where}: make {target}")
    assert not missing, "not a Makefile target:\n" + "\n".join(missing)


def test_every_python_m_module_exists() -> None:
    missing = []
    for path in PAGES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for name in _PYTHON_M.findall(line):
                name = name.rstrip(".")
                if importlib.util.find_spec(name) is None:
                    missing.append(f"{path.relative_to(REPO)}:{number}: python -m {name}")
    assert not missing, "no such module:\n" + "\n".join(missing)


def test_the_readme_stays_a_first_hours_read() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"


def test_every_docs_page_is_in_the_index() -> None:
    index = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\]\(([^)#\s]+\.md)", index))
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"README.md"}
    assert pages <= listed, f"docs/README.md does not list: {sorted(pages - listed)}"


def test_the_slug_rule_matches_githubs() -> None:
    assert github_slug("Reading `report.md`") == "reading-reportmd"
    assert github_slug("Evaluations outside a run: `octrain eval`") == "evaluations-outside-a-run-octrain-eval"
    assert (
        github_slug("What the evaluation measures (`eval.suite=shift`)")
        == "what-the-evaluation-measures-evalsuiteshift"
    )
    assert github_slug("3. Stage 2: introspection by SFT") == "3-stage-2-introspection-by-sft"
