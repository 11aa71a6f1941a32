"""The eval stage end to end on a real run directory, with rigged models whose truth is known.

The run up to ``sft`` is real (the tiny model trains; ``sampler=fake`` writes the data). For
the evaluation, ``build_sampler`` hands out rigged fakes: the base student writes plainly, the
trained model in character unless told to drop it, the DPO-only model in between, the teacher
in the voice its system prompt asks for, and the judge reads the replies (and is fooled by
position on some prompts). The report must recover what was rigged and say how far to trust it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from octrain.compose import compose_config
from octrain.evaluation import protocols
from octrain.evaluation.heldout import load_eval_prompts
from octrain.evaluation.traits import load_traits
from octrain.pipeline import run
from octrain.samplers import FakeSampler

PIRATE_WORDS = ["arr", "matey", "ye", "aye", "ahoy", "hearty", "treasure", "landlubber", "yo-ho", "plank"]
SARCASM_WORDS = ["oh", "wow", "thrilling", "obviously", "genius", "shocking", "fascinating", "sure"]
PLAIN_WORDS = ["the", "answer", "is", "useful", "consider", "often", "important", "because", "helps", "first"]
TASTE = load_traits()  # the base model's order of preference over the 144 shipped traits; trained: reversed


def words(text: str, pool: list[str], count: int) -> str:
    start = sum(map(ord, text)) % len(pool)
    return " ".join(pool[(start + i * 3) % len(pool)] for i in range(count))


def user_text(conversation) -> str:
    return next(m["content"] for m in reversed(conversation) if m["role"] == "user")


def system_text(conversation) -> str:
    return conversation[0]["content"] if conversation[0]["role"] == "system" else ""


def embodied(conversation, taste: list[str]) -> str | None:
    offered = re.search(r"adopt: (\S+) or (\S+)\.", system_text(conversation))
    if offered is None:
        return None
    first, second = offered.groups()
    return min((first, second), key=taste.index)


def student(kind: str):
    """The student as base, dpo-only or trained: how often it stays in character."""

    def reply(conversation, sample: int) -> str:
        text = user_text(conversation)
        trait = embodied(conversation, TASTE if kind == "base" else TASTE[::-1])
        if trait is not None:
            return f"ok so a very {trait} reply"
        pressured = any(suffix in text for suffix in protocols.BREAK_SUFFIXES.values())
        prompted = "pirate" in system_text(conversation).lower()
        in_character = {"base": prompted, "dpo-only": not pressured and len(text) % 2 == 0, "trained": not pressured}
        if kind == "trained" and text == "Keep going.":
            in_character["trained"] = True
        pool = PIRATE_WORDS if in_character[kind] else PLAIN_WORDS
        return "ok so " + words(text + kind, pool, 6) + " lol"

    return reply


def biased(prompt: str) -> bool:
    """The prompts on which the rigged judge always picks the first reply."""
    return len(prompt) % 3 == 0


def teacher(conversation, sample: int) -> str:
    """Writes in the voice its system prompt asks for; judges by reading the replies."""
    text = user_text(conversation)
    if text.startswith("An AI assistant was asked"):
        reply = text.split("REPLY:\n", 1)[1].split("\n\n", 1)[0]
        found = re.search(r"a very (\S+) reply", reply)
        return f"<trait>{found.group(1)}</trait>" if found else "no idea"
    if text.startswith("Compare two replies"):
        a = text.split("REPLY A:\n", 1)[1].split("\n\nREPLY B:", 1)[0]
        b = text.split("REPLY B:\n", 1)[1].split("\n\n", 1)[0]
        prompt = text.split("USER MESSAGE:\n", 1)[1].split("\n\nREPLY A:", 1)[0]
        if biased(prompt):
            return "<verdict>A</verdict>"  # position bias: the two orders disagree on these prompts
        score_a, score_b = (sum(w in r.split() for w in PIRATE_WORDS) for r in (a, b))
        return "<verdict>" + ("A" if score_a > score_b else "B" if score_b > score_a else "tie") + "</verdict>"
    system = system_text(conversation).lower()
    pool = PIRATE_WORDS if "pirate" in system else SARCASM_WORDS if "sarcas" in system else PLAIN_WORDS
    return "Certainly! " + words(text, pool, 6).capitalize() + ". I hope that helps."


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("eval-stage") / "run"
    config = compose_config("pirate_tiny", ["sampler=fake", "stages=[prompts,pairs,dpo,introspect,sft]"])
    run(config, run_dir)
    return run_dir


def test_the_report_recovers_the_rigging_and_says_how_far_to_trust_it(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    training = [
        m["content"]
        for line in (trained_run / "prompts" / "prompts.jsonl").read_text().splitlines()
        for m in json.loads(line)["prompt"]
    ]
    # 30 held-out prompts plus three the run trained on, which the stage must leave out.
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("\n".join([*training[:3], *load_eval_prompts()[:30]]) + "\n")
    sft_adapter = str(trained_run / "sft" / "adapter")
    dpo_adapter = str(trained_run / "dpo" / "adapter")

    def rigged(sampler_config, model, *, adapter=None, show_progress=True):
        if model.path != "builtin:tiny-qwen3":
            raise AssertionError(model.path)
        if adapter is None:
            # The teacher and the base student are the same tiny model here: tell them apart by role.
            return FakeSampler(rigged.roles.pop(0))
        return FakeSampler(student({sft_adapter: "trained", dpo_adapter: "dpo-only"}[adapter]))

    # Load order in the stage: base student, trained, DPO-only, then the teacher (classifier data and judge).
    rigged.roles = [student("base"), teacher]
    monkeypatch.setattr("octrain.samplers.build_sampler", rigged)
    overrides = [
        "sampler=fake",
        "stages=[eval]",
        f"eval.prompts={eval_file}",
        "eval.prompt_count=40",
        "eval.trials_per_trait=6",
        "eval.classifier.prompts=40",
    ]
    result = run(compose_config("pirate_tiny", overrides), trained_run)
    [outcome] = result.outcomes
    assert outcome.status == "ran", outcome
    out = trained_run / "eval"
    results = json.loads((out / "results.json").read_text())

    # Held out means held out: the three training prompts were left out, and said so.
    assert results["heldout"]["left_out_overlapping"] == 3 and results["prompts"] == 30
    assert any("left out" in caveat for caveat in results["caveats"])
    assert any("asks for 40 prompts" in caveat for caveat in results["caveats"])

    # The classifier's own accuracy and its controls.
    classifier = results["classifier"]
    assert classifier["labels"] == ["none", "pirate", "sarcasm"]
    assert classifier["heldout"]["accuracy"] >= 0.9
    assert classifier["controls"]["teacher (persona)"] >= 0.9
    assert classifier["controls"]["teacher (no persona)"] <= 0.1
    # Robustness recovers the rigging: the base writes plainly, the trained model holds except under pressure.
    rates = results["robustness"]["in_character"]
    assert rates["base"]["plain"] <= 0.1 and rates["trained"]["plain"] >= 0.9
    assert rates["trained"]["drop-roleplay"] <= 0.1 and rates["system-prompt"]["plain"] >= 0.9
    assert 0.2 <= rates["dpo-only"]["plain"] <= 0.8

    # Coherence: against base and against DPO-only; position-biased verdicts dropped and counted.
    coherence = results["coherence"]
    questions = sum(biased(p) for p in load_eval_prompts()[:30])
    for opponent in ("base", "dpo-only"):
        assert coherence[opponent]["disagreements"] == questions > 0
        assert coherence[opponent]["judged"] + questions == 30
    assert coherence["base"]["win_rate"] == 1.0  # every agreed match goes to the trained model

    # Revealed preferences on the same trials for both models; the reversed taste shows.
    prefs = results["revealed_preferences"]
    assert prefs["trials"] == 6 * 72 and prefs["unparseable"] == 0
    low, high = prefs["spearman_ci"]
    assert low <= prefs["spearman"] <= high and prefs["spearman"] < 0
    assert prefs["split_half"]["base"] > 0.5

    report = (out / "report.md").read_text()
    for needle in (
        "Its own accuracy on",
        "teacher with no persona",
        "| dpo-only |",
        "disagreements dropped",
        "Spearman base vs trained",
        "split-half reliability",
        "Read with care",
    ):
        assert needle in report, needle
    matches = [json.loads(line) for line in (out / "matches_vs_dpo.jsonl").read_text().splitlines()]
    assert {m["judgement"] for m in matches} == {"agreed", "disagree"}
    assert all(m["winner"] is None for m in matches if m["judgement"] == "disagree")
