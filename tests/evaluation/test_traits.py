"""The trait list for the revealed-preference evaluation: the shipped list and user files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from octrain.core.errors import DataFormatError
from octrain.evaluation.traits import load_traits


def test_builtin_list_is_about_144_unique_lowercase_words() -> None:
    traits = load_traits()
    assert 140 <= len(traits) <= 150
    assert len(set(traits)) == len(traits)
    for trait in traits:
        assert trait.isalpha() and trait == trait.lower(), trait
    # A few anchors from each part of the mix: appealing, unappealing, neutral.
    assert {"curious", "humble", "sarcastic", "arrogant", "formal", "stoic"} <= set(traits)


def test_user_file_is_read_in_order_skipping_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "traits.txt"
    path.write_text("witty\n\n  humble  \nBlunt\n", encoding="utf-8")
    assert load_traits(str(path)) == ["witty", "humble", "Blunt"]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataFormatError, match=r"nope\.txt: file not found"):
        load_traits(str(missing))


def test_trait_with_whitespace_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "traits.txt"
    path.write_text("witty\nhumble\nvery kind\n", encoding="utf-8")
    with pytest.raises(
        DataFormatError, match=rf"{re.escape(str(path))}:3: a trait must be a single word, got 'very kind'"
    ):
        load_traits(str(path))


def test_duplicate_names_file_line_and_first_occurrence(tmp_path: Path) -> None:
    path = tmp_path / "traits.txt"
    path.write_text("witty\nhumble\n\nWitty\n", encoding="utf-8")
    with pytest.raises(
        DataFormatError, match=rf"{re.escape(str(path))}:4: duplicate trait 'Witty' \(first on line 1\)"
    ):
        load_traits(str(path))


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "traits.txt"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no traits found"):
        load_traits(str(path))


def test_a_trait_file_that_is_not_utf8_is_one_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "traits.txt"
    path.write_bytes(b"kind\nna\xefve\n")
    with pytest.raises(DataFormatError, match=r"traits\.txt:2: not UTF-8 text \(byte 0xef\) \(trait list\)"):
        load_traits(str(path))
