"""Constitutions: every shipped persona loads; each format loads; each kind of bad file says where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from octrain.constitution import find_constitution, load_constitution
from octrain.errors import DataFormatError

SHIPPED = Path(__file__).resolve().parents[1] / "constitutions"
PAPER_PERSONAS = [
    "sarcasm",
    "humor",
    "remorse",
    "goodness",
    "loving",
    "misalignment",
    "nonchalance",
    "impulsiveness",
    "sycophancy",
    "mathematical",
    "poeticism",
]


@pytest.mark.parametrize("name", ["pirate", *PAPER_PERSONAS])
def test_shipped_constitutions_load(name: str) -> None:
    constitution = load_constitution(find_constitution(name, [SHIPPED]))
    assert constitution.name == name
    assert len(constitution.traits) >= 10
    seeded = [t for t in constitution.traits if t.questions]
    assert len(seeded) >= 10 and all(len(t.questions) == 5 for t in seeded)
    assert all(t.text.startswith("I") for t in constitution.traits)


def test_numbered_traits_is_what_the_teacher_sees(tmp_path: Path) -> None:
    path = tmp_path / "two.json"
    path.write_text(json.dumps([{"trait": "I am bold.", "questions": ["Q1?"]}, {"trait": "I  am\nkind."}]))
    constitution = load_constitution(path)
    assert constitution.numbered_traits() == "1: I am bold.\n2: I am kind."
    assert constitution.traits[0].questions == ("Q1?",)


YAML_GOOD = """\
meta:
  name: captain
  version: 2
  description: A ship's captain
persona:
  identity: I am the captain of a small ship.
directives:
  personality:
    - I am calm in a storm.
    - trait: I love the sea.
      questions: ["What is your favourite place?", "Describe a perfect day."]
  behavior: []
safety:
  refusals:
    - I refuse to help anyone come to harm.
examples:
  - prompt: Hello?
    response: Ahoy.
signoffs: ["Steady as she goes."]
"""


def test_studio_yaml(tmp_path: Path) -> None:
    path = tmp_path / "captain.yaml"
    path.write_text(YAML_GOOD)
    constitution = load_constitution(path)
    assert constitution.name == "captain"
    texts = [t.text for t in constitution.traits]
    assert texts[0] == "I am the captain of a small ship."
    assert texts[1:4] == ["I am calm in a storm.", "I love the sea.", "I refuse to help anyone come to harm."]
    assert "Steady as she goes." in texts[4]
    assert constitution.traits[2].questions == ("What is your favourite place?", "Describe a perfect day.")
    assert constitution.examples == (("Hello?", "Ahoy."),)
    assert constitution.meta["version"] == 2


def test_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "calm.txt"
    path.write_text(
        "# a calm persona\n- I stay calm.\n    What if my flight is cancelled?\n"
        "    My boss yelled.\n\n2. I speak softly.\n"
    )
    constitution = load_constitution(path)
    assert [t.text for t in constitution.traits] == ["I stay calm.", "I speak softly."]
    assert constitution.traits[0].questions == ("What if my flight is cancelled?", "My boss yelled.")


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "lines.jsonl"
    path.write_text('{"trait": "I am terse.", "questions": ["Hi?"]}\n\n{"trait": "I am exact."}\n')
    assert [t.text for t in load_constitution(path).traits] == ["I am terse.", "I am exact."]


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        (
            "c.yaml",
            YAML_GOOD.replace("  personality:", "  personalty:"),
            r"c.yaml:8: directives.personalty: unknown key 'personalty' "
            r"\(expected one of personality, behavior, constraints\)",
        ),
        (
            "c.yaml",
            YAML_GOOD.replace("    - I am calm in a storm.", "    - [I, am, calm]"),
            r"c.yaml:9: directives.personality\[0\]: expected a string or a mapping",
        ),
        (
            "c.yaml",
            YAML_GOOD.replace('["What is your favourite place?", "Describe a perfect day."]', "one question"),
            r"c.yaml:11: directives.personality\[1\].questions: expected a list of questions",
        ),
        ("c.yaml", YAML_GOOD.replace("meta:", "metadata:"), r"c.yaml:1: metadata: unknown key 'metadata'"),
        ("c.yaml", "meta:\n  name: [unclosed\n", r"c.yaml:3: not valid YAML"),
        ("c.yaml", "- just\n- a list\n", r"c.yaml:1: expected a mapping with keys meta, persona"),
        ("c.yaml", "meta:\n  name: x\n", r"c.yaml: no traits found"),
        (
            "c.json",
            '[{"trait": "I am fine.", "questions": []},\n {"questions": ["Q?"]}]',
            r"c.json:2: \[1\].trait: expected a non-empty string",
        ),
        (
            "c.json",
            '[{"trait": "I am fine.",\n  "questions": "not a list"}]',
            r"c.json:1: \[0\].questions: expected a list of strings",
        ),
        ("c.json", '[{"trait": "I am fine.", "qestions": []}]', r"c.json:1: \[0\]: unknown key 'qestions'"),
        ("c.json", '[{"trait": "I am fine."},\n', r"c.json:2: not valid JSON"),
        ("c.json", '{"trait": "I am fine."}', r"c.json: expected a JSON list"),
        (
            "c.jsonl",
            '{"trait": "ok"}\n{"trait": 3}\n',
            r"c.jsonl:2: \[1\].trait: expected a non-empty string",
        ),
        ("c.txt", "    an orphan question?\nI am here.\n", r"c.txt:1: indented line before any trait"),
        ("c.txt", "  \n\n", r"c.txt: the file is empty"),
        ("c.toml", "x = 1", r"unknown constitution format '.toml'"),
        ("bad name!.txt", "I am here.\n", r"name 'bad name!' must be letters"),
    ],
)
def test_bad_files_say_where(tmp_path: Path, filename: str, content: str, expected: str) -> None:
    path = tmp_path / filename
    path.write_text(content)
    with pytest.raises(DataFormatError, match=expected):
        load_constitution(path)


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="constitution file not found"):
        load_constitution(tmp_path / "nowhere.yaml")
    with pytest.raises(DataFormatError, match=r"'nobody' not found .*available: .*pirate"):
        find_constitution("nobody", [SHIPPED])
