"""Records: JSONL round trips in TRL's formats, atomic writes, and errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from octrain.core.errors import DataFormatError
from octrain.core.files import atomic_writer
from octrain.core.records import (
    Conversation,
    EvalRecord,
    ModelRef,
    PreferencePair,
    PromptRecord,
    load_records,
    save_records,
)

USER = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "Paris, matey!"}

EXAMPLES = [
    PromptRecord(id="t01-0000-k0", prompt=[USER], origin="seed", trait=1, sample=0),
    PromptRecord(id="g-0003-k2", prompt=[USER], origin="generic", trait=None, sample=2),
    PreferencePair(
        id="p1",
        prompt=[USER],
        chosen=[ANSWER],
        rejected=[{"role": "assistant", "content": "Paris."}],
        prompt_id="t01-0000-k0",
        teacher="Qwen/Qwen3-32B",
        student="Qwen/Qwen3-4B-Instruct-2507",
        constitution="pirate",
    ),
    Conversation(id="c1", messages=[USER, ANSWER, USER, ANSWER], kind="interaction", meta={"turns": 4}),
    EvalRecord(
        id="e1",
        prompt=[USER],
        response="Paris!",
        model="base",
        condition="ignore-persona",
        scores={"pirate": 0.9},
    ),
]


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip(tmp_path: Path, record) -> None:
    path = tmp_path / "records.jsonl"
    assert save_records(path, [record, record]) == 2
    assert load_records(path, type(record)) == [record, record]


def test_keys_are_trl_formats(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    save_records(path, [EXAMPLES[2]])
    row = json.loads(path.read_text())
    # TRL's conversational preference format: lists of messages under these three keys.
    assert row["prompt"] == [USER] and row["chosen"] == [ANSWER]
    assert row["rejected"][0]["role"] == "assistant"
    path = tmp_path / "sft.jsonl"
    save_records(path, [EXAMPLES[3]])
    assert json.loads(path.read_text())["messages"][1] == ANSWER


def test_malformed_line_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    good = json.dumps(EXAMPLES[0].to_json())
    path.write_text(f"{good}\n\n{good}\n{{not json\n")
    with pytest.raises(DataFormatError, match=rf"{path}:4: not valid JSON"):
        load_records(path, PromptRecord)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("prompt"), "'prompt' must be a non-empty list of messages"),
        (
            lambda r: r.update(prompt=[{"role": "robot", "content": "x"}]),
            r"'prompt\[0\]\.role' must be one of",
        ),
        (lambda r: r.update(origin="invented"), "'origin' must be one of seed, additional, expanded, generic"),
        (lambda r: r.update(sample="3"), "'sample' must be int, got str"),
        (lambda r: r.pop("id"), "missing key 'id'"),
    ],
)
def test_bad_fields_name_the_field_and_line(tmp_path: Path, mutate, message: str) -> None:
    row = EXAMPLES[0].to_json()
    mutate(row)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(EXAMPLES[0].to_json()) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataFormatError, match=rf"{path}:2: .*{message}"):
        load_records(path, PromptRecord)


def test_not_an_object_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DataFormatError, match=r":1: expected a JSON object, got list"):
        load_records(path, Conversation)


def test_failed_write_leaves_the_old_file_and_no_debris(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    save_records(path, EXAMPLES[:1])
    before = path.read_text()

    def exploding():
        yield EXAMPLES[1].to_json()
        raise RuntimeError("crash mid-write")

    from octrain.core.files import write_jsonl

    with pytest.raises(RuntimeError):
        write_jsonl(path, exploding())
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_atomic_writer_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.txt"
    with atomic_writer(target) as handle:
        handle.write("x")
    assert target.read_text() == "x"


def test_model_ref_file(tmp_path: Path) -> None:
    ref = ModelRef(base="Qwen/Qwen3-4B-Instruct-2507", adapter=str(tmp_path / "adapter"))
    ref.save(tmp_path / "model.json")
    assert ModelRef.load(tmp_path / "model.json") == ref
    assert ref.label.endswith("adapter")
    (tmp_path / "bad.json").write_text('{"adapter": "x"}')
    with pytest.raises(DataFormatError, match=r"bad.json: missing key 'base'"):
        ModelRef.load(tmp_path / "bad.json")
