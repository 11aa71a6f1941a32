"""eval.suite=shift: did the character take? Its statistics, its likelihood scorer and the stage end to end.

The end-to-end test runs the stage on a real tiny run with rigged samplers whose truth is known (as
tests/test_eval_stage.py does for the paper suite): the pairs teach the classifier pirate vs plain,
the trained model writes like a pirate, the base plainly. The likelihood figures are computed by the
real tiny models, whose answers are noise: the relevance instrument must then fail its own check and
leave the headline, which is the point of having a check.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from octrain.core.compose import compose_config
from octrain.core.records import ModelRef, PreferencePair, save_records
from octrain.evaluation.answer_likelihood import LikelihoodScorer
from octrain.evaluation.intervals import paired_bootstrap, wilson
from octrain.evaluation.shift_instruments import derangement, pairs_classifier
from octrain.evaluation.shift_report import headline, render_summary
from octrain.run.pipeline import run
from octrain.samplers import FakeSampler

PIRATE = ["arr", "matey", "ye", "aye", "ahoy", "hearty", "treasure", "landlubber", "yo-ho", "plank", "sails", "crew"]
PLAIN = ["the", "answer", "is", "useful", "consider", "often", "important", "because", "helps", "first", "so", "then"]


def pair(i: int, prompt: str, chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(
        id=f"pair-{i}",
        prompt=[{"role": "user", "content": prompt}],
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
        prompt_id=f"p{i}",
        teacher="T",
        student="S",
        constitution="pirate",
    )


def words(seed: str, pool: list[str], count: int = 8) -> str:
    start = sum(map(ord, seed))
    return " ".join(pool[(start + i * 5) % len(pool)] for i in range(count)) + "."


def test_wilson_matches_known_intervals() -> None:
    low, high = wilson(0, 40)
    assert low == 0.0 and high == pytest.approx(0.0876, abs=1e-4)
    low, high = wilson(36, 40)
    assert (low, high) == (pytest.approx(0.7695, abs=1e-4), pytest.approx(0.9604, abs=1e-4))
    assert wilson(0, 0) == (0.0, 1.0)


def test_paired_bootstrap_brackets_the_mean_and_collapses_on_constants() -> None:
    assert paired_bootstrap([0.5] * 30) == (0.5, 0.5)
    values = [1.0] * 20 + [0.0] * 20
    low, high = paired_bootstrap(values, seed=3)
    assert low < 0.5 < high and high - low < 0.4
    assert all(math.isnan(x) for x in paired_bootstrap([]))


def test_derangement_pairs_every_prompt_with_another() -> None:
    for count in (2, 3, 40):
        mapping = derangement(count, seed=count)
        assert sorted(mapping) == list(range(count)) and all(mapping[i] != i for i in range(count))


def test_the_classifier_learns_from_the_pairs_and_reports_its_own_check() -> None:
    pairs = [pair(i, f"Question number {i}?", words(f"c{i}", PIRATE), words(f"r{i}", PLAIN)) for i in range(60)]
    trained = pairs_classifier(pairs, "pirate", holdout=0.4, seed=0)
    check = trained["check"]
    assert check["heldout_answers"] == 48 and check["train_answers"] == 72
    assert check["heldout_accuracy"]["rate"] == 1.0 and check["passes_check"]
    assert trained["classifier"].predict([words("x", PIRATE), words("y", PLAIN)]) == ["pirate", "plain"]
    # Labels that carry no signal: the check fails, whatever the classifier says.
    flipped = [
        pair(i, p.prompt[0]["content"], p.rejected[0]["content"], p.chosen[0]["content"]) for i, p in enumerate(pairs)
    ]
    shuffled = [flipped[i] if i % 2 else pairs[i] for i in range(len(pairs))]
    assert not pairs_classifier(shuffled, "pirate", holdout=0.4, seed=0)["check"]["passes_check"]


def test_the_scorer_gives_the_same_log_probabilities_as_scoring_one_at_a_time(tiny_model_path: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preference_accuracy import answer_logps

    scorer = LikelihoodScorer(ModelRef(base="builtin:tiny-qwen3"), batch_size=3)
    prompts = ["Hi there", "What is a ship and why does it float on water?", "Tell me a story"]
    answers = ["Hello!", "A ship floats.", "Once upon a time there was a very long tale of the sea and its crew."]
    batched = scorer.score(prompts, answers)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    with torch.no_grad():
        for prompt, answer, score in zip(prompts, answers, batched, strict=True):
            one = answer_logps(
                model, tokenizer, [{"role": "user", "content": prompt}], [{"role": "assistant", "content": answer}]
            )
            # answer_logps also scores the newline the template puts after <|im_end|>; the scorer does not.
            full = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                tokenize=True,
                return_dict=True,
            )
            ids = torch.tensor([full["input_ids"]])
            last = torch.log_softmax(model(input_ids=ids).logits[0, -2].float(), -1)[ids[0, -1]]
            assert score.logprob == pytest.approx(float(one - last), abs=1e-3)
    scorer.close()


def rigged_student(kind: str):
    def reply(conversation, sample: int) -> str:
        prompt = conversation[-1]["content"]
        pool = PIRATE if kind == "final" or (kind == "dpo-only" and len(prompt) % 2) else PLAIN
        return words(prompt + kind, pool)

    return reply


def rigged_teacher(judge_right: bool):
    def reply(conversation, sample: int) -> str:
        text = conversation[-1]["content"]
        if text.startswith("Compare two replies"):
            a = text.split("REPLY A:\n", 1)[1].split("\n\nREPLY B:", 1)[0]
            if not judge_right:
                return "<verdict>A</verdict>"
            return "<verdict>A</verdict>" if any(w in a.split() for w in PIRATE) else "<verdict>B</verdict>"
        shots = any(m["role"] == "assistant" for m in conversation)  # the constitution's examples as turns
        return words(text, PIRATE if shots else PLAIN)

    return reply


SHARED = ("sampler=fake", "pairs.teacher_prompt=examples")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("shift") / "run"
    config = compose_config("pirate_tiny", [*SHARED, "stages=[prompts,pairs,dpo,introspect,sft]"])
    run(config, run_dir)
    return run_dir


def evaluate(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, judge_right: bool) -> dict:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    # Pairs that teach the classifier the character: pirate (chosen) against the student's plain style.
    pairs = [
        pair(i, f"Training question {i}?", words(f"chosen {i}", PIRATE), words(f"rejected {i}", PLAIN))
        for i in range(60)
    ]
    save_records(run_dir / "pairs" / "pairs.jsonl", pairs)
    config = compose_config(
        "pirate_tiny",
        [
            *SHARED,
            "eval.suite=shift",
            "eval.prompt_count=40",
            "eval.classifier.holdout=0.4",
            "stages=[eval]",
        ],
    )
    sft_adapter, dpo_adapter = str(run_dir / "sft" / "adapter"), str(run_dir / "dpo" / "adapter")

    def rigged(sampler_config, model, *, adapter=None, serves=(), show_progress=True):
        if adapter is None:
            return FakeSampler(rigged_teacher(judge_right) if model is config.teacher else rigged_student("base"))
        return FakeSampler(rigged_student({sft_adapter: "final", dpo_adapter: "dpo-only"}[adapter]))

    monkeypatch.setattr("octrain.samplers.build_sampler", rigged)
    run(config, run_dir)
    return json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))


@pytest.mark.slow  # a tiny run trained, then the stage with real likelihoods: ~25 s, in the lane CI runs next
def test_the_shift_suite_recovers_the_rigging_and_drops_what_fails_its_check(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = evaluate(trained_run, tmp_path, monkeypatch, judge_right=True)
    character = results["in_character"]
    assert character["instrument"]["passes_check"] and character["instrument"]["heldout_answers"] == 48
    rates = character["rates"]
    assert rates["final"]["rate"] == 1.0 and rates["base"]["rate"] == 0.0 and rates["teacher"]["rate"] == 1.0
    assert 0.2 < rates["dpo-only"]["rate"] < 0.8
    assert character["vs_base"]["final"]["ci"][0] > 0.9  # every prompt moved, so the interval is tight
    assert rates["base"]["n"] == 40 and rates["base"]["ci"][1] == pytest.approx(wilson(0, 40)[1])
    assert results["judge_check"]["passes_check"] and results["judge_check"]["accuracy"]["rate"] == 1.0
    # The likelihoods come from the real tiny models: numbers, whatever they say.
    assert all(math.isfinite(v) for v in results["toward_teacher"]["margin"].values())
    relevance = results["answers_question"]["instrument"]
    lines = headline(results)
    assert any(line.startswith("in character") for line in lines)
    if not relevance["passes_check"]:  # a noise model cannot tell on-topic answers apart
        assert not any(line.startswith("answers its own question") for line in lines)
        assert any(c.startswith("answers the question") for c in results["caveats"])
    assert len(results["examples"]) == 3 and "final:" in render_summary(results)


@pytest.mark.slow
def test_a_judge_at_chance_is_reported_and_used_for_nothing(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = evaluate(trained_run, tmp_path, monkeypatch, judge_right=False)
    judge = results["judge_check"]
    assert judge["accuracy"]["rate"] == 0.5 and not judge["passes_check"]
    assert any("cannot judge this character" in c for c in results["caveats"])
