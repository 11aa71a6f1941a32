"""Stage 1 by on-policy distillation on Tinker (octrain.trainers.tinker_sdft) against the fake service.

The fake (tests/tinker_fake.py) samples with octrain's tiny model, scores with it, and trains a real
LoRA with Tinker's ``importance_sampling`` loss as Tinker documents it, so these tests check the
loop's numbers and requests: the student's answers come from its weights of that step, the teacher
reads the persona's context before the prompt and then exactly the student's answer tokens, each
answer token's advantage is teacher - student log-prob (TRL's per-answer mean as its weight), a
separate teacher is the model asked, a killed run resumes to the uninterrupted run's weights, and
what Tinker cannot compute stops in preflight before any request.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker")

import torch

from conftest import synthetic_pairs
from octrain.constitution.catalog import resolve_constitution_name
from octrain.constitution.persona_prompts import example_turns, teacher_context
from octrain.core.config import (
    DistillationMode,
    LoraSettings,
    SdftSettings,
    TeacherPrompt,
    TinkerOptions,
    TrainerBackend,
    TrainerConfig,
)
from octrain.core.errors import ConfigError
from octrain.core.records import ModelRef, save_records
from octrain.trainers import TinkerTrainer, schedule, tinker_common, tinker_loop
from tinker_fake import FakeService, Killed, load_base, target_logprobs

TINY = "builtin:tiny-qwen3"
GOOD_KEY = "tml-" + "k" * 40
# 7 prompts, 2 answers each, 4 answers a step: 3 steps of 2 prompts, one prompt left out (TRL's arithmetic).
CONFIG = SdftSettings(
    lora=LoraSettings(rank=4, alpha=8),
    learning_rate=5e-3,
    batch_size=4,
    num_generations=2,
    max_completion_length=8,
    distillation_mode=DistillationMode.sampled_token,
    distillation_alpha=1.0,
)
OPTIONS = TinkerOptions(save_steps=2, max_concurrency=8)
CONTEXT = teacher_context(resolve_constitution_name("pirate"), "Assistant", TeacherPrompt.examples)
# What the Tinker ``sampled_token`` run needs on top of pirate_tiny's settings.
SAMPLED_TOKEN = ["distill.sdft.distillation_mode=sampled_token", "distill.sdft.distillation_alpha=1"]


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_API_KEY", GOOD_KEY)


def write_pairs(directory: Path, count: int = 7) -> Path:
    save_records(directory / "pairs.jsonl", synthetic_pairs(count))
    return directory / "pairs.jsonl"


def run_sdft(pairs: Path, out: Path, service: FakeService, **kwargs: Any) -> ModelRef:
    from octrain.trainers.tinker_sdft import train_sdft

    return train_sdft(pairs, ModelRef(base=TINY), out, CONFIG, CONTEXT, OPTIONS, seed=3, service=service, **kwargs)


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def full_sequence(datum: Any) -> list[int]:
    return [*datum.model_input.to_ints(), datum.loss_fn_inputs["target_tokens"].data[-1]]


@pytest.fixture(scope="module")
def trained(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One run through the trainer the stage builds (TinkerTrainer), on a fake service, for the tests that read it."""
    directory = tmp_path_factory.mktemp("tinker-sdft")
    pairs = write_pairs(directory)
    service = FakeService([TINY])
    trainer = TinkerTrainer(TrainerConfig(backend=TrainerBackend.tinker, tinker=OPTIONS), seed=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINKER_API_KEY", GOOD_KEY)
        patch.setattr(tinker_common, "SERVICE_FACTORY", lambda options: service)
        tinker_common.forget_sessions()
        try:
            result = trainer.train_sdft(pairs, ModelRef(base=TINY), directory / "dpo", CONFIG, CONTEXT)
        finally:
            tinker_common.forget_sessions()
    return directory / "dpo", service, result, pairs


def test_a_run_trains_and_writes_the_stage_s_files(trained: Any) -> None:
    out, service, result, _ = trained
    assert [row["step"] for row in rows(out)] == [1, 2, 3]
    for row in rows(out):
        assert {"loss", "kl", "completions/mean_length", "completions/clipped_ratio", "learning_rate"} <= set(row)
        assert 1 <= row["completions/mean_length"] <= CONFIG.max_completion_length
    assert result.remote == "tinker://run-1/sampler_weights/dpo-final" and result.adapter is None
    assert ModelRef.load(out / "model.json") == result
    assert (out / "training.png").is_file()
    assert json.loads((out / "train_summary.json").read_text())["optimizer_steps"] == 3
    lora_b = {name: t for name, t in service.storage[result.remote]["weights"].items() if "lora_B" in name}
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b.values())  # B starts at 0: it trained
    assert [name for name, _ in service.loss_batches] == ["importance_sampling"] * 3
    assert [len(data) for _, data in service.loss_batches] == [4, 4, 4]  # batch_size answers a step
    lora = next(kwargs for name, kwargs in service.calls if name == "create_lora_training_client")
    assert lora == {
        "base_model": TINY,
        "rank": 4,
        "seed": 3,
        "train_mlp": True,
        "train_attn": True,
        "train_unembed": False,
    }
    # TrainingArguments' AdamW (SDFTConfig keeps it) and octrain's schedule, step for step.
    expected = [
        schedule.learning_rate(step, total_steps=3, peak=5e-3, warmup_ratio=0.1, min_ratio=0.1) for step in range(3)
    ]
    assert [p.learning_rate for p in service.optim_params] == pytest.approx(expected, rel=1e-12)
    for params in service.optim_params:
        assert (params.beta1, params.beta2, params.eps, params.weight_decay, params.grad_clip_norm) == (
            0.9,
            0.999,
            1e-8,
            0.0,
            1.0,
        )


def test_each_step_samples_the_student_s_current_weights(trained: Any) -> None:
    _, service, _, _ = trained
    snapshots = [kwargs for name, kwargs in service.calls if name == "save_weights_and_get_sampling_client"]
    assert snapshots == [{"run": "run-1", "steps": step} for step in range(3)]  # after 0, 1, 2 optimizer steps
    assert service.sample_models == [f"run-1@{step}" for step in range(3) for _ in range(4)]
    params = [p for _, p in service.sample_requests]
    assert all((p.max_tokens, p.temperature, p.top_p) == (8, 1.0, 1.0) for p in params)
    assert len({p.seed for p in params}) == 12  # every answer its own stream
    # Two answers to each of a step's two prompts; six different prompts over the epoch, one left out.
    prompts = [tokens for tokens, _ in service.sample_requests]
    for step in range(3):
        first, second = prompts[4 * step : 4 * step + 4 : 2], prompts[4 * step + 1 : 4 * step + 4 : 2]
        assert first == second and first[0] != first[1]
    assert len(set(prompts)) == 6


def test_the_teacher_reads_the_context_then_exactly_the_student_s_answer(trained: Any) -> None:
    _, service, _, _ = trained
    tokenizer = tinker_common.load_tokenizer(TINY)
    turns = example_turns(resolve_constitution_name("pirate"))
    assert service.logprob_models == [TINY] * 12  # the student's base model, never the trained weights
    answers = [datum for _, data in service.loss_batches for datum in data]
    for datum, (prompt, _), (scored, last_n) in zip(
        answers, service.sample_requests, service.logprob_requests, strict=True
    ):
        sequence = full_sequence(datum)
        assert sequence[: len(prompt)] == list(prompt)  # the datum is the sampled prompt + its answer
        answer = sequence[len(prompt) :]
        assert last_n == len(answer) and list(scored[-len(answer) :]) == answer
        teacher = tokenizer.decode(scored[: -len(answer)])
        student = tokenizer.decode(prompt)
        question = student.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        positions = [teacher.index(f"<|im_start|>{turn['role']}\n{turn['content']}<|im_end|>") for turn in turns]
        assert positions == sorted(positions) and positions[-1] < teacher.index(f"user\n{question}<|im_end|>")
        assert teacher.endswith("<|im_start|>assistant\n") and student.endswith("<|im_start|>assistant\n")
        assert turns[0]["content"] not in student  # the student's own prompt carries none of it


def test_advantages_are_teacher_minus_student_log_probs(trained: Any) -> None:
    """Step 1 samples the starting weights (LoRA B = 0), the base model: both sides recomputed here."""
    out, service, _, _ = trained
    base = load_base(TINY)
    data = service.loss_batches[0][1]
    for datum, (prompt, _), (scored, _) in zip(data, service.sample_requests, service.logprob_requests, strict=False):
        sequence = full_sequence(datum)
        answer = len(sequence) - len(prompt)
        with torch.no_grad():
            student = target_logprobs(base, sequence[:-1], sequence[1:])[-answer:]
            teacher = target_logprobs(base, scored[:-1], scored[1:])[-answer:]
        inputs = datum.loss_fn_inputs
        advantages, logprobs = inputs["advantages"].to_torch(), inputs["logprobs"].to_torch()
        assert torch.all(advantages[:-answer] == 0) and torch.all(logprobs[:-answer] == 0)  # the prompt: nothing
        torch.testing.assert_close(logprobs[-answer:], student, atol=1e-4, rtol=0)  # the sampler's log-probs
        # Weighted 1 / (answer length x answers in the step): TRL's mean per answer, then over the answers.
        torch.testing.assert_close(advantages[-answer:] * answer * len(data), teacher - student, atol=1e-4, rtol=0)
        assert (teacher - student).abs().max() > 1e-3  # the context moves the teacher: the check has teeth
    # The learner's weights are the sampler's at step 1 (ratio 1): Tinker's loss is the reverse-KL estimate.
    first = rows(out)[0]
    assert first["loss"] == pytest.approx(first["kl"], rel=1e-3)


def test_a_killed_run_resumes_and_trains_each_step_once(key: None, trained: Any, tmp_path: Path) -> None:
    whole_out, whole, _, pairs = trained  # the same prompts, settings and seed, never interrupted
    service = FakeService([TINY], kill_at_step=3)  # dies at step 3, after the state saved at step 2
    with pytest.raises(Killed):
        run_sdft(pairs, tmp_path / "killed", service)
    progress = tinker_loop.Progress.load(tmp_path / "killed")
    assert progress is not None and progress.step == 2 and progress.sampler_path is None
    for recorded in (service.calls, service.optim_params, service.sample_requests, service.loss_batches):
        recorded.clear()
    service.kill_at_step = None
    result = run_sdft(pairs, tmp_path / "killed", service)

    assert ("create_training_client_from_state_with_optimizer", {"path": progress.state_path}) in service.calls
    assert len(service.optim_params) == 1 and len(service.loss_batches) == 1  # only step 3 again
    # Step 3 samples what the uninterrupted run sampled there: the same prompts and seeds.
    assert service.sample_requests == whole.sample_requests[8:]
    assert [row["step"] for row in rows(tmp_path / "killed")] == [1, 2, 3]
    assert [row["loss"] for row in rows(tmp_path / "killed")] == pytest.approx([r["loss"] for r in rows(whole_out)])
    resumed = service.storage[result.remote]["weights"]
    uninterrupted = whole.storage["tinker://run-1/sampler_weights/dpo-final"]["weights"]
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)


def test_a_finished_run_is_not_trained_again(key: None, trained: Any) -> None:
    out, service, result, pairs = trained
    before = len(service.calls)
    assert run_sdft(pairs, out, service) == result
    assert [name for name, _ in service.calls[before:]] == ["get_server_capabilities"]


@pytest.fixture
def sharper_teacher(tiny_model_path: str, tmp_path: Path) -> str:
    """The tiny model with its output layer scaled: the student's tokenizer, other grades."""
    from transformers import AutoModelForCausalLM

    directory = tmp_path / "sharper-teacher"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(3.0)
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tiny_model_path) / name, directory / name)
    return str(directory)


def test_a_separate_teacher_is_the_model_asked(key: None, sharper_teacher: str, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path, count=2)  # one step
    service = FakeService([TINY, sharper_teacher])
    run_sdft(pairs, tmp_path / "dpo", service, teacher=ModelRef(base=sharper_teacher))
    assert service.logprob_models == [sharper_teacher] * 4
    assert ("create_sampling_client", {"model_path": None, "base_model": sharper_teacher}) in service.calls
    datum, (prompt, _), (scored, _) = (
        service.loss_batches[0][1][0],
        service.sample_requests[0],
        service.logprob_requests[0],
    )
    sequence = full_sequence(datum)
    answer = len(sequence) - len(prompt)
    with torch.no_grad():
        student = target_logprobs(load_base(TINY), sequence[:-1], sequence[1:])[-answer:]
        teacher = target_logprobs(load_base(sharper_teacher), scored[:-1], scored[1:])[-answer:]
        own_base = target_logprobs(load_base(TINY), scored[:-1], scored[1:])[-answer:]
    advantages = datum.loss_fn_inputs["advantages"].to_torch()[-answer:] * answer * 4
    torch.testing.assert_close(advantages, teacher - student, atol=1e-4, rtol=0)
    assert (teacher - own_base).abs().max() > 1e-2  # not what the student's own base would have graded

    # A teacher the service does not serve stops before any answer is sampled.
    unserved = FakeService([TINY, sharper_teacher], served=[TINY])
    with pytest.raises(ConfigError, match=r"does not serve .*sharper-teacher.* for sampling"):
        run_sdft(pairs, tmp_path / "unserved", unserved, teacher=ModelRef(base=sharper_teacher))
    assert [name for name, _ in unserved.calls] == ["get_server_capabilities"] and not unserved.sample_requests


def test_what_tinker_cannot_compute_stops_in_preflight(key: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from octrain.core.compose import compose_config
    from octrain.run.preflight import preflight

    service = FakeService([TINY])
    monkeypatch.setattr(tinker_common, "SERVICE_FACTORY", lambda options: service)
    tinker_common.forget_sessions()
    base = ["trainer=tinker", "distill.method=sdft", "stages=[dpo]"]
    for overrides, message in [
        ([], r"distill\.sdft\.distillation_mode=topk_logits: with trainer=tinker only sampled_token"),
        (["distill.sdft.distillation_mode=full_logits"], r"distill\.sdft\.distillation_mode=full_logits"),
        ([*SAMPLED_TOKEN, "distill.sdft.teacher_model_kind=live"], r"distill\.sdft\.teacher_model_kind=live"),
        ([*SAMPLED_TOKEN, "distill.sdft.teacher_model_kind=ema"], r"distill\.sdft\.teacher_model_kind=ema"),
        ([*SAMPLED_TOKEN, "distill.sdft.temperature=0.7"], r"distill\.sdft\.temperature=0\.7"),
        ([*SAMPLED_TOKEN, "distill.sdft.lora.dropout=0.1"], "no dropout"),
    ]:
        with pytest.raises(ConfigError, match=message):
            preflight(compose_config("pirate_tiny", [*base, *overrides]))
    assert service.calls == []  # refused before any request
    try:
        preflight(compose_config("pirate_tiny", [*base, *SAMPLED_TOKEN]))
    finally:
        tinker_common.forget_sessions()
    assert [name for name, _ in service.calls] == ["get_server_capabilities"]


def test_the_trainer_refuses_the_same_settings_before_any_request(key: None, tmp_path: Path) -> None:
    """Called directly (the Python API, no preflight), the trainer checks the settings itself."""
    from octrain.trainers.tinker_sdft import train_sdft

    service = FakeService([TINY])
    settings = SdftSettings(max_completion_length=8, distillation_alpha=1.0)  # topk_logits: TRL only
    with pytest.raises(ConfigError, match=r"distill\.sdft\.distillation_mode=topk_logits"):
        train_sdft(write_pairs(tmp_path), ModelRef(base=TINY), tmp_path / "dpo", settings, CONTEXT, service=service)
    assert service.calls == []


def test_prompt_batches_follow_trl_s_arithmetic() -> None:
    from octrain.trainers.tinker_sdft import prompt_batches

    # 51 prompts, 8 answers of 1 a step (the demo's measured run): 6 full steps, 3 prompts left out.
    batches = prompt_batches(51, prompts_per_step=8, epochs=1.0, seed=0)
    assert len(batches) == 6 and all(len(batch) == 8 for batch in batches)
    assert len({index for batch in batches for index in batch}) == 48
    # Two epochs: each shuffled anew, each with its own prompts left out; half an epoch rounds up.
    two = prompt_batches(15, prompts_per_step=4, epochs=2.0, seed=0)
    assert len(two) == 6 and two[:3] != two[3:6]
    assert len(prompt_batches(15, prompts_per_step=4, epochs=0.5, seed=0)) == 2
    assert prompt_batches(15, prompts_per_step=4, epochs=2.0, seed=0) == two  # seeded: a resume plans the same


@pytest.mark.slow
def test_pipeline_distils_on_policy_on_tinker_and_sft_continues(
    key: None, tiny_model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prompts -> pairs -> dpo (sdft) -> introspect -> sft with sampler=tinker trainer=tinker on the fake:
    the stage writes Tinker DPO's files, its summary is self-distillation's, SFT continues its state."""
    from octrain.core.compose import compose_config
    from octrain.run import pipeline

    service = FakeService([TINY])
    monkeypatch.setattr(tinker_common, "SERVICE_FACTORY", lambda options: service)
    tinker_common.forget_sessions()
    config = compose_config(
        "pirate_tiny",
        [
            "sampler=tinker",
            "trainer=tinker",
            "distill.method=sdft",
            *SAMPLED_TOKEN,
            "distill.sdft.batch_size=4",
            "prompts.expansion_rounds=0",
            "scale.prompts_per_trait=1",
            "scale.reflections=2",
            "scale.interactions=1",
            "scale.interaction_turns=2",
            "pairs.sampling.max_new_tokens=6",
            "introspect.reflection_sampling.max_new_tokens=6",
            "introspect.interaction_sampling.max_new_tokens=6",
            "stages=[prompts,pairs,dpo,introspect,sft]",
            f"run_root={tmp_path}",
        ],
    )
    try:
        pipeline.preflight(config)
        pipeline.run(config, tmp_path / "pirate_tiny")
    finally:
        tinker_common.forget_sessions()
    run = tmp_path / "pirate_tiny"
    dpo = ModelRef.load(run / "dpo" / "model.json")
    assert dpo.remote == "tinker://run-1/sampler_weights/dpo-final"
    summary = json.loads((run / "dpo" / "done.json").read_text())["summary"]
    assert summary["method"] == "sdft" and summary["steps"] >= 1 and 1 <= summary["answer_length"] <= 6
    assert service.loss_batches[0][0] == "importance_sampling"
    made = [(name, kwargs) for name, kwargs in service.calls if name.startswith("create")]
    assert ("create_sampling_client", {"model_path": dpo.remote, "base_model": None}) in made  # introspection
    assert ("create_training_client_from_state", {"path": "tinker://run-1/weights/dpo-final"}) in made
    assert ModelRef.load(run / "sft" / "model.json").remote == "tinker://run-2/sampler_weights/sft-final"
