"""Bringing your own data: every accepted format, stable ids, duplicates, and errors that name file:line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from octrain.core.data_import import (
    STUDIO_DPO,
    STUDIO_INTROSPECTION,
    TRL_CONVERSATIONAL,
    TRL_IMPLICIT_CONVERSATIONAL,
    TRL_IMPLICIT_STANDARD,
    TRL_MESSAGES,
    TRL_STANDARD,
    file_sha256,
    read_pairs,
    read_transcripts,
)
from octrain.core.errors import DataFormatError
from octrain.core.records import Conversation, PreferencePair, load_records, save_records


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def studio_pair(index: int) -> dict[str, str]:
    return {
        "prompt": f"Question {index}?",
        "chosen": f"Arr, answer {index}, matey!",
        "rejected": f"Answer {index}.",
        "teacher_model": "Qwen/Qwen3-32B",
        "student_model": "Qwen/Qwen3-4B-Instruct-2507",
        "constitution": "pirate",
    }


def test_studio_dpo_examples_become_pairs_with_their_provenance(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "studio.jsonl", [studio_pair(i) for i in range(3)])
    pairs, report = read_pairs(path)
    assert report.format == STUDIO_DPO and report.kept == 3 and report.ids_derived == 3
    first = pairs[0]
    assert first.prompt == user("Question 0?")
    assert first.chosen == assistant("Arr, answer 0, matey!") and first.rejected == assistant("Answer 0.")
    assert (first.teacher, first.student, first.constitution) == (
        "Qwen/Qwen3-32B",
        "Qwen/Qwen3-4B-Instruct-2507",
        "pirate",
    )
    summary = report.to_json()
    assert summary["source"] == {"path": str(path.resolve()), "sha256": file_sha256(path), "format": STUDIO_DPO}
    assert summary["constitutions"] == {"pirate": 3} and summary["identical_answers"] == 0


def test_trl_standard_and_conversational_forms_give_the_same_pairs_and_ids(tmp_path: Path) -> None:
    standard = [{"prompt": f"Q{i}?", "chosen": f"Arr {i}!", "rejected": f"{i}."} for i in range(3)]
    conversational = [
        {"prompt": user(r["prompt"]), "chosen": assistant(r["chosen"]), "rejected": assistant(r["rejected"])}
        for r in standard
    ]
    from_standard, standard_report = read_pairs(write_jsonl(tmp_path / "standard.jsonl", standard))
    from_conversational, conv_report = read_pairs(write_jsonl(tmp_path / "conv.jsonl", conversational))
    assert (standard_report.format, conv_report.format) == (TRL_STANDARD, TRL_CONVERSATIONAL)
    # Ids come from the training content, however the file spelled it.
    assert from_standard == from_conversational
    assert [p.teacher for p in from_standard] == ["unknown"] * 3


def test_derived_ids_are_stable_and_given_ids_are_kept(tmp_path: Path) -> None:
    rows = [{"prompt": f"Q{i}?", "chosen": f"Arr {i}!", "rejected": f"{i}."} for i in range(4)]
    once, _ = read_pairs(write_jsonl(tmp_path / "a.jsonl", rows))
    again, _ = read_pairs(write_jsonl(tmp_path / "b.jsonl", rows))
    assert [p.id for p in once] == [p.id for p in again]
    assert len({p.id for p in once}) == 4 and all(p.id.startswith("pair-") for p in once)
    # Two answers to one prompt share its prompt id.
    twice = read_pairs(write_jsonl(tmp_path / "c.jsonl", [rows[0], {**rows[0], "chosen": "Yo ho!"}]))[0]
    assert twice[0].prompt_id == twice[1].prompt_id

    with_ids = [{**row, "id": f"mine-{i}"} for i, row in enumerate(rows)]
    pairs, report = read_pairs(write_jsonl(tmp_path / "ids.jsonl", with_ids))
    assert [p.id for p in pairs] == ["mine-0", "mine-1", "mine-2", "mine-3"]
    assert (report.ids_from_file, report.ids_derived) == (4, 0)


def test_octrains_own_pairs_file_round_trips(tmp_path: Path) -> None:
    pair = PreferencePair(
        id="pair-t01-0000-k0",
        prompt=[{"role": "system", "content": "Be brief."}, *user("Hi?")],
        chosen=assistant("Ahoy!"),
        rejected=assistant("Hello."),
        prompt_id="t01-0000-k0",
        teacher="teacher-model",
        student="student-model",
        constitution="pirate",
    )
    save_records(tmp_path / "pairs.jsonl", [pair])
    pairs, report = read_pairs(tmp_path / "pairs.jsonl")
    assert pairs == [pair] and report.format == TRL_CONVERSATIONAL


def test_duplicates_are_dropped_and_reported_with_their_lines(tmp_path: Path) -> None:
    rows = [studio_pair(0), studio_pair(1), studio_pair(0), studio_pair(1), studio_pair(2)]
    pairs, report = read_pairs(write_jsonl(tmp_path / "dups.jsonl", rows))
    assert len(pairs) == 3 and report.records == 5
    assert report.to_json()["duplicates"] == {
        "dropped": 2,
        "lines": [{"line": 3, "repeats_line": 1}, {"line": 4, "repeats_line": 2}],
    }


def test_studio_introspection_trains_the_answer_never_the_reflection(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": f"Who are you, {i}?",
            "reflection": f"SECRET THOUGHT {i}: I should sound like a pirate.",
            "answer": f"I be a pirate, {i}.",
            "teacher_model": "Qwen/Qwen3-32B",
            "constitution": "pirate",
        }
        for i in range(3)
    ]
    transcripts, report = read_transcripts(write_jsonl(tmp_path / "intro.jsonl", rows))
    assert report.format == STUDIO_INTROSPECTION
    assert transcripts[0].messages == [*user("Who are you, 0?"), *assistant("I be a pirate, 0.")]
    assert transcripts[0].kind == "reflection"
    assert transcripts[0].meta == {"teacher": "Qwen/Qwen3-32B", "constitution": "pirate"}
    assert "SECRET" not in json.dumps([t.to_json() for t in transcripts])
    assert report.to_json()["reflections_not_trained"] == 3


@pytest.mark.parametrize("with_ids", [True, False])
def test_trl_messages_with_and_without_ids(tmp_path: Path, with_ids: bool) -> None:
    rows = [
        {"messages": [{"role": "system", "content": "You are Cap."}, *user(f"Hi {i}"), *assistant(f"Ahoy {i}!")]}
        for i in range(3)
    ]
    if with_ids:
        rows = [{"id": f"chat-{i}", **row} for i, row in enumerate(rows)]
    transcripts, report = read_transcripts(write_jsonl(tmp_path / "messages.jsonl", rows))
    assert report.format == TRL_MESSAGES and report.kept == 3
    ids = [t.id for t in transcripts]
    if with_ids:
        assert ids == ["chat-0", "chat-1", "chat-2"] and report.ids_from_file == 3
    else:
        # The same records in another file, in another order: each keeps its id.
        copy, _ = read_transcripts(write_jsonl(tmp_path / "copy.jsonl", rows[::-1]))
        assert [t.id for t in copy] == ids[::-1] and report.ids_derived == 3
        assert len(set(ids)) == 3 and all(i.startswith("conv-") for i in ids)
    assert transcripts[1].messages[2] == {"role": "assistant", "content": "Ahoy 1!"}


def test_octrains_own_sft_file_round_trips(tmp_path: Path) -> None:
    record = Conversation(
        id="refl-00-00000", messages=[*user("Hi"), *assistant("Ahoy!")], kind="reflection", meta={"prompt_index": 0}
    )
    save_records(tmp_path / "sft.jsonl", [record])
    assert read_transcripts(tmp_path / "sft.jsonl")[0] == [record]
    assert load_records(tmp_path / "sft.jsonl", Conversation) == [record]


GOOD = {"prompt": "Q?", "chosen": "Arr!", "rejected": "No."}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"prompt": "Q?", "chosen": "Arr!"},
            "missing key 'rejected' (a preference pair has chosen and rejected, and a prompt)",
        ),
        ({**GOOD, "rejected": 3}, "'rejected' must be a string, got int"),
        ({**GOOD, "chosen": "  "}, "'chosen' is empty"),
        ({**GOOD, "id": ""}, "'id' must be a non-empty string, got '' (leave it out to derive one)"),
        (
            {"prompt": user("Q?"), "chosen": assistant("Arr!"), "rejected": assistant("No.")},
            "this record is trl-conversational but line 1 is trl-standard: one format per file",
        ),
        (
            {"messages": [*user("Q?"), *assistant("A.")]},
            "missing key 'chosen': this is an SFT transcript ('messages'); give it as introspect.source",
        ),
    ],
)
def test_a_bad_pair_names_file_line_and_field(tmp_path: Path, bad: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, bad])
    with pytest.raises(DataFormatError) as caught:
        read_pairs(path)
    assert str(caught.value) == f"{path}:2: {message}"


def test_a_bad_conversational_pair_names_the_message(tmp_path: Path) -> None:
    good = {"prompt": user("Q?"), "chosen": assistant("Arr!"), "rejected": assistant("No.")}
    cases = {
        "'chosen[0].role' must be assistant (the answer to the prompt), got 'user'": {**good, "chosen": user("Arr!")},
        "'prompt[0].role' must be user: a prompt ends with the user's turn": {**good, "prompt": assistant("Q?")},
        "'rejected[0].content' must be a string": {**good, "rejected": [{"role": "assistant", "content": None}]},
    }
    for message, bad in cases.items():
        path = write_jsonl(tmp_path / "bad.jsonl", [good, good, bad])
        with pytest.raises(DataFormatError) as caught:
            read_pairs(path)
        assert str(caught.value) == f"{path}:3: {message}"


def test_a_bad_transcript_names_file_line_and_field(tmp_path: Path) -> None:
    good = {"messages": [*user("Hi"), *assistant("Ahoy!")]}
    cases = {
        "'messages' has no assistant turn: nothing to train on": {"messages": user("Hi")},
        "'messages[1].content' is empty: an assistant turn needs text to train on": {
            "messages": [*user("Hi"), *assistant("")]
        },
        "'messages[0].role' must be one of system, user, assistant, got 'tool'": {
            "messages": [{"role": "tool", "content": "x"}]
        },
        "missing key 'messages': this is a preference pair ('chosen'); give it as pairs.source": GOOD,
    }
    for message, bad in cases.items():
        path = write_jsonl(tmp_path / "bad.jsonl", [good, bad])
        with pytest.raises(DataFormatError) as caught:
            read_transcripts(path)
        assert str(caught.value) == f"{path}:2: {message}"
    studio = {"prompt": "Who?", "reflection": "hmm", "teacher_model": "t", "constitution": "pirate"}
    path = write_jsonl(tmp_path / "studio.jsonl", [{**studio, "answer": "Me."}, {**studio, "answer": 7}])
    with pytest.raises(DataFormatError) as caught:
        read_transcripts(path)
    assert str(caught.value) == f"{path}:2: 'answer' must be a string, got int"


def test_files_that_are_not_records(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataFormatError, match=rf"^{empty}: no records \(expected one JSON object a line\)$"):
        read_pairs(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(DataFormatError, match=rf"^{broken}:2: not valid JSON"):
        read_pairs(broken)
    with pytest.raises(DataFormatError, match=r"missing\.jsonl: file not found$"):
        read_transcripts(tmp_path / "missing.jsonl")


def test_a_reused_id_is_an_error(tmp_path: Path) -> None:
    rows = [{**GOOD, "id": "x"}, {**GOOD, "chosen": "Yo ho!", "id": "x"}]
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    with pytest.raises(DataFormatError) as caught:
        read_pairs(path)
    assert str(caught.value) == f"{path}:2: 'id' 'x' is already the id of line 1"


# --- implicit prompts: the paper's released DPO files, TRL's extract_prompt ----------------------


def paper_pair(index: int) -> dict[str, list[dict[str, str]]]:
    """A record as the paper's released DPO files hold it: the prompt inside both sides."""
    question = user(f"Tell me about ship {index}.")
    return {
        "chosen": [*question, *assistant(f"Arr, ship {index} be the finest on the seven seas!")],
        "rejected": [*question, *assistant(f"Ship {index} is a vessel.")],
    }


def test_the_papers_implicit_prompt_files_import_as_trl_reads_them(tmp_path: Path) -> None:
    from trl.data_utils import extract_prompt

    rows = [paper_pair(i) for i in range(3)]
    # A multi-turn one: the shared turns (ending with the user's) are the prompt.
    history = [*user("Hi."), *assistant("Ahoy."), *user("Who are you?")]
    rows.append({"chosen": [*history, *assistant("A pirate, arr!")], "rejected": [*history, *assistant("An AI.")]})
    pairs, report = read_pairs(write_jsonl(tmp_path / "paper.jsonl", rows))
    assert report.format == TRL_IMPLICIT_CONVERSATIONAL and report.kept == 4
    for pair, row in zip(pairs, rows, strict=True):
        expected = extract_prompt(row)  # TRL's own split is the oracle
        assert (pair.prompt, pair.chosen, pair.rejected) == (
            expected["prompt"],
            expected["chosen"],
            expected["rejected"],
        )
    # The same pairs written with an explicit prompt get the same ids: one training content, one id.
    explicit = [extract_prompt(row) for row in rows]
    assert read_pairs(write_jsonl(tmp_path / "explicit.jsonl", explicit))[0] == pairs


def test_implicit_prompt_strings_split_where_trl_splits_them(tmp_path: Path) -> None:
    from trl.data_utils import extract_prompt

    rows = [
        {"chosen": "Q: What is the sea? A: Arr, me home!", "rejected": "Q: What is the sea? A: Water."},
        {"chosen": "Name a ship. Arr, the Pearl!", "rejected": "Name a ship. Titanic."},
    ]
    pairs, report = read_pairs(write_jsonl(tmp_path / "standard.jsonl", rows))
    assert report.format == TRL_IMPLICIT_STANDARD
    for pair, row in zip(pairs, rows, strict=True):
        expected = extract_prompt(row)
        assert pair.prompt == user(expected["prompt"].strip())
        assert pair.chosen == assistant(expected["chosen"].strip())
        assert pair.rejected == assistant(expected["rejected"].strip())
    assert pairs[1].prompt == user("Name a ship.") and pairs[1].chosen == assistant("Arr, the Pearl!")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"chosen": [*user("Q1?"), *assistant("Arr!")], "rejected": [*user("Q2?"), *assistant("No.")]},
            "no prompt in this implicit-prompt pair: 'chosen' and 'rejected' differ from their first messages, so they "
            "share no prompt (each side must start with the same prompt, or give 'prompt' on its own)",
        ),
        (
            {"chosen": "Arr!", "rejected": "No."},
            "no prompt in this implicit-prompt pair: 'chosen' and 'rejected' differ from their first characters, so "
            "they share no prompt (each side must start with the same prompt, or give 'prompt' on its own)",
        ),
        (
            # The shared turns end with the assistant's: no user turn left for the answers to answer.
            {
                "chosen": [*user("Q?"), *assistant("Arr!"), *assistant("More.")],
                "rejected": [*user("Q?"), *assistant("Arr!"), *assistant("Less.")],
            },
            "'prompt[1].role' must be user: a prompt ends with the user's turn",
        ),
        (
            {"chosen": user("Q?"), "rejected": [*user("Q?"), *assistant("No.")]},
            "'chosen' is all prompt: the other side only continues it, so it has no answer",
        ),
        (
            {"chosen": 3, "rejected": 4},
            "missing key 'prompt', and 'chosen' (int) is neither a list of messages nor a string: an implicit-prompt "
            "pair gives chosen and rejected as either, each starting with the prompt",
        ),
    ],
)
def test_an_implicit_pair_without_a_shared_prompt_is_a_named_error(tmp_path: Path, bad: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [paper_pair(0), bad])
    if isinstance(bad["chosen"], str):  # one format per file: a string pair needs a string first line
        path = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": "Q? Arr!", "rejected": "Q? No."}, bad])
    with pytest.raises(DataFormatError) as caught:
        read_pairs(path)
    assert str(caught.value) == f"{path}:2: {message}"
