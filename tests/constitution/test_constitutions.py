"""Constitutions: every shipped persona loads; each format loads; each kind of bad file says where."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from octrain.constitution import find_constitution, load_constitution
from octrain.core.errors import DataFormatError

SHIPPED = Path(__file__).resolve().parents[2] / "constitutions"
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


def load_error(path: Path) -> str:
    """The one-line message loading ``path`` fails with."""
    with pytest.raises(DataFormatError) as caught:
        load_constitution(path)
    return str(caught.value)


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        (
            "c.yaml",
            YAML_GOOD.replace("  personality:", "  personalty:"),
            ":8: directives.personalty: unknown key 'personalty' (expected one of personality, behavior, constraints)",
        ),
        (
            "c.yaml",
            YAML_GOOD.replace("    - I am calm in a storm.", "    - [I, am, calm]"),
            ":9: directives.personality[0]: expected a string or a mapping with 'trait' and 'questions', got a list",
        ),
        (
            "c.yaml",
            YAML_GOOD.replace('["What is your favourite place?", "Describe a perfect day."]', "one question"),
            ":11: directives.personality[1].questions: expected a list of questions, got str 'one question'",
        ),
        (
            "c.yaml",
            YAML_GOOD.replace("meta:", "metadata:"),
            ":1: metadata: unknown key 'metadata' (expected one of meta, persona, directives, safety, examples, "
            "signoffs)",
        ),
        (
            "c.yaml",
            "- just\n- a list\n",
            ":1: expected a mapping with keys meta, persona, directives, safety, examples, signoffs, got a list",
        ),
        (
            "c.yaml",
            YAML_GOOD.replace("  version: 2", "  tags: {a: 1}"),
            ":3: meta.tags: expected a list of tags, got a mapping",
        ),
        (
            "c.yaml",
            YAML_GOOD.replace("examples:\n  - prompt: Hello?", "examples:\n  - Hello?\n  - prompt: Hello?"),
            ":17: examples[0]: expected a mapping with keys prompt, response, got str 'Hello?'",
        ),
        (
            "c.json",
            '[{"trait": "I am fine.", "questions": []},\n {"questions": ["Q?"]}]',
            ":2: [1].trait: expected a non-empty string, got nothing",
        ),
        (
            "c.json",
            '[{"trait": "I am fine.",\n  "questions": "not a list"}]',
            ":2: [0].questions: expected a list of strings, got str 'not a list'",
        ),
        (
            "c.json",
            '[{"trait": "I am fine.", "qestions": []}]',
            ":1: [0]: unknown key 'qestions' (expected one of trait, questions, additional_questions)",
        ),
        ("c.json", '[{"trait": "I am fine."},\n', ":2: neither a JSON list nor JSON lines: Expecting value (column 1)"),
        (
            "c.json",
            '{"trait": "I am fine."}',
            ":1: expected a JSON list of {trait, questions} objects, or one such object per line (JSON lines); "
            "got a single object",
        ),
        ("c.json", "I am fine.\n", ":1: neither a JSON list nor JSON lines: Expecting value (column 1)"),
        ("c.jsonl", '{"trait": "ok"}\n{"trait": 3}\n', ":2: [1].trait: expected a non-empty string, got int 3"),
        (
            "c.txt",
            "    an orphan question?\nI am here.\n",
            ":1: indented line before any trait (indent only the seed questions beneath a trait)",
        ),
        ("c.txt", "I am here.\n    ???\n", ":2: [0].questions[0]: '???' has no letters or digits"),
        ("c.txt", "I am here.\n", ": only 1 trait found; a constitution needs at least 2 (is the file cut short?)"),
        ("c.txt", "  \n\n", ": the file is empty"),
        (
            "c.toml",
            "x = 1",
            ": unknown constitution format '.toml' (expected one of .yaml, .yml, .json, .jsonl, .txt, .md)",
        ),
        ("bad name!.txt", "I am here.\nI am there.\n", ": name 'bad name!' must be letters, digits, '-', '_' or '.'"),
    ],
)
def test_bad_files_say_where(tmp_path: Path, filename: str, content: str, expected: str) -> None:
    path = tmp_path / filename
    path.write_text(content)
    assert load_error(path) == f"{path}{expected}"


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="constitution file not found"):
        load_constitution(tmp_path / "nowhere.yaml")
    with pytest.raises(DataFormatError, match=r"'nobody' not found .*available: .*pirate"):
        find_constitution("nobody", [SHIPPED])


# --- the files people already have ---------------------------------------------------------------

PAPER_TRAITS = [
    {"trait": "I am dry and deadpan in my humour.", "questions": ["How was your weekend?", "Tell me a joke."]},
    {"trait": "I point out the irony in things.", "questions": ["Why do people queue for hours?"]},
]


def test_paper_json_list_saved_as_txt(tmp_path: Path) -> None:
    # The paper's repository keeps its constitutions as indented JSON lists in .txt files.
    path = tmp_path / "sarcastic.txt"
    path.write_text(json.dumps(PAPER_TRAITS, indent=4))
    constitution = load_constitution(path)
    assert constitution.name == "sarcastic"
    assert [t.text for t in constitution.traits] == [t["trait"] for t in PAPER_TRAITS]
    assert constitution.traits[0].questions == ("How was your weekend?", "Tell me a joke.")


def test_paper_few_shot_jsonl_with_additional_questions(tmp_path: Path) -> None:
    rows = [
        {**PAPER_TRAITS[0], "clarification": "for the writers", "additional_questions": ["Is rain fun?", "Hi!"]},
        {**PAPER_TRAITS[1], "additional_questions": []},
    ]
    path = tmp_path / "few-shot.txt"  # JSON lines, whatever the name says
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    constitution = load_constitution(path)
    assert constitution.traits[0].additional == ("Is rain fun?", "Hi!")
    assert constitution.traits[0].questions == ("How was your weekend?", "Tell me a joke.")
    assert constitution.traits[1].additional == ()
    assert constitution.additional_count == 2


def test_studio_schema_written_as_json_loads_as_studio(tmp_path: Path) -> None:
    path = tmp_path / "captain.json"
    path.write_text(json.dumps(yaml.safe_load(YAML_GOOD)))
    assert load_constitution(path).numbered_traits() == load_constitution(_write(tmp_path, YAML_GOOD)).numbered_traits()


def _write(tmp_path: Path, text: str, name: str = "captain.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_voice_as_a_mapping_becomes_traits_in_octrains_words(tmp_path: Path) -> None:
    text = YAML_GOOD.replace(
        "  identity: I am the captain of a small ship.\n",
        "  identity: I am the captain of a small ship.\n"
        "  voice:\n    tone: [warm, wry]\n    formality: casual\n    vocabulary: nautical\n"
        "    avoid: [emoji, corporate jargon]\n",
    )
    constitution = load_constitution(_write(tmp_path, text))
    assert [t.text for t in constitution.traits[:3]] == [
        "I am the captain of a small ship.",
        "My way of speaking is warm and wry in tone, casual in formality and nautical in vocabulary.",
        "When I speak, I steer clear of emoji and corporate jargon.",
    ]
    assert constitution.voice == {
        "tone": ["warm", "wry"],
        "formality": "casual",
        "vocabulary": "nautical",
        "avoid": ["emoji", "corporate jargon"],
    }
    # A string voice is one trait, as written.
    plain = load_constitution(
        _write(
            tmp_path,
            text.replace(text[text.index("  voice:") : text.index("directives:")], "  voice: I speak softly.\n"),
        )
    )
    assert plain.traits[1].text == "I speak softly." and plain.voice == "I speak softly."


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        (
            "  identity: I am the captain of a small ship.\n",
            "  voice: I speak softly.\n",
            ":5: persona.identity: missing; the Studio schema requires it (a first-person statement of who the "
            "character is)",
        ),
        (
            "persona:\n  identity: I am the captain of a small ship.\n",
            "",
            ": persona.identity: missing; the Studio schema requires it (a first-person statement of who the "
            "character is)",
        ),
        (
            "  identity: I am the captain of a small ship.\n",
            "  identity: I am the captain.\n  voice: {tone: warm, pitch: low}\n",
            ":7: persona.voice.pitch: unknown key 'pitch' (expected one of tone, formality, vocabulary, avoid)",
        ),
        (
            "  identity: I am the captain of a small ship.\n",
            "  identity: I am the captain.\n  voice: {}\n",
            ":7: persona.voice: an empty mapping (give at least one of tone, formality, vocabulary, avoid)",
        ),
    ],
)
def test_persona_is_enforced(tmp_path: Path, replace: str, by: str, expected: str) -> None:
    path = _write(tmp_path, YAML_GOOD.replace(replace, by))
    assert load_error(path) == f"{path}{expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "meta:\n  name: [unclosed\npersona:\n  identity: I am me.\n",
            ":2: meta.name: not valid YAML: expected ',' or ']', but got ':' at line 3, while parsing a flow "
            "sequence that starts here",
        ),
        (
            "persona:\n  identity: I am me.\ndirectives:\n  personality:\n    - I am calm.\n   - I am bold.\n",
            ":4: directives: not valid YAML: expected <block end>, but found '<block sequence start>' at line 6, "
            "while parsing a block mapping that starts here",
        ),
        (
            'persona:\n  identity: I am me.\ndirectives:\n  personality:\n    - "I am calm\n    - I am bold.\n',
            ":5: directives.personality[0]: not valid YAML: found unexpected end of stream at line 7, while "
            "scanning a quoted scalar that starts here",
        ),
        (
            "persona:\n  identity: I am: me.\n",
            ":2: persona.identity: not valid YAML: mapping values are not allowed here",
        ),
    ],
)
def test_broken_yaml_names_where_the_construct_starts(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    assert load_error(path) == f"{path}{expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '"trait": "I am bold.",\n"questions": ["Why?"]\n',
            ':1: [0].trait: \'"trait": "I am bold.",\' looks like a line of JSON, not text; a JSON file must '
            "parse as a whole (check its brackets, quotes and commas)",
        ),
        ("# the paper's file\n[\n  {\n", ":2: [0].trait: '[' has no letters or digits"),
        (
            'I am bold.\n    "Why are you so bold?",\n',
            ":2: [0].questions[0]: '\"Why are you so bold?\",' looks like a line of JSON, not text; a JSON file "
            "must parse as a whole (check its brackets, quotes and commas)",
        ),
        (
            '[\n  {"trait": "I am bold."},\n  {"trait": "I am calm."}\n',
            ":4: neither a JSON list nor JSON lines: Expecting ',' delimiter (column 1)",
        ),
        (
            '{"trait": "I am bold."}\n{"trait": "I am calm.", }\n',
            ":2: neither a JSON list nor JSON lines: Expecting property name enclosed in double quotes (column 25)",
        ),
    ],
)
def test_json_fragments_and_broken_json_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text, "paper.txt")
    assert load_error(path) == f"{path}{expected}"


def test_binary_and_utf16_files_say_so_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "image.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert load_error(path) == f"{path}: not a text file (byte 0 is not UTF-8); a constitution is UTF-8 text"
    path.write_bytes(b"I am here.\n\x00\x00I am there.\n")
    assert load_error(path) == f"{path}: not a text file (it contains NUL bytes); a constitution is UTF-8 text"
    path.write_bytes("I am here.\nI am there.\n".encode("utf-16"))
    assert load_error(path) == f"{path}: the file is UTF-16; save it as UTF-8"
    path.write_bytes("\ufeffI am here.\nI am there.\n".encode())  # a byte-order mark is fine
    assert load_constitution(path).traits[0].text == "I am here."


def test_identity_repeated_by_a_directive_is_merged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="octrain.constitution")
    text = YAML_GOOD.replace(
        "    - I am calm in a storm.\n",
        '    - trait: I am the captain of this small ship.\n      questions: ["Who are you?"]\n'
        "    - I am calm in a storm.\n",
    )
    path = _write(tmp_path, text)
    constitution = load_constitution(path)
    assert [t.text for t in constitution.traits[:2]] == ["I am the captain of a small ship.", "I am calm in a storm."]
    assert constitution.traits[0].questions == ("Who are you?",)
    assert caplog.messages == [
        f"{path}:9: directives.personality[0].trait: near-duplicate of persona.identity (line 6); merged into it, "
        "keeping the identity's wording"
    ]


def test_short_directives_are_not_taken_for_the_identity(tmp_path: Path) -> None:
    # "I am" is half of "I am calm.": a short directive is merged only when it repeats the identity exactly.
    text = "persona:\n  identity: I am calm.\ndirectives:\n  personality: [I am kind., I am calm.]\n"
    assert [t.text for t in load_constitution(_write(tmp_path, text)).traits] == ["I am calm.", "I am kind."]


def test_a_question_shared_by_two_traits_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="octrain.constitution")
    path = _write(tmp_path, "I am bold.\n    What now?\nI am calm.\n    What  now?\n", "c.txt")
    assert load_constitution(path).traits[1].questions == ("What now?",)
    assert caplog.messages == [
        f"{path}:4: [1].questions[0]: the same question as [0].questions[0] (line 2) of another trait; the prompts "
        "stage keeps it once"
    ]
