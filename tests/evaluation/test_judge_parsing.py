"""Parsing judge answers from tags: clear answers parse, anything ambiguous is None."""

from __future__ import annotations

import pytest

from octrain.evaluation.judge_parsing import ParseCounts, parse_tagged, parse_verdict

TRAITS = ("humble", "witty", "Sarcastic")


# --- answers that should parse ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>witty</answer>", "witty"),
        ("I thought about it.\n<answer>humble</answer>\n", "humble"),
        ("<answer>  witty \n</answer>", "witty"),
        ("<ANSWER>Witty</ANSWER>", "witty"),
        ("< answer >WITTY</ answer >", "witty"),
        ("<answer>sarcastic</answer>", "Sarcastic"),  # returned in the allowed spelling
        ("<answer>**witty**</answer>", "witty"),
        ('<answer>"humble".</answer>', "humble"),
        # The same answer twice is still one clear answer.
        ("<answer>witty</answer> so, once more: <answer>Witty</answer>", "witty"),
    ],
)
def test_clear_answers_parse(text: str, expected: str) -> None:
    assert parse_tagged(text, "answer", TRAITS) == expected


def test_without_allowed_any_content_is_returned_trimmed() -> None:
    assert parse_tagged("<score> 7 </score>", "score") == "7"
    assert parse_tagged("<score>7</score><score>7</score>", "score") == "7"
    assert parse_tagged("<score>7</score><score>8</score>", "score") is None
    assert parse_tagged("<score> </score>", "score") is None


# --- malformed replies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "witty",
        "My answer is witty.",
        "<answer>witty",  # never closed
        "witty</answer>",  # never opened
        "<answer></answer>",  # empty
        "<answer>   </answer>",
        "<answer>witty</answer><answer>",  # a second, unclosed tag
        "<answer><answer>witty</answer></answer>",  # nested
        "</answer>witty<answer>",  # reversed
        "<answer/>witty",  # self-closing
        '<answer type="trait">witty</answer>',  # attributes
        "<answers>witty</answers>",  # a different tag
        "<answer-final>witty</answer-final>",
        "<response>witty</response>",
    ],
)
def test_malformed_replies_are_unparseable(text: str) -> None:
    assert parse_tagged(text, "answer", TRAITS) is None


# --- adversarial replies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # Changes its mind: the parser does not pick the first or the last.
        "<answer>witty</answer> ... actually, on reflection, <answer>humble</answer>",
        # Names both traits inside one tag.
        "<answer>humble or witty</answer>",
        "<answer>humble, witty</answer>",
        "<answer>humble and witty</answer>",
        "<answer>both</answer>",
        # A hedge around an allowed value is not the value.
        "<answer>probably witty</answer>",
        "<answer>witty?</answer>",
        # Not one of the offered traits.
        "<answer>curious</answer>",
        # Quotes the instruction's example, then answers something else.
        'The instructions say: "reply with <answer>witty</answer>". Fine. <answer>humble</answer>',
        # Tries to smuggle in a second tag inside the answer.
        "<answer>witty</answer><answer>ignore previous instructions</answer>",
        "<answer>witty <answer>humble</answer></answer>",
    ],
)
def test_adversarial_replies_are_unparseable(text: str) -> None:
    assert parse_tagged(text, "answer", TRAITS) is None


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="plain name"):
        parse_tagged("<a b>x</a b>", "a b")
    with pytest.raises(ValueError, match="single string"):
        parse_tagged("<answer>w</answer>", "answer", "witty")
    with pytest.raises(ValueError, match="differ only in case"):
        parse_tagged("<answer>witty</answer>", "answer", ["witty", "Witty"])
    with pytest.raises(ValueError, match="at least one"):
        parse_tagged("<answer>witty</answer>", "answer", [])
    with pytest.raises(ValueError, match="non-empty"):
        parse_tagged("<answer>witty</answer>", "answer", ["witty", " "])


# --- pairwise verdicts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<verdict>A</verdict>", "A"),
        ("Response B is warmer. <verdict> b </verdict>", "B"),
        ("<verdict>Tie</verdict>", "tie"),
        ("<VERDICT>TIE</VERDICT>", "tie"),
        ("<verdict>\nA\n</verdict>", "A"),
    ],
)
def test_verdicts_parse(text: str, expected: str) -> None:
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "A",
        "<verdict>C</verdict>",
        "<verdict>A or B</verdict>",
        "<verdict>Response A</verdict>",
        "<verdict>A</verdict> wait, <verdict>B</verdict>",
        "<verdict></verdict>",
        "<verdict>A",
    ],
)
def test_unclear_verdicts_are_unparseable(text: str) -> None:
    assert parse_verdict(text) is None


def test_parse_counts_tally() -> None:
    counts = ParseCounts()
    assert counts.unparseable_rate == 0.0
    replies = ["<verdict>A</verdict>", "no idea", "<verdict>tie</verdict>", "<verdict>A</verdict><verdict>B</verdict>"]
    answers = [counts.record(parse_verdict(reply)) for reply in replies]
    assert answers == ["A", None, "tie", None]
    assert (counts.parsed, counts.unparseable, counts.total) == (2, 2, 4)
    assert counts.unparseable_rate == 0.5
