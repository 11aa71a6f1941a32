"""The out-of-distribution prompt set: the shipped conversations, the loader's checks and its filters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from octrain.core.errors import ConfigError, DataFormatError
from octrain.evaluation.ood_prompts import CATEGORIES, OodPrompt, load_ood_prompts

REPO = Path(__file__).resolve().parents[2]


def test_shipped_set_has_fifteen_of_each_category_in_order() -> None:
    prompts = load_ood_prompts()
    assert len(prompts) == 60
    assert [p.category for p in prompts] == [c for c in CATEGORIES for _ in range(15)]
    assert all(isinstance(p, OodPrompt) for p in prompts)
    assert len({p.id for p in prompts}) == 60


def test_shipped_conversations_end_with_a_user_turn_and_never_repeat_one() -> None:
    prompts = load_ood_prompts()
    for prompt in prompts:
        assert prompt.messages[-1]["role"] == "user", prompt.id
        assert prompt.last_user == prompt.messages[-1]["content"]
    finals = [" ".join(p.last_user.lower().split()) for p in prompts]
    assert len(set(finals)) == len(finals)


def test_shipped_conversations_fit_a_small_model() -> None:
    for prompt in load_ood_prompts():
        words = sum(len(m["content"].split()) for m in prompt.messages)
        assert words < 450, (prompt.id, words)


def test_shipped_tool_use_has_an_agent_system_message_and_a_tool_result() -> None:
    for prompt in load_ood_prompts(categories=["tool_use"]):
        assert prompt.messages[0]["role"] == "system", prompt.id
        assert any(m["role"] == "assistant" and "<tool_call>" in m["content"] for m in prompt.messages), prompt.id
        assert prompt.last_user.startswith("[tool result"), prompt.id
        # The result the model must use is a parseable JSON payload after the tag line.
        payload = prompt.last_user.split("\n", 1)[1].split("\n\n", 1)[0]
        assert isinstance(json.loads(payload), dict), prompt.id


def test_shipped_long_chats_have_a_history_of_four_to_six_exchanges() -> None:
    for prompt in load_ood_prompts(categories=["long_chat"]):
        earlier = prompt.messages[:-1]
        assert 8 <= len(earlier) <= 12, prompt.id
        assert all(m["role"] != "system" for m in prompt.messages), prompt.id


def test_shipped_code_reviews_hold_a_snippet_of_five_to_twenty_five_lines() -> None:
    for prompt in load_ood_prompts(categories=["code_review"]):
        parts = prompt.last_user.split("```")
        assert len(parts) == 3, prompt.id
        code_lines = parts[1].strip().splitlines()[1:]  # the first line names the language
        assert 5 <= len(code_lines) <= 25, (prompt.id, len(code_lines))


def test_shipped_set_is_package_data() -> None:
    # pyproject ships data/*.jsonl; the file must sit there, not in a sub-folder the pattern misses.
    shipped = REPO / "src" / "octrain" / "data" / "ood_prompts.jsonl"
    assert shipped.is_file()
    assert 'octrain = ["data/*.jsonl"' in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def row(
    id: str = "a-1", category: str = "a", messages: list[dict[str, str]] | None = None, **extra: Any
) -> dict[str, Any]:
    """One valid row, or a broken one when a test passes a broken part."""
    if messages is None:
        messages = [{"role": "user", "content": "Hello?"}]
    return {"id": id, "category": category, "messages": messages, **extra}


def write_rows(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    """A JSONL file of ``rows``; a string is written as the line itself (for invalid JSON)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_user_file_loads_with_its_own_categories(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "mine.jsonl",
        [
            row("x-1", "x", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]),
            row("y-1", "y", note="extra keys are ignored"),
            row(
                "x-2",
                "x",
                [
                    {"role": "user", "content": "One?"},
                    {"role": "assistant", "content": "One."},
                    {"role": "user", "content": "Two?"},
                ],
            ),
        ],
    )
    prompts = load_ood_prompts(str(path))
    assert [(p.id, p.category) for p in prompts] == [("x-1", "x"), ("y-1", "y"), ("x-2", "x")]
    assert prompts[2].last_user == "Two?"
    assert [p.id for p in load_ood_prompts(str(path), categories=["x"])] == ["x-1", "x-2"]
    with pytest.raises(ConfigError, match=r"'tool_use'.*known categories: x, y"):
        load_ood_prompts(str(path), categories=["tool_use"])


GOOD = row("good-1")


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ('{"id": "b-1", "category": ', r"not valid JSON"),
        (["a list"], r"expected a JSON object"),
        ({"category": "a", "messages": [{"role": "user", "content": "x"}]}, r"missing key 'id'"),
        (row(id=7), r"'id' must be a non-empty string"),
        (row(category=""), r"'category' must be a non-empty string"),
        ({"id": "b-1", "category": "a"}, r"missing key 'messages'"),
        (row(messages="Hello?"), r"'messages' must be a non-empty list"),
        (row(messages=[]), r"'messages' must be a non-empty list"),
        (row(messages=[{"role": "user", "content": 3}]), r"'messages\[0\]\.content' must be a string"),
        (row(messages=[{"role": "tool", "content": "{}"}]), r"'messages\[0\]\.role' must be one of system, user"),
        (
            row(
                messages=[
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "And?"},
                ]
            ),
            r"'messages\[2\]' is a system message; expected one only as the first",
        ),
        (
            row(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
            r"last message is a assistant turn; expected a user turn",
        ),
        (row(messages=[{"role": "system", "content": "Be brief."}]), r"last message is a system turn"),
        (
            row(messages=[{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}]),
            r"'messages\[1\]\.role' is 'user'; expected 'assistant'",
        ),
        (
            row(messages=[{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}]),
            r"'messages\[0\]\.role' is 'assistant'; expected 'user'",
        ),
        (row(messages=[{"role": "user", "content": "  \n"}]), r"'messages\[0\]\.content' is empty"),
        (row(id="good-1"), r"duplicate id 'good-1' \(first used on line 1\)"),
    ],
)
def test_a_bad_row_names_the_file_and_its_line(tmp_path: Path, bad: Any, expected: str) -> None:
    # The bad row sits on line 3, after a good row and a blank line, so the number is the file's line.
    path = tmp_path / "bad.jsonl"
    line = bad if isinstance(bad, str) else json.dumps(bad)
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"bad\.jsonl:3: .*{expected}"):
        load_ood_prompts(str(path))


def test_missing_empty_and_wrongly_named_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"not-there\.jsonl: file not found"):
        load_ood_prompts(str(tmp_path / "not-there.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"empty\.jsonl: no conversations"):
        load_ood_prompts(str(empty))
    with pytest.raises(ConfigError, match=r"prompts\.json"):
        load_ood_prompts(str(tmp_path / "prompts.json"))


def test_per_category_keeps_the_first_of_each_in_file_order() -> None:
    everything = load_ood_prompts()
    two_each = load_ood_prompts(per_category=2)
    assert [p.id for p in two_each] == [
        "tool_use-01",
        "tool_use-02",
        "json-01",
        "json-02",
        "code_review-01",
        "code_review-02",
        "long_chat-01",
        "long_chat-02",
    ]
    # The same objects as the full load, not re-ordered or re-picked.
    assert two_each == [p for p in everything if p.id in {q.id for q in two_each}]
    assert load_ood_prompts(per_category=100) == everything


def test_categories_filter_keeps_file_order_not_the_requested_order() -> None:
    picked = load_ood_prompts(categories=["long_chat", "json"], per_category=1)
    assert [p.id for p in picked] == ["json-01", "long_chat-01"]
    assert [p.category for p in load_ood_prompts(categories="code_review")] == ["code_review"] * 15


@pytest.mark.parametrize("value", [0, -3])
def test_per_category_below_one_is_a_config_error(value: int) -> None:
    with pytest.raises(ConfigError, match=rf"per_category must be at least 1, got {value}"):
        load_ood_prompts(per_category=value)


def test_unknown_or_empty_categories_list_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown category 'role_play'; known categories: tool_use, json"):
        load_ood_prompts(categories=["json", "role_play"])
    with pytest.raises(ConfigError, match=r"categories is empty"):
        load_ood_prompts(categories=[])


def test_the_shipped_set_rejects_a_category_outside_the_four(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A user file may hold any category name; the shipped one may not, so a typo in it cannot
    # silently create a fifth category. Point the builtin name at a stand-in package folder.
    package = tmp_path / "octrain"
    write_rows(package / "data" / "ood_prompts.jsonl", [row("t-1", "tool_use"), row("t-2", "tool-use")])

    def files(name: str) -> Path:
        assert name == "octrain"
        return package

    monkeypatch.setattr("octrain.evaluation.ood_prompts.resources.files", files)
    with pytest.raises(DataFormatError, match=r"ood_prompts\.jsonl:2: unknown category 'tool-use'; expected one of"):
        load_ood_prompts()
