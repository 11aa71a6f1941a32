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

from octrain.core.compose import compose_config
from octrain.evaluation import protocols
from octrain.evaluation.heldout import load_eval_prompts
from octrain.evaluation.traits import load_traits
from octrain.run.pipeline import run
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


def rig(monkeypatch: pytest.MonkeyPatch, run_dir: Path, config, judge=teacher) -> list[tuple[str, FakeSampler]]:
    """Hand out the rigged models of ``config``'s run; returns each model built, by role, in load order."""
    sft_adapter = str(run_dir / "sft" / "adapter")
    dpo_adapter = str(run_dir / "dpo" / "adapter")
    built: list[tuple[str, FakeSampler]] = []

    def rigged(sampler_config, model, *, adapter=None, serves=(), show_progress=True):
        if model.path != "builtin:tiny-qwen3":
            raise AssertionError(model.path)
        if adapter is None:
            # The teacher and the base student are the same tiny model here: tell them apart by role.
            role = "teacher" if model is config.teacher else "base"
            reply = judge if role == "teacher" else student("base")
        else:
            role = {sft_adapter: "trained", dpo_adapter: "dpo-only"}[adapter]
            reply = student(role)
        built.append((role, FakeSampler(reply)))
        return built[-1][1]

    monkeypatch.setattr("octrain.samplers.build_sampler", rigged)
    return built


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
    overrides = [
        "sampler=fake",
        "stages=[eval]",
        f"eval.prompts={eval_file}",
        "eval.prompt_count=40",
        "eval.trials_per_trait=6",
        "eval.classifier.prompts=40",
    ]
    config = compose_config("pirate_tiny", overrides)
    built = rig(monkeypatch, trained_run, config)
    result = run(config, trained_run)
    # Each model loads once, and does all of its work before the next one loads.
    assert [role for role, _ in built] == ["base", "trained", "dpo-only", "teacher"]
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
    # The base student's own plain answers ("ok so ... lol") are a class: the teacher writes "Certainly! ...".
    assert classifier["labels"] == ["none", "pirate", "sarcasm", "student"]
    assert classifier["heldout"]["accuracy"] >= 0.9
    per_class = classifier["heldout"]["per_class"]
    assert set(per_class) == set(classifier["labels"]) and all(
        c["n"] == 10 and c["recall"] >= 0.8 for c in per_class.values()
    )
    assert classifier["heldout_accuracy"]["n"] == 40 and classifier["heldout_accuracy"]["ci"][0] > 0.8
    controls = classifier["controls"]
    assert controls["teacher (persona)"]["rate"] >= 0.9 and controls["teacher (persona)"]["n"] == 30
    assert controls["teacher (no persona)"]["rate"] <= 0.1
    assert controls["base student (no system prompt)"]["rate"] <= 0.1
    # Robustness recovers the rigging: the base writes plainly, the trained model holds except under pressure.
    rates = {name: {c: r["rate"] for c, r in by.items()} for name, by in results["robustness"]["in_character"].items()}
    assert rates["base"]["plain"] <= 0.1 and rates["trained"]["plain"] >= 0.9
    assert rates["trained"]["drop-roleplay"] <= 0.1 and rates["system-prompt"]["plain"] >= 0.9
    assert 0.2 <= rates["dpo-only"]["plain"] <= 0.8
    # Every rate with its count and a Wilson interval around it; every macro-F1 with its bootstrap interval.
    for by_condition in results["robustness"]["in_character"].values():
        for entry in by_condition.values():
            assert entry["ci"][0] <= entry["rate"] <= entry["ci"][1] and entry["n"] in (30, 270)
    for by_condition in results["robustness"]["macro_f1"].values():
        for entry in by_condition.values():
            assert entry["ci"][0] <= entry["value"] <= entry["ci"][1] and entry["n"] in (30, 270)
    assert results["prefill"]["trained_turn2_in_character"]["n"] == 30
    assert results["passed"]["in_character"] and results["passed"]["prefill"]

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
    spearman = prefs["spearman"]
    assert spearman["low"] <= spearman["point"] <= spearman["high"] < 0
    assert prefs["reliability"]["base"]["stepped_up"] > 0.5  # a fixed taste agrees with itself
    # The reversed taste shows as a change; at 6 trials per trait few single traits clear their simultaneous
    # intervals, and those listed do clear them.
    assert prefs["changed"] and len(prefs["rose"]) + len(prefs["fell"]) >= 1
    assert all(low > 0 for _, _, low, _ in prefs["rose"]) and all(high < 0 for *_, high in prefs["fell"])
    assert any("6 trials per trait" in caveat for caveat in results["caveats"])
    assert results["passed"]["revealed_preferences"] is False  # fewer than 8 trials per trait

    report = (out / "report.md").read_text()
    for needle in (
        "Its own accuracy on",
        "| teacher (no persona) |",
        "| dpo-only |",
        "disagreements dropped",
        "Raw Spearman of the two fitted rankings",
        "split-half",
        "Read with care",
        "## Figures that passed their checks",
        "| student | 10 |",
        "base student (no system prompt)",
    ):
        assert needle in report, needle
    matches = [json.loads(line) for line in (out / "matches_vs_dpo.jsonl").read_text().splitlines()]
    assert {m["judgement"] for m in matches} == {"agreed", "disagree"}
    assert all(m["winner"] is None for m in matches if m["judgement"] == "disagree")


def test_a_failed_judge_resumes_from_the_committed_answers(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from octrain.core.records import ModelRef
    from octrain.evaluation.paper_suite import evaluate_model
    from octrain.run.pipeline import resolve_constitution
    from octrain.samplers.openai_http import JudgeRequestError
    from octrain.stages.context import RunContext

    overrides = [
        "sampler=fake",
        "stages=[eval]",
        "eval.prompt_count=30",
        "eval.trials_per_trait=4",
        "eval.chunk_size=16",
    ]
    config = compose_config("pirate_tiny", [*overrides, "eval.classifier.prompts=40"])
    out = trained_run / "eval"
    chunks = out / "chunks"
    vs_dpo = chunks / "trained-vs-dpo-only"

    def failing(conversation, sample: int) -> str:
        # The judge gives up for good once two chunks of the last judging are committed.
        if user_text(conversation).startswith("Compare two replies") and (vs_dpo / "chunk-00001.jsonl").exists():
            raise JudgeRequestError("judge.example/v1/chat/completions: failed after 5 attempts; last error: HTTP 503")
        return teacher(conversation, sample)

    rig(monkeypatch, trained_run, config, judge=failing)
    with pytest.raises(JudgeRequestError, match="HTTP 503"):
        run(config, trained_run)
    assert not (out / "results.json").exists() and not (out / "done.json").exists()
    committed = {path: path.read_bytes() for path in sorted(chunks.glob("*/chunk-*.jsonl"))}
    assert sorted(p.name for p in vs_dpo.glob("chunk-*.jsonl")) == ["chunk-00000.jsonl", "chunk-00001.jsonl"]
    for work in ("base-robustness", "system-prompt-robustness", "base-trial", "trained-robustness", "base-trait"):
        assert (chunks / work / "chunk-00000.jsonl").is_file(), work
    rows = [json.loads(line) for line in (chunks / "base-robustness" / "chunk-00000.jsonl").read_text().splitlines()]
    # One stable id per answer: whose, under which suffix, to which prompt.
    assert [row["id"] for row in rows[:2]] == ["base-plain-0000", "base-drop-roleplay-0000"]
    assert rows[9]["id"] == "base-plain-0001"

    # The rerun loads no student model at all and asks the judge only what is missing. A longer wait
    # for the judge changes no result: the committed work is kept, not cleared.
    patient = compose_config("pirate_tiny", [*overrides, "eval.classifier.prompts=40", "eval.judge_timeout=300"])
    built = rig(monkeypatch, trained_run, patient)
    result = run(patient, trained_run)
    assert result.outcomes[0].status == "ran"
    assert [role for role, _ in built] == ["teacher"]
    [(_, judge)] = built
    asked = [conversation for batch, _, _ in judge.calls for conversation in batch]
    prompts = json.loads((out / "results.json").read_text())["prompts"]
    assert len(asked) == 2 * prompts - 2 * 16  # both orders of every prompt, less the two committed chunks
    assert all(user_text(c).startswith("Compare two replies") for c in asked)
    for path, content in committed.items():
        assert path.read_bytes() == content, path

    # The resumed results are those of a run never interrupted.
    rig(monkeypatch, trained_run, config)
    ctx = RunContext(config=config, run_dir=trained_run, constitution=resolve_constitution(config))
    trained, dpo = (ModelRef.load(trained_run / stage / "model.json") for stage in ("sft", "dpo"))
    evaluate_model(ctx, trained, tmp_path / "clean", dpo_ref=dpo)
    for name in ("results.json", "matches.jsonl", "matches_vs_dpo.jsonl"):
        assert (out / name).read_text() == (tmp_path / "clean" / name).read_text(), name

    # Another model evaluated into the same folder does not read those answers back as its own.
    built = rig(monkeypatch, trained_run, config)
    evaluate_model(ctx, dpo, out, dpo_ref=dpo)
    assert "base" in [role for role, _ in built]


def test_chunks_change_no_answer_and_keep_the_models_paired(trained_run: Path, tmp_path: Path) -> None:
    """With seed-dependent fake models (no rigging), small chunks give what one chunk gives."""
    from octrain.core.records import ModelRef
    from octrain.evaluation.paper_suite import evaluate_model
    from octrain.run.pipeline import resolve_constitution
    from octrain.stages.context import RunContext

    trained, dpo = (ModelRef.load(trained_run / stage / "model.json") for stage in ("sft", "dpo"))
    for size in (7, 100_000):
        config = compose_config("pirate_tiny", ["sampler=fake", "stages=[eval]", f"eval.chunk_size={size}"])
        ctx = RunContext(config=config, run_dir=trained_run, constitution=resolve_constitution(config))
        evaluate_model(ctx, trained, tmp_path / str(size), dpo_ref=dpo)
    small, whole = tmp_path / "7", tmp_path / "100000"
    for name in ("results.json", "matches.jsonl", "matches_vs_dpo.jsonl"):
        assert (small / name).read_text() == (whole / name).read_text(), name
    assert len(list((small / "chunks" / "base-robustness").glob("chunk-*.jsonl"))) > 1

    def texts(folder: Path) -> list[str]:
        return [json.loads(line)["text"] for p in sorted(folder.glob("chunk-*.jsonl")) for line in p.open()]

    # The fake ignores adapters: the same conversation with the same seed gives the same answer, so
    # identical answers from base and trained show that each conversation kept its seed across models.
    assert texts(small / "chunks" / "base-robustness") == texts(small / "chunks" / "trained-robustness")
    assert len(set(texts(small / "chunks" / "base-robustness"))) > 1
