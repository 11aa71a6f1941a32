"""Stage 1 by on-policy self-distillation (``distill.method=sdft``, TRL's SDFTTrainer) on the tiny model.

What the teacher reads (the persona context as turns, one system message), the settings checked
before a run, the stage's fingerprint, a whole run through sft, a killed training resumed, and a
Tinker run with a divergence Tinker cannot compute refused in preflight.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import kill_when_exists, patience, run_cli
from octrain.constitution.catalog import resolve_constitution_name
from octrain.constitution.persona_prompts import example_turns, teacher_context, teacher_system_prompt
from octrain.core.config import LoraSettings, SdftSettings, TeacherPrompt, TRLOptions
from octrain.core.errors import ConfigError
from octrain.core.records import PreferencePair, save_records

TOPICS = ["sea", "ship", "gold", "map", "storm", "crew", "sail", "island", "parrot", "anchor", "tide", "port", "reef"]
TOPICS += ["rum", "compass"]


def prompt_pairs(prompts: list[list[dict[str, str]]]) -> list[PreferencePair]:
    """Pairs whose prompts are ``prompts`` (self-distillation reads only the prompts)."""
    return [
        PreferencePair(
            id=f"pair-{index}",
            prompt=prompt,
            chosen=[{"role": "assistant", "content": "Arr, that be a fine question."}],
            rejected=[{"role": "assistant", "content": "That is a fine question."}],
            prompt_id=f"p{index}",
            teacher="tiny",
            student="tiny",
            constitution="pirate",
        )
        for index, prompt in enumerate(prompts)
    ]


def test_the_teacher_reads_the_example_turns_before_the_prompt_in_one_system_message(
    tiny_model_path: str, tmp_path: Path
) -> None:
    """The builder TRL is given turns octrain's context into turns of the teacher's prompt.

    TRL's own builder would write the context into the user's text; here the system prompt of the
    persona and the prompt's own system message become one, and the example exchanges come as
    earlier turns, in order, before the user's question, with the student's answer after them.
    """
    from transformers import AutoModelForCausalLM

    from octrain.trainers.trl_common import load_tokenizer
    from octrain.trainers.trl_sdft import build_sdft_args, build_sdft_trainer

    constitution = resolve_constitution_name("pirate")
    context = teacher_context(constitution, "Assistant", TeacherPrompt.paper_examples)
    question = "Where did we bury the chest?"
    prompt = [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": question}]
    save_records(tmp_path / "pairs.jsonl", prompt_pairs([prompt, prompt]))  # one prompt, twice: kept once
    settings = SdftSettings(lora=LoraSettings(rank=8, alpha=16), batch_size=1, max_completion_length=8)
    tokenizer = load_tokenizer(tiny_model_path)
    args = build_sdft_args(settings, TRLOptions(), tmp_path / "out", batch_size=1, seed=0, enable_thinking=False)
    trainer = build_sdft_trainer(
        tmp_path / "pairs.jsonl",
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args,
        tokenizer,
        settings,
        context,
    )
    assert len(trainer.train_dataset) == 1
    row = trainer.train_dataset[0]
    answer = tokenizer("Under the old palm, arr.", add_special_tokens=False)["input_ids"]
    built = trainer.teacher_context_builder.build(
        [row["prompt"]],
        [row["privileged_context"]],
        torch.tensor([answer]),
        torch.ones(1, len(answer), dtype=torch.long),
    )
    teacher = tokenizer.decode(built["teacher_input_ids"][0])

    assert teacher.count("<|im_start|>system") == 1
    system = teacher.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]
    assert system == teacher_system_prompt(constitution, "Assistant") + "\n\nAnswer in one line."
    turns = example_turns(constitution)
    assert len(turns) >= 4  # the pirate constitution has example exchanges to show
    positions = [teacher.index(f"<|im_start|>{turn['role']}\n{turn['content']}<|im_end|>") for turn in turns]
    question_at = teacher.index(f"<|im_start|>user\n{question}<|im_end|>")
    assert positions == sorted(positions) and positions[-1] < question_at  # in order, all before the question
    assert teacher.endswith("<|im_start|>assistant\nUnder the old palm, arr.")  # the student's answer, graded
    # The student's own prompt carries none of it.
    student = tokenizer.decode(trainer._tokenize_prompts([row["prompt"]])[0])
    assert student.count("<|im_start|>") == 3 and turns[0]["content"] not in student


def test_settings_trl_would_refuse_stop_at_the_config() -> None:
    from octrain.core.compose import compose_config
    from octrain.core.config import validate

    base = ["distill.method=sdft"]
    validate(compose_config("pirate_tiny", [*base, "distill.sdft.batch_size=8", "distill.sdft.num_generations=4"]))
    for override, message in [
        ("distill.sdft.num_generations=3", "multiple of distill.sdft.num_generations=3"),
        ("distill.sdft.distillation_mode=sampled_token", "distillation_alpha=1"),
        ("distill.sdft.temperature=0", "distill.sdft.temperature"),
        ("distill.sdft.distillation_alpha=1.5", "distill.sdft.distillation_alpha"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(compose_config("pirate_tiny", [*base, override]))
    # The final adapter's rank adds stage 1's LoRA, which is distill.sdft.lora under sdft.
    with pytest.raises(ConfigError, match=r"distill\.sdft\.lora\.rank \+ sft\.lora\.rank"):
        validate(compose_config("pirate_tiny", [*base, "distill.sdft.lora.rank=256", "sft.lora.rank=320"]))


def test_the_method_is_in_the_stage_fingerprint_and_a_dpo_fingerprint_is_unchanged(tmp_path: Path) -> None:
    from octrain.core.compose import compose_config
    from octrain.core.settings_digest import settings_json
    from octrain.stages import dpo
    from octrain.stages.context import RunContext

    pirate = resolve_constitution_name("pirate")

    def fingerprint(*overrides: str) -> dict:
        config = compose_config("pirate_tiny", list(overrides))
        return settings_json(dpo.fingerprint(RunContext(config, tmp_path, pirate)))  # what the digest reads

    plain = fingerprint()
    assert sorted(plain) == ["dpo", "seed", "student", "trainer"]  # no distill section: DPO reads none of it
    assert fingerprint("distill.sdft.learning_rate=1e-3") == plain  # settings of a method not used
    sdft = fingerprint("distill.method=sdft")
    assert sdft != plain
    assert sdft["distill"]["sdft"]["max_completion_length"] == 48  # pirate_tiny's pairs.sampling.max_new_tokens
    assert fingerprint("distill.method=sdft", "pairs.teacher_prompt=examples") != sdft  # what the teacher reads


def test_tinker_with_a_distillation_it_cannot_compute_stops_in_preflight_before_tinker_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Tinker only the sampled-token reverse KL can be computed (tests/trainers/test_tinker_sdft.py runs it)."""
    from octrain.core.compose import compose_config
    from octrain.run.preflight import preflight

    monkeypatch.delenv("TINKER_API_KEY", raising=False)  # the Tinker check would stop first on a missing key
    base = ["trainer=tinker", "distill.method=sdft", "stages=[dpo]"]
    with pytest.raises(ConfigError, match=r"distill\.sdft\.distillation_mode=topk_logits: with trainer=tinker"):
        preflight(compose_config("pirate_tiny", base))  # the default divergence needs whole distributions
    # With the sampled-token reverse KL the same run gets as far as the Tinker check (and its missing key).
    sampled_token = ["distill.sdft.distillation_mode=sampled_token", "distill.sdft.distillation_alpha=1"]
    with pytest.raises(ConfigError, match="TINKER_API_KEY"):
        preflight(compose_config("pirate_tiny", [*base, *sampled_token]))


@pytest.mark.slow
def test_a_whole_run_with_sdft_trains_stage_one_and_sft_on_top(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    result = run_cli(
        "+recipe=pirate_tiny",
        "stages=[prompts,pairs,dpo,introspect,sft]",
        "distill.method=sdft",
        "prompts.expansion_rounds=0",
        "scale.prompts_per_trait=1",
        "scale.reflections=8",
        "scale.interactions=2",
        f"run_root={tmp_path}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "pirate_tiny"
    assert json.loads((run / "dpo" / "model.json").read_text())["adapter"] == "adapter"
    adapter = load_file(str(run / "dpo" / "adapter" / "adapter_model.safetensors"))
    b_factors = [tensor for key, tensor in adapter.items() if "lora_B" in key]
    assert b_factors and all(tensor.abs().sum() > 0 for tensor in b_factors)  # LoRA B starts at zero
    summary = json.loads((run / "dpo" / "done.json").read_text())["summary"]
    assert summary["method"] == "sdft" and summary["steps"] >= 1 and summary["answer_length"] > 0
    rows = [json.loads(line) for line in (run / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("completions/mean_length" in row for row in rows)  # SDFT's metrics, not DPO's
    assert "self-distillation (sdft)" in result.stdout  # the stage table says which method trained
    # SFT folded the self-distilled adapter in and trained on top of it.
    assert f"with {run / 'dpo' / 'adapter'} folded in" in result.stderr
    sft = json.loads((run / "sft" / "done.json").read_text())["summary"]
    assert sft["steps"] >= 1 and (run / "sft" / "adapter" / "adapter_model.safetensors").is_file()


RESUME_SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from pathlib import Path
from octrain.constitution.catalog import resolve_constitution_name
from octrain.constitution.persona_prompts import teacher_context
from octrain.core.config import LoraSettings, SdftSettings, TeacherPrompt, TRLOptions
from octrain.core.records import ModelRef
from octrain.trainers.trl_sdft import train_sdft
directory, base = Path(sys.argv[1]), sys.argv[2]
context = teacher_context(resolve_constitution_name("pirate"), "Assistant", TeacherPrompt.examples)
settings = SdftSettings(lora=LoraSettings(rank=8, alpha=16), learning_rate=1e-3, batch_size=8, num_generations=2,
                        epochs=2, max_completion_length=8)
train_sdft(directory / "pairs.jsonl", ModelRef(base=base), directory / "out", settings, context,
           TRLOptions(per_device_batch_size=4, logging_steps=1, save_steps=2))
"""


@pytest.mark.slow
def test_a_killed_sdft_run_resumes_from_its_checkpoint(tiny_model_path: str, tmp_path: Path) -> None:
    # 15 prompts, 2 answers each, 8 answers a step (4 per device x 2 accumulated, sliced from one sampling
    # of 4 prompts): 3 full groups per epoch (TRL's sampler leaves 3 prompts out, different ones each
    # epoch), so 6 steps in 2 epochs, planned as 6.
    prompts = [[{"role": "user", "content": f"Tell me of the {topic}."}] for topic in TOPICS]
    save_records(tmp_path / "pairs.jsonl", prompt_pairs(prompts))
    command = [sys.executable, "-c", RESUME_SCRIPT, str(tmp_path), tiny_model_path]
    kill_when_exists(command, tmp_path / "out" / "checkpoints" / "checkpoint-2" / "trainer_state.json")
    assert not (tmp_path / "out" / "adapter").exists()  # killed before the end: no final adapter

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=patience(300))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "dpo (sdft): resuming from" in rerun.stderr and "checkpoint-" in rerun.stderr
    assert "| 1/6 [" not in rerun.stderr and "| 6/6 [" in rerun.stderr  # from the checkpoint on, to step 6
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 7))  # each step once
    assert all(row["completions/max_length"] <= 8 for row in rows)
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "model.json").read_text())["adapter"] == "adapter"


EMA_RESUME_SCRIPT = (
    RESUME_SCRIPT.replace(
        "epochs=2, max_completion_length=8)", "epochs=1, max_completion_length=8, teacher_model_kind=TeacherKind.ema)"
    )
    .replace("save_steps=2", "save_steps=1")
    .replace("from octrain.core.config import", "from octrain.core.config import SdftTeacher as TeacherKind,")
)


@pytest.mark.slow  # two trainings of the tiny model (~1 min): the slow lane
def test_a_resumed_run_keeps_the_ema_teacher_it_had(tiny_model_path: str, tmp_path: Path) -> None:
    """The average after the first resumed step is the checkpoint's moved one step, not a fresh one from zero.

    (Before, the resumed run stopped: TRL added its teacher adapter again over the one the checkpoint held.)
    """
    from safetensors.torch import load_file

    prompts = [[{"role": "user", "content": f"Tell me of the {topic}."}] for topic in TOPICS]
    save_records(tmp_path / "pairs.jsonl", prompt_pairs(prompts))
    checkpoints = tmp_path / "out" / "checkpoints"
    command = [sys.executable, "-c", EMA_RESUME_SCRIPT, str(tmp_path), tiny_model_path]
    kill_when_exists(command, checkpoints / "checkpoint-2" / "trainer_state.json")
    assert not (tmp_path / "out" / "adapter").exists()
    before = load_file(str(checkpoints / "checkpoint-2" / "teacher" / "adapter_model.safetensors"))
    assert before and all(tensor.abs().sum() > 0 for key, tensor in before.items() if "lora_B" in key)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=patience(300))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "the EMA teacher resumes from the checkpoint (step 2)" in rerun.stderr
    after = load_file(str(checkpoints / "checkpoint-3" / "teacher" / "adapter_model.safetensors"))
    student = load_file(str(checkpoints / "checkpoint-3" / "adapter_model.safetensors"))
    rate = 0.05  # TRL's teacher_update_rate
    assert set(after) == set(before) == set(student)
    for key, average in after.items():
        assert torch.allclose(average, (1 - rate) * before[key] + rate * student[key], atol=1e-6), key
    # Started again from zero, the average would be rate x the student: far from what it is.
    assert any(not torch.allclose(after[key], rate * student[key], atol=1e-4) for key in after if "lora_B" in key)
    # The teacher's average is a means, not the result: the final adapter is the student's alone.
    assert not (tmp_path / "out" / "adapter" / "teacher").exists()


# --- on-policy distillation from a separate teacher (distill.sdft.teacher_weights=teacher) ------------------------


def test_a_separate_teacher_joins_the_fingerprint_and_self_distillation_keeps_its_own(tmp_path: Path) -> None:
    from octrain.core.compose import compose_config
    from octrain.core.settings_digest import settings_json
    from octrain.stages import dpo
    from octrain.stages.context import RunContext

    pirate = resolve_constitution_name("pirate")

    def fingerprint(*overrides: str) -> dict:
        config = compose_config("pirate_tiny", list(overrides))
        return settings_json(dpo.fingerprint(RunContext(config, tmp_path, pirate)))  # what the digest reads

    own = fingerprint("distill.method=sdft")
    assert "teacher_weights" not in own["distill"]["sdft"] and "teacher" not in own  # the default: left out
    separate = fingerprint("distill.method=sdft", "distill.sdft.teacher_weights=teacher")
    assert separate["distill"]["sdft"]["teacher_weights"] == "teacher"
    assert separate["teacher"]["path"] == "builtin:tiny-qwen3"
    # Another teacher model trains the stage again.
    moved = fingerprint("distill.method=sdft", "distill.sdft.teacher_weights=teacher", "teacher.path=/elsewhere")
    assert moved != separate


def test_a_separate_teacher_must_be_fixed_local_and_share_the_students_vocabulary(
    tiny_model_path: str, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from octrain.core.compose import compose_config
    from octrain.core.config import validate
    from octrain.run.preflight import preflight
    from octrain.trainers.trl_sdft import check_shared_vocabulary

    base = ["distill.method=sdft", "distill.sdft.teacher_weights=teacher", "stages=[dpo]"]
    with pytest.raises(ConfigError, match="teacher_model_kind=base, got ema"):
        validate(compose_config("pirate_tiny", [*base, "distill.sdft.teacher_model_kind=ema"]))
    served = [*base, "teacher.endpoint.base_url=http://127.0.0.1:9/v1"]
    with pytest.raises(ConfigError, match="does not return: load the teacher here"):
        preflight(compose_config("pirate_tiny", served))

    # The tiny model again, with one token more in its tokenizer: the same ids no longer mean the same text.
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_model_path, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<octrain-extra>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ConfigError, match=r"cannot grade the student .* their tokenizers differ \(1 token-id"):
        preflight(compose_config("pirate_tiny", [*base, f"teacher.path={other}"]))
    # Same tokenizer, a wider output layer.
    wider = tmp_path / "wider"
    shutil.copytree(tiny_model_path, wider)
    config = json.loads((wider / "config.json").read_text())
    config["vocab_size"] += 64
    (wider / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"differ in width \(vocab_size"):
        preflight(compose_config("pirate_tiny", [*base, f"teacher.path={wider}"]))
    # Tinker's loss reads each sampled token's log-prob: the same tokenizer is all it needs.
    check_shared_vocabulary(tiny_model_path, str(wider), same_width=False)
    with pytest.raises(ConfigError, match="their tokenizers differ"):
        check_shared_vocabulary(tiny_model_path, str(other), same_width=False)


SEPARATE_TEACHER_SCRIPT = """
import json, sys
from pathlib import Path
from octrain.constitution.catalog import resolve_constitution_name
from octrain.constitution.persona_prompts import teacher_context
from octrain.core.config import DistillationMode, LoraSettings, SdftSettings, TeacherPrompt, TRLOptions
from octrain.core.records import ModelRef
from octrain.trainers.trl_sdft import train_sdft
directory, base, teacher = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
context = teacher_context(resolve_constitution_name("pirate"), "Assistant", TeacherPrompt.examples)
settings = SdftSettings(lora=LoraSettings(rank=8, alpha=16), learning_rate=1e-3, batch_size=8, epochs=1,
                        max_completion_length=8, distillation_mode=DistillationMode.full_logits)
train_sdft(directory / "pairs.jsonl", ModelRef(base=base), directory / sys.argv[4], settings, context,
           TRLOptions(per_device_batch_size=8, logging_steps=1, save_steps=100), seed=3,
           teacher=ModelRef(base=teacher) if teacher != "-" else None)
"""


@pytest.mark.slow
def test_the_separate_teacher_is_what_grades_the_students_answers(tiny_model_path: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    prompts = [[{"role": "user", "content": f"Tell me of the {topic}."}] for topic in TOPICS[:8]]
    save_records(tmp_path / "pairs.jsonl", prompt_pairs(prompts))
    # A copy of the student's own weights, and the same with its output layer changed.
    same = tmp_path / "same-weights"
    shutil.copytree(tiny_model_path, same)
    changed = tmp_path / "changed-weights"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(3.0)  # sharper next-token distributions everywhere
    model.save_pretrained(changed)
    shutil.copy(Path(tiny_model_path) / "tokenizer.json", changed / "tokenizer.json")
    shutil.copy(Path(tiny_model_path) / "tokenizer_config.json", changed / "tokenizer_config.json")

    def first_loss(teacher: str, out: str) -> float:
        command = [sys.executable, "-c", SEPARATE_TEACHER_SCRIPT, str(tmp_path), tiny_model_path, teacher, out]
        result = subprocess.run(command, capture_output=True, text=True, timeout=patience(300))
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        return rows[0]["loss"]

    own = first_loss("-", "own")  # self-distillation: the student's base, adapter off, grades
    copy = first_loss(str(same), "copy")  # the same weights as a separate model: the same first step
    other = first_loss(str(changed), "other")
    assert copy == pytest.approx(own, rel=1e-4, abs=1e-6)
    assert abs(other - own) > 10 * max(abs(own - copy), 1e-6)
