"""Stage ``prompts`` with the fake sampler: parsing, dedupe, counts, K repeats, the shortfall."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from octrain.constitution import Constitution, Trait, load_constitution
from octrain.constitution.near_duplicates import PromptSet
from octrain.core.config import OctrainConfig, PromptsStageConfig, ScaleConfig
from octrain.core.errors import ConfigError, DataFormatError
from octrain.samplers import FakeSampler
from octrain.stages import prompts as prompts_stage
from octrain.stages.context import RunContext
from octrain.stages.generic_prompts import load_generic_pool
from octrain.stages.prompts import expansion_request, make_prompts, needs_expansion, parse_numbered_lines
from octrain.stages.prompts_report import describe_given, describe_shortfall

CONSTITUTION = Constitution(
    name="captain",
    traits=(
        Trait(
            "I speak like a sea captain.",
            ("Where should I travel this summer?", "How do I fix a leaking tap?"),
        ),
        Trait("I am fiercely loyal to my crew.", ("My friend lied to me, what now?",)),
    ),
)
POOL = [
    "Write a haiku about autumn leaves falling slowly.",
    "Explain recursion to a ten year old child.",
    "Convert this CSV into JSON: a,b\n1,2",
    "What are good habits for learning guitar quickly?",
    "Explain recursion to a ten year old child.",  # exact duplicate inside the pool
]


def scale(per_trait: int, generic: int = 0, k: int = 1) -> ScaleConfig:
    return ScaleConfig(name="t", prompts_per_trait=per_trait, generic_prompts=generic, samples_per_prompt=k)


WORDS = [
    "anchor",
    "barrel",
    "compass",
    "dolphin",
    "eagle",
    "falcon",
    "galley",
    "harbor",
    "island",
    "jetty",
    "kelp",
    "lantern",
    "mast",
    "net",
    "oar",
    "parrot",
    "quay",
    "rudder",
    "sail",
    "tide",
    "umbrella",
    "voyage",
    "whale",
    "yacht",
    "zephyr",
]


def numbered_writer(conversation, sample: int) -> str:
    """A generator that answers each request with a numbered list (and chatter around it)."""
    request = conversation[-1]["content"]
    topic = "captain" if "sea captain" in request else "loyal"
    offset = (0 if topic == "captain" else 12) + 6 * sample
    lines = [f"{i}. {topic} {WORDS[offset + 2 * i]} {WORDS[offset + 2 * i + 1]} please?" for i in range(3)]
    return "Sure! Here you go:\n" + "\n".join(lines) + "\nHope that helps."


def test_parse_numbered_lines() -> None:
    text = 'Here:\n1. First one?\n  2) "Second one"\n**3.** Third\n4.\nnot numbered\n10. Tenth item here'
    assert parse_numbered_lines(text) == ["First one?", "Second one", "Third", "Tenth item here"]


def test_prompt_set_refuses_duplicates_and_near_duplicates() -> None:
    seen = PromptSet(0.5)
    assert seen.add("Can you tell me a pirate joke about the sea?") is None
    assert seen.add("can you tell me a pirate joke about the  sea?") == "duplicate"
    # 7 of 9 distinct words shared: a rewording, not a new prompt.
    assert seen.add("Can you tell me a pirate story about the sea?") == "near-duplicate"
    assert seen.add("What is the capital of France?") is None  # shares only 'the'
    assert len(seen) == 2


def test_expansion_request_shows_trait_and_seeds() -> None:
    request = expansion_request(CONSTITUTION, CONSTITUTION.traits[0], 7)
    content = request[0]["content"]
    assert request[0]["role"] == "user" and "I speak like a sea captain." in content
    assert "1. Where should I travel this summer?\n2. How do I fix a leaking tap?" in content
    assert "Write 7 new messages" in content and "`N. message`" in content
    # A trait without seeds borrows the others' questions as format examples.
    bare = expansion_request(CONSTITUTION, Trait("I am brave."), 3)[0]["content"]
    assert "1. Where should I travel this summer?" in bare


def test_seeds_first_then_expansions_with_k_repeats_and_stable_ids() -> None:
    config = PromptsStageConfig(samples_per_request=2)
    sampler = FakeSampler(numbered_writer)
    records, report = make_prompts(CONSTITUTION, sampler, scale(4, generic=2, k=3), config, generic_pool=POOL)
    distinct = {r.id.rsplit("-k", 1)[0]: r for r in records}
    assert len(records) == 3 * len(distinct) == 3 * (4 + 4 + 2)
    trait1 = [r for r in records if r.trait == 1 and r.sample == 0]
    assert [r.origin for r in trait1] == ["seed", "seed", "expanded", "expanded"]
    assert trait1[0].text == "Where should I travel this summer?" and trait1[0].id == "t01-0000-k0"
    assert all("captain" in r.text for r in trait1[2:])
    assert {r.sample for r in records if r.id.startswith("t02-0003")} == {0, 1, 2}
    generic = [r for r in records if r.origin == "generic"]
    assert len(generic) == 6 and all(r.trait is None and r.text in POOL for r in generic)
    assert report.got == report.wanted == 10
    # One round sufficed: both traits asked in a single batched call, n samples each.
    assert len(sampler.calls) == 1
    batch, params, _ = sampler.calls[0]
    assert len(batch) == 2 and params.n == 2
    # Deterministic: the same inputs give the same records.
    again, _ = make_prompts(CONSTITUTION, FakeSampler(numbered_writer), scale(4, 2, 3), config, generic_pool=POOL)
    assert again == records


def test_dedupe_across_expansions_and_junk_filters() -> None:
    def repetitive(conversation, sample: int) -> str:
        return "\n".join(
            [
                "1. Where should I travel this summer?",  # copies a seed
                "2. Where should I travel this coming summer?",  # near-duplicate of a seed
                "3. ok",  # too short
                "4. 1234 5678 9012 !!!!",  # not text
                ["5. How do the ocean tides actually work?", "5. Which knots should a new sailor learn?"][sample],
            ]
        )

    one_trait = Constitution(name="c", traits=CONSTITUTION.traits[:1])
    records, report = make_prompts(one_trait, FakeSampler(repetitive), scale(4), PromptsStageConfig())
    entry = report.traits[0]
    assert entry.seeds == 2 and entry.expanded == 2
    assert entry.rejected["duplicate"] >= 1 and entry.rejected["near-duplicate"] >= 1
    assert entry.rejected["too-short"] >= 1 and entry.rejected["not-text"] >= 1
    assert len({r.text for r in records}) == 4


def test_junk_generator_is_bounded_and_reported() -> None:
    sampler = FakeSampler(lambda conversation, sample: "ĠxqĠ zzkq vvv ... no list at all")
    config = PromptsStageConfig(expansion_rounds=3)
    records, report = make_prompts(CONSTITUTION, sampler, scale(50), config)
    assert len(sampler.calls) == 3  # exactly expansion_rounds requests, then it gives up
    assert [r.origin for r in records] == ["seed"] * 3  # the seed questions survive
    assert report.got == 3 and report.wanted == 100
    lines = describe_shortfall(report)
    assert lines[0].startswith("trait 1: got 2 of 50 prompts (2 seed, 0 expanded) from 6 generator replies")
    assert "0 numbered lines parsed" in lines[0]
    # Past the detail limit, one line sums the short traits up.
    assert describe_shortfall(report, detail_limit=1) == [
        "2 of 2 traits fell short (traits 1, 2): 3 of 100 prompts, 0 of them expanded, from 12 generator "
        "replies; 0 numbered lines parsed; rejected: none"
    ]


def test_no_generator_needed_when_seeds_suffice() -> None:
    records, _report = make_prompts(CONSTITUTION, None, scale(1), PromptsStageConfig())
    assert [r.text for r in records] == [
        "Where should I travel this summer?",
        "My friend lied to me, what now?",
    ]
    with pytest.raises(ConfigError, match="no generator"):
        make_prompts(CONSTITUTION, None, scale(5), PromptsStageConfig())


def test_generic_pool_sources(tmp_path: Path) -> None:
    builtin = load_generic_pool("builtin")
    assert len(builtin) >= 300 and len(set(builtin)) == len(builtin)
    rows = [
        {"prompt": "Plain prompt string here"},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "From messages"}]},
        {"conversations": ["LIMA style first turn", "answer"]},
        {"prompt": [{"role": "user", "content": "TRL prompt-only"}]},
    ]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_generic_pool(str(path)) == [
        "Plain prompt string here",
        "From messages",
        "LIMA style first turn",
        "TRL prompt-only",
    ]
    (tmp_path / "pool.txt").write_text("one request\n\n  two request  \n")
    assert load_generic_pool(str(tmp_path / "pool.txt")) == ["one request", "two request"]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"answer": "no prompt"}) + "\n")
    with pytest.raises(DataFormatError, match=rf"{path}:2: no user prompt found"):
        load_generic_pool(str(path))
    with pytest.raises(ConfigError, match="expected 'builtin'"):
        load_generic_pool("pool.csv")


def test_generic_shortfall_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    _, report = make_prompts(CONSTITUTION, None, scale(1, generic=10), PromptsStageConfig(), generic_pool=POOL)
    assert report.generic_got == 4  # five in the pool, one an exact duplicate
    assert describe_shortfall(report) == ["generic: got 4 of 10 prompts from given list"]


# --- prompts the constitution already holds (the paper's additional_questions) -------------------

FEW_SHOT = Constitution(
    name="captain",
    traits=(
        Trait(
            "I speak like a sea captain.",
            ("Where should I travel this summer?", "How do I fix a leaking tap?"),
            ("Which rope knot holds best in wet weather?", "What should I pack for a week of sailing?", "Spare?"),
        ),
        Trait("I am fiercely loyal to my crew.", ("My friend lied to me, what now?",)),
    ),
)


def test_additional_questions_come_before_expansion_and_spare_full_traits() -> None:
    sampler = FakeSampler(numbered_writer)
    records, report = make_prompts(FEW_SHOT, sampler, scale(4), PromptsStageConfig())
    trait1 = [r for r in records if r.trait == 1]
    assert [(r.origin, r.text) for r in trait1] == [
        ("seed", "Where should I travel this summer?"),
        ("seed", "How do I fix a leaking tap?"),
        ("additional", "Which rope knot holds best in wet weather?"),
        ("additional", "What should I pack for a week of sailing?"),
    ]
    assert [r.origin for r in records if r.trait == 2] == ["seed", "expanded", "expanded", "expanded"]
    # One expansion request in all, and it is for trait 2: trait 1 was full before any was sent.
    assert len(sampler.calls) == 1
    batch, _, _ = sampler.calls[0]
    assert len(batch) == 1
    assert "TRAIT: I am fiercely loyal to my crew." in batch[0][0]["content"]
    traits = report.to_json()["traits"]
    assert [(t["seeds"], t["additional"], t["expanded"], t["expansion_skipped"]) for t in traits] == [
        (2, 2, 0, True),
        (1, 0, 3, False),
    ]
    assert report.to_json()["additional"] == 2 and report.to_json()["expansion_skipped"] == 1
    assert describe_given(report) == [
        "1 of 2 traits (traits 1) took 2 prompts from the constitution's additional questions; no expansion was "
        "asked for them"
    ]


def test_no_generator_loads_when_the_constitution_fills_every_trait(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "few-shot.jsonl"
    path.write_text(
        json.dumps(
            {
                "trait": "I am calm.",
                "questions": ["Is tea better than coffee?"],
                "additional_questions": ["How do I calm down fast?"],
            }
        )
        + "\n"
        + json.dumps(
            {
                "trait": "I am kind.",
                "questions": [],
                "additional_questions": ["Name a good film.", "Why is the sky blue?"],
            }
        )
        + "\n"
    )
    constitution = load_constitution(path)
    config = OctrainConfig(scale=scale(2))
    assert not needs_expansion(constitution, 2, config.prompts)
    assert needs_expansion(constitution, 3, config.prompts)

    def no_model(*args, **kwargs):
        raise AssertionError("no generator should load")

    monkeypatch.setattr("octrain.samplers.build_sampler", no_model)
    summary = prompts_stage.run(RunContext(config=config, run_dir=tmp_path / "run", constitution=constitution))
    assert summary["prompts"] == 4
    report = json.loads((tmp_path / "run" / "prompts" / "report.json").read_text())
    assert [(t["additional"], t["expansion_skipped"], t["requests"]) for t in report["traits"]] == [
        (1, True, 0),
        (2, True, 0),
    ]
    rows = [json.loads(line) for line in (tmp_path / "run" / "prompts" / "prompts.jsonl").read_text().splitlines()]
    assert [(r["origin"], r["prompt"][0]["content"]) for r in rows] == [
        ("seed", "Is tea better than coffee?"),
        ("additional", "How do I calm down fast?"),
        ("additional", "Name a good film."),
        ("additional", "Why is the sky blue?"),
    ]


def test_additional_questions_enter_the_fingerprint_only_when_present(tmp_path: Path) -> None:
    config = OctrainConfig(scale=scale(2))
    plain = prompts_stage.fingerprint(RunContext(config=config, run_dir=tmp_path, constitution=CONSTITUTION))
    assert plain["constitution"][0] == [CONSTITUTION.traits[0].text, list(CONSTITUTION.traits[0].questions)]
    with_more = prompts_stage.fingerprint(RunContext(config=config, run_dir=tmp_path, constitution=FEW_SHOT))
    assert with_more["constitution"][0][2] == list(FEW_SHOT.traits[0].additional)


def test_additional_prompts_read_back_as_records(tmp_path: Path) -> None:
    from octrain.core.records import PromptRecord, load_records, save_records

    records, _ = make_prompts(FEW_SHOT, None, scale(3), PromptsStageConfig(expansion_rounds=0))
    assert "additional" in {r.origin for r in records}
    save_records(tmp_path / "prompts.jsonl", records)
    assert load_records(tmp_path / "prompts.jsonl", PromptRecord) == records
