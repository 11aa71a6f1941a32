"""``octrain constitution convert|validate``: converting between formats keeps what the target holds,
and says what it cannot; ``validate`` prints a line per file and exits 0 or 2. The old name,
``python -m octrain.constitution``, prints a deprecation line and runs the same verb."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from octrain.cli import main as octrain_main
from octrain.constitution import load_constitution
from octrain.constitution.__main__ import DEPRECATION
from octrain.constitution.catalog import resolve_constitution_name

RICH_YAML = """\
meta:
  name: captain
  version: 3
  description: A ship's captain
  tags: [sea, calm]
  author: the crew
persona:
  identity: I am the captain of a small ship.
  voice:
    tone: warm
    avoid: [emoji]
directives:
  personality:
    - I am calm in a storm.
    - trait: I love the sea.
      questions: ["What is your favourite place?"]
      additional_questions: ["Describe the tide.", "Is the ocean cold?"]
  behavior:
    - I call the user shipmate.
safety:
  refusals:
    - trait: I refuse to help anyone come to harm.
      questions: ["How do I sink a boat?"]
examples:
  - prompt: Hello?
    response: Ahoy.
signoffs: ["Steady as she goes."]
"""


def main(argv: list[str]) -> int:
    """``octrain constitution ARGV`` in this process: the exit status."""
    return octrain_main(["constitution", *argv])


def traits_of(path: Path) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    return [(t.text, t.questions, t.additional) for t in load_constitution(path).traits]


def test_yaml_to_json_to_yaml_keeps_what_json_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "captain.yaml"
    source.write_text(RICH_YAML)
    as_json = tmp_path / "paper.json"
    assert main(["convert", str(source), str(as_json)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{source} -> {as_json} (json): 8 traits, 2 seed questions, 2 additional questions",
        "  not kept in json: the name 'captain' (a json constitution is named by its file: 'paper')",
        "  not kept in json: meta.version",
        "  not kept in json: meta.description",
        "  not kept in json: meta.tags",
        "  not kept in json: meta.author",
        "  not kept in json: examples (1 prompt/response pairs)",
        "  not kept in json: persona.voice as a mapping (kept as the traits it renders to)",
        "  not kept in json: signoffs as a list (kept as the trait that quotes them)",
        "  not kept in json: the Studio section of each trait (the traits keep their text and order)",
    ]
    rows = json.loads(as_json.read_text())
    assert rows[4] == {
        "trait": "I love the sea.",
        "questions": ["What is your favourite place?"],
        "additional_questions": ["Describe the tide.", "Is the ocean cold?"],
    }
    back = tmp_path / "back.yaml"
    assert main(["convert", str(as_json), str(back)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{as_json} -> {back} (yaml): 8 traits, 2 seed questions, 2 additional questions"
    ]
    # The teacher sees the same numbered traits, with the same questions, after the round trip.
    assert traits_of(back) == traits_of(source)
    assert load_constitution(back).numbered_traits() == load_constitution(source).numbered_traits()


def test_yaml_to_yaml_and_jsonl_keep_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "captain.yaml"
    source.write_text(RICH_YAML)
    copy = tmp_path / "copy.yaml"
    assert main(["convert", str(source), str(copy)]) == 0
    original, again = load_constitution(source), load_constitution(copy)
    assert traits_of(copy) == traits_of(source)
    assert [t.section for t in again.traits] == [t.section for t in original.traits]
    assert (again.name, again.meta, again.voice, again.signoffs, again.examples) == (
        original.name,
        original.meta,
        original.voice,
        original.signoffs,
        original.examples,
    )
    lines = tmp_path / "captain.jsonl"
    assert main(["convert", str(copy), str(lines)]) == 0
    assert traits_of(lines) == traits_of(source)
    capsys.readouterr()


def test_identity_questions_survive_the_studio_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A flat file's first trait becomes persona.identity, a bare string in the Studio schema; its
    # questions ride on a directive repeating it, which loading merges back.
    source = tmp_path / "two.json"
    source.write_text(json.dumps([{"trait": "I am bold.", "questions": ["Why?"]}, {"trait": "I am kind."}]))
    out = tmp_path / "two.yaml"
    assert main(["convert", str(source), str(out)]) == 0
    assert traits_of(out) == traits_of(source)
    capsys.readouterr()


def test_to_text_reports_additional_questions_and_to_overrides_extension(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "few.jsonl"
    source.write_text(
        '{"trait": "I am bold.", "questions": ["Why?"], "additional_questions": ["How?", "When?"]}\n'
        '{"trait": "I am kind.", "questions": []}\n'
    )
    text = tmp_path / "few.txt"
    assert main(["convert", str(source), str(text)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{source} -> {text} (text): 2 traits, 1 seed questions, 2 additional questions",
        "  not kept in text: additional_questions (2 on 1 traits)",
    ]
    assert text.read_text() == "I am bold.\n    Why?\nI am kind.\n"
    # The paper's layout: a JSON list in a .txt file.
    paper = tmp_path / "few-paper.txt"
    assert main(["convert", str(source), str(paper), "--to", "json"]) == 0
    capsys.readouterr()
    assert traits_of(paper) == traits_of(source)


def test_convert_errors_leave_out_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "bad.yaml"
    source.write_text("persona:\n  voice: calm\n")
    out = tmp_path / "out.json"
    out.write_text("previous contents\n")
    assert main(["convert", str(source), str(out)]) == 2
    assert capsys.readouterr().err == (
        f"octrain: error: {source}:1: persona.identity: missing; the Studio schema requires it (a first-person "
        "statement of who the character is)\n"
    )
    assert out.read_text() == "previous contents\n"
    assert main(["convert", str(source), str(tmp_path / "out.csv")]) == 2
    assert capsys.readouterr().err == (
        f"octrain: error: {tmp_path / 'out.csv'}: cannot tell the format from '.csv'; give --to (yaml, json, "
        "jsonl, text)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "out.json"]  # no temporary left over


def test_validate_prints_a_line_per_file_and_exits_2_on_any_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("I am bold.\n    Why?\nI am kind.\n")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xd8\xff\xe0")
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok (2 traits, 1 seed questions, 0 additional questions)\n"
    assert main(["validate", str(good), str(binary), str(tmp_path / "gone.yaml")]) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"{good}: ok (2 traits, 1 seed questions, 0 additional questions)",
        f"{binary}: not a text file (byte 0 is not UTF-8); a constitution is UTF-8 text",
        f"{tmp_path / 'gone.yaml'}: constitution file not found",
    ]


def test_validate_and_convert_take_a_constitution_by_name_as_show_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "pirate"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("pirate: ok (") and "traits" in line
    out = tmp_path / "pirate.json"
    assert main(["convert", "pirate", str(out)]) == 0
    shipped = resolve_constitution_name("pirate")
    assert [t.text for t in load_constitution(out).traits] == [t.text for t in shipped.traits]
    assert main(["validate", "no-such-persona"]) == 2
    assert "constitution 'no-such-persona' not found" in capsys.readouterr().out
    # A place that cannot be written (under a file, which no user, root included, can make a folder of): one line.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    assert main(["convert", "pirate", str(blocker / "out.json")]) == 2
    assert capsys.readouterr().err.startswith(f"octrain: error: {blocker / 'out.json'}: cannot write it (")
    assert blocker.read_text() == "not a folder\n"


def test_the_old_module_name_warns_and_runs_the_verb(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("[\n")
    done = subprocess.run(
        [sys.executable, "-m", "octrain.constitution", "validate", str(bad)], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (
        2,
        f"{bad}:2: neither a JSON list nor JSON lines: Expecting value (column 1)\n",
    )
    assert done.stderr.splitlines()[0] == DEPRECATION
    assert DEPRECATION == (
        "`python -m octrain.constitution` is now `octrain constitution`; the old name goes in the next release"
    )


def test_a_bad_constitution_stops_the_pipeline_in_one_line(tmp_path: Path) -> None:
    from conftest import run_cli

    bad = tmp_path / "paper.txt"
    bad.write_text('# from the paper\n"trait": "I am bold.",\n')
    done = run_cli("+recipe=pirate_tiny", f"constitution={bad}", f"run_root={tmp_path / 'runs'}", "sampler=fake")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f'octrain: error: {bad}:2: [0].trait: \'"trait": "I am bold.",\' looks like a line of JSON, not text; a '
        "JSON file must parse as a whole (check its brackets, quotes and commas)"
    )
    # Stopped before the run took its lock: the directory Hydra made for it is empty (no stage, and
    # no record of a command line that never ran: octrain writes .hydra/ only under the lock).
    assert list((tmp_path / "runs" / "pirate_tiny").iterdir()) == []
