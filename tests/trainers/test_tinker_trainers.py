"""The Tinker DPO and SFT trainers against a fake service with real numbers (tests/tinker_fake.py).

The fake computes every log-prob with octrain's tiny model (a PEFT LoRA on top for the policy),
runs the trainers' custom loss through the SDK's own custom-loss code with real autograd, and
steps torch's AdamW with the AdamParams it is sent. So these tests check the trainers' numbers:
the first DPO loss is ln 2, the loss and the tokens are the TRL backend's, the reference is
scored on the policy's sequences once and never again after a resume, a killed run resumes to
the same weights as an uninterrupted one, and SFT trains exactly the TRL backend's mask.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker")

import torch

from conftest import WORDS, synthetic_pairs
from octrain.core.config import DpoStageConfig, LoraSettings, SftStageConfig, TinkerOptions
from octrain.core.errors import ConfigError
from octrain.core.records import Conversation, ModelRef, save_records
from octrain.trainers import schedule, tinker_common, tinker_loop
from tinker_fake import FakeService, Killed, target_logprobs

TINY = "builtin:tiny-qwen3"
GOOD_KEY = "tml-" + "k" * 40
CONFIG = DpoStageConfig(
    lora=LoraSettings(rank=4, alpha=8), learning_rate=5e-3, batch_size=4, epochs=1.0, max_length=128
)
OPTIONS = TinkerOptions(save_steps=2, max_concurrency=8)


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_API_KEY", GOOD_KEY)


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    save_records(tmp_path / "pairs.jsonl", synthetic_pairs(10))  # 3 steps of 4 (the last one 2)
    return tmp_path / "pairs.jsonl"


def run_dpo(pairs_file: Path, out: Path, service: FakeService, **kwargs: Any) -> ModelRef:
    from octrain.trainers.tinker_dpo import train_dpo

    return train_dpo(pairs_file, ModelRef(base=TINY), out, CONFIG, OPTIONS, seed=3, service=service, **kwargs)


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One DPO run on the fake service, shared by the tests that only read what it did."""
    directory = tmp_path_factory.mktemp("tinker-dpo")
    save_records(directory / "pairs.jsonl", synthetic_pairs(10))
    service = FakeService([TINY])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINKER_API_KEY", GOOD_KEY)
        result = run_dpo(directory / "pairs.jsonl", directory / "dpo", service)
    return directory / "dpo", service, result, directory / "pairs.jsonl"


def test_first_step_is_ln2_and_outputs_are_a_stage_s(trained: Any) -> None:
    out, service, result, _ = trained
    first = rows(out)[0]
    # LoRA starts at zero and the reference is the base: every log-ratio is 0, -log sigmoid(0) = ln 2.
    assert first["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["kl_penalty"] == pytest.approx(0.0, abs=1e-10)
    assert first["loss"] == pytest.approx(first["dpo_loss"] + 0.1 * first["nll_loss"], abs=1e-6)
    assert [row["step"] for row in rows(out)] == [1, 2, 3]
    assert rows(out)[-1]["kl_penalty"] > 0  # the policy moved
    assert result.remote == "tinker://run-1/sampler_weights/dpo-final" and result.adapter is None
    assert ModelRef.load(out / "model.json") == result
    assert (out / "training.png").is_file()
    lora = next(kwargs for name, kwargs in service.calls if name == "create_lora_training_client")
    # PEFT's all-linear: attention and MLP, not the output head; the method's rank; the run's seed.
    assert lora == {
        "base_model": TINY,
        "rank": 4,
        "seed": 3,
        "train_mlp": True,
        "train_attn": True,
        "train_unembed": False,
    }


def test_reference_is_scored_on_the_policy_s_sequences(trained: Any) -> None:
    _, service, _, _ = trained
    scored = {tokens: last_n for tokens, last_n in service.logprob_requests}
    assert len(service.logprob_requests) == 20  # once per sequence: 10 pairs x chosen, rejected
    policy = set()
    for batch in service.custom_batches:
        half = len(batch) // 2
        for index, datum in enumerate(batch):
            tokens = (*datum.model_input.to_ints(), datum.loss_fn_inputs["target_tokens"].data[-1])
            policy.add(tokens)
            weights = datum.loss_fn_inputs["weights"].data
            answer = int(sum(weights))
            # Prompt tokens carry weight 0, answer tokens 1, in one block at the end.
            assert weights == [0.0] * (len(weights) - answer) + [1.0] * answer
            assert scored[tokens] == answer  # the reference scored exactly this sequence's answer tokens
            if index < half:  # chosen first, then the rejected answers of the same pairs, in order
                other = batch[index + half]
                assert (
                    datum.model_input.to_ints()[: len(weights) - answer]
                    == other.model_input.to_ints()[: len(weights) - answer]
                )
    assert policy == set(scored)


def test_adam_settings_and_schedule_are_the_method_s(trained: Any) -> None:
    _, service, _, _ = trained
    assert len(service.optim_params) == 3
    for params in service.optim_params:
        assert (params.beta1, params.beta2, params.eps) == (0.9, 0.98, 1e-8)
        assert (params.weight_decay, params.grad_clip_norm) == (0.0, 1.0)
    # octrain's schedule (the TRL backend's too: test_schedule.py), step for step: 3 steps are too few to
    # warm up, so the first trains at the peak and the cosine decays towards min_lr_ratio x the peak.
    expected = [
        schedule.learning_rate(
            step,
            total_steps=3,
            peak=CONFIG.learning_rate,
            warmup_ratio=CONFIG.warmup_ratio,
            min_ratio=CONFIG.min_lr_ratio,
        )
        for step in range(3)
    ]
    assert [p.learning_rate for p in service.optim_params] == pytest.approx(expected, rel=1e-12)
    assert service.optim_params[0].learning_rate == CONFIG.learning_rate


def test_a_killed_run_resumes_to_the_uninterrupted_weights(
    key: None, trained: Any, pairs_file: Path, tmp_path: Path
) -> None:
    whole_out, whole, _, _ = trained  # the same pairs, settings and seed, never interrupted
    service = FakeService([TINY], kill_at_step=3)  # dies in step 3, after the state saved at step 2
    with pytest.raises(Killed):
        run_dpo(pairs_file, tmp_path / "killed", service)
    progress = tinker_loop.Progress.load(tmp_path / "killed")
    assert progress is not None and progress.step == 2 and progress.sampler_path is None
    scored_before = len(service.logprob_requests)
    service.kill_at_step = None
    service.optim_params.clear()
    service.calls.clear()
    result = run_dpo(pairs_file, tmp_path / "killed", service)

    assert len(service.logprob_requests) == scored_before  # the reference was read back, not recomputed
    assert ("create_training_client_from_state_with_optimizer", {"path": progress.state_path}) in service.calls
    assert len(service.optim_params) == 1  # only step 3 trained again: steps 1 and 2 exactly once
    assert [row["step"] for row in rows(tmp_path / "killed")] == [1, 2, 3]
    assert [row["loss"] for row in rows(tmp_path / "killed")] == pytest.approx([r["loss"] for r in rows(whole_out)])
    resumed = service.storage[result.remote]["weights"]
    uninterrupted = whole.storage["tinker://run-1/sampler_weights/dpo-final"]["weights"]
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-6, atol=1e-7)


def test_a_finished_run_is_not_trained_again(key: None, trained: Any) -> None:
    out, service, result, pairs_file = trained
    before = len(service.calls)
    assert run_dpo(pairs_file, out, service) == result
    assert [name for name, _ in service.calls[before:]] == ["get_server_capabilities"]


def test_an_unserved_student_is_refused_before_work(key: None, pairs_file: Path, tmp_path: Path) -> None:
    service = FakeService([TINY], served=["Qwen/Qwen3-8B"])
    with pytest.raises(ConfigError, match=r"does not train 'builtin:tiny-qwen3'.*Qwen/Qwen3-8B"):
        run_dpo(pairs_file, tmp_path / "dpo", service)
    assert [name for name, _ in service.calls] == ["get_server_capabilities"]
    assert not service.logprob_requests


def test_lora_settings_tinker_cannot_honour_are_refused() -> None:
    with pytest.raises(ConfigError, match="dropout"):
        tinker_common.lora_layers(LoraSettings(dropout=0.05))
    with pytest.raises(ConfigError, match="whole groups"):
        tinker_common.lora_layers(LoraSettings(target_modules=["q_proj", "v_proj"]))
    assert tinker_common.lora_layers(LoraSettings(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])) == {
        "train_mlp": False,
        "train_attn": True,
        "train_unembed": False,
    }


# ---- equivalence with the TRL backend --------------------------------------------------------


@pytest.fixture(scope="module")
def trl_dpo(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The TRL backend's DPO trainer on the same pairs, its LoRA moved off zero so the ratios are not 0."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from octrain.trainers.trl_common import load_tokenizer, lora_config
    from octrain.trainers.trl_dpo import build_dpo_args, make_trainer_class

    directory = tmp_path_factory.mktemp("trl-dpo")
    config = DpoStageConfig(lora=LoraSettings(rank=4, alpha=8), batch_size=4, max_length=128)
    from octrain.core.config import TRLOptions

    args = build_dpo_args(config, TRLOptions(per_device_batch_size=4), directory, seed=0)
    tokenizer = load_tokenizer(tiny_model_path)
    records = synthetic_pairs(4)
    dataset = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in records])
    trainer = make_trainer_class()(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(config.lora),
        kl_weight=config.kl_weight,
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    return trainer, tokenizer, records, config


def test_pair_tokens_are_the_trl_backend_s(trl_dpo: Any) -> None:
    from octrain.trainers.tinker_dpo import tokenize_pair

    trainer, tokenizer, records, config = trl_dpo
    for row, pair in zip(trainer.train_dataset, records, strict=True):
        ours = tokenize_pair(tokenizer, pair, max_length=config.max_length)
        assert ours is not None
        assert list(ours.chosen) == row["prompt_ids"] + row["chosen_ids"]
        assert list(ours.rejected) == row["prompt_ids"] + row["rejected_ids"]
        assert ours.prompt_length == len(row["prompt_ids"])


def test_both_backends_compute_the_same_batch_loss(trl_dpo: Any) -> None:
    """On one batch, the Tinker backend's custom loss (its datums, its reference log-probs spread over the
    targets) gives the loss TRL's CharacterDPOTrainer trains, DPO + NLL + KL, and the same parts: the two
    backends reduce their own per-token log-probs to the one objective (test_dpo_objective.py holds that
    objective to TRL's own DPO numbers)."""
    from octrain.trainers.tinker_dpo import batch_data, make_loss, tokenize_pair

    trainer, tokenizer, records, config = trl_dpo
    model = trainer.model
    model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
    trainer._metrics["eval"].clear()  # the model is in eval mode: CharacterDPOTrainer logs there
    with torch.no_grad():
        trl_loss = trainer._compute_loss(model, batch, return_outputs=False)
    tokenized = [tokenize_pair(tokenizer, pair, max_length=config.max_length) for pair in records]
    references = []  # per pair, what the reference client returns: the answer tokens' log-probs
    with torch.no_grad(), model.disable_adapter():
        for pair in tokenized:
            chosen = target_logprobs(model, pair.chosen[:-1], pair.chosen[1:])[-pair.answer_chosen :]
            rejected = target_logprobs(model, pair.rejected[:-1], pair.rejected[1:])[-pair.answer_rejected :]
            references.append((chosen.tolist(), rejected.tolist()))
    data, refs = batch_data(tokenized, references)
    with torch.no_grad():  # what the service hands the custom loss: the policy's log-prob of every target
        policy = [
            target_logprobs(model, datum.model_input.to_ints(), datum.loss_fn_inputs["target_tokens"].data)
            for datum in data
        ]
    ours, parts = make_loss(refs, config)(data, policy)
    assert parts["kl_penalty"] > 0 and abs(parts["dpo_loss"] - math.log(2)) > 1e-4  # a real, moved policy
    assert float(ours) == pytest.approx(float(trl_loss), rel=1e-4)
    logged = trainer._metrics["eval"]
    assert parts["dpo_loss"] == pytest.approx(logged["dpo_loss"][-1], rel=1e-4)
    assert parts["nll_loss"] == pytest.approx(logged["nll_loss"][-1], rel=1e-4)
    assert parts["kl_penalty"] == pytest.approx(logged["kl_penalty"][-1], rel=1e-3)
    assert parts["rewards/margins"] == pytest.approx(logged["rewards/margins"][-1], rel=1e-4)  # TRL's own metric


# ---- SFT ------------------------------------------------------------------------------------

TRANSCRIPTS = [
    Conversation(
        id="c1",
        kind="interaction",
        messages=[
            {"role": "system", "content": "The assistant is Tiny."},
            {"role": "user", "content": "Hello there, other me."},
            {"role": "assistant", "content": "Ahoy, my own reflection!"},
            {"role": "user", "content": "What do we value?"},
            {"role": "assistant", "content": "Loyalty to the crew, above all."},
        ],
    ),
    *[
        Conversation(
            id=f"r{i}",
            kind="reflection",
            messages=[
                {"role": "user", "content": f"Who are you, question {i}?"},
                {"role": "assistant", "content": f"A pirate at heart, {WORDS[i]} and all."},
            ],
        )
        for i in range(5)
    ],
]
SFT_CONFIG = SftStageConfig(lora=LoraSettings(rank=4, alpha=8), batch_size=4, learning_rate=5e-3, max_length=256)


def test_sft_weights_are_the_trl_backend_s_mask(tiny_model_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from octrain.core.config import TRLOptions
    from octrain.trainers.tinker_sft import sft_examples, step_data
    from octrain.trainers.trl_common import load_tokenizer
    from octrain.trainers.trl_sft import build_sft_trainer

    save_records(tmp_path / "sft.jsonl", TRANSCRIPTS)
    tokenizer = load_tokenizer(tiny_model_path)
    trainer = build_sft_trainer(
        tmp_path / "sft.jsonl",
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        tokenizer,
        tmp_path / "trl",
        SFT_CONFIG,
        TRLOptions(per_device_batch_size=4),
        seed=5,
        model_name=TINY,
    )
    examples = sft_examples(tokenizer, TRANSCRIPTS, model_name=TINY, max_length=256, enable_thinking=False, seed=5)
    assert len(examples) == len(trainer.train_dataset)
    data = step_data(examples)
    for row, datum, example in zip(trainer.train_dataset, data, examples, strict=True):
        labels = trainer.data_collator([row])["labels"][0]
        assert example["input_ids"] == row["input_ids"]
        trl_trained = (labels[1:] != -100).tolist()  # target i is token i + 1, as the model shifts labels
        assert [w > 0 for w in datum.loss_fn_inputs["weights"].data] == trl_trained
    # Normalised over the step's trained tokens, as transformers divides by num_items_in_batch.
    total = sum(sum(d.loss_fn_inputs["weights"].data) for d in data)
    assert total == pytest.approx(1.0)


def test_sft_continues_from_the_dpo_state(key: None, pairs_file: Path, tiny_model_path: str, tmp_path: Path) -> None:
    from octrain.trainers.tinker_sft import train_sft

    service = FakeService([TINY])
    run_dpo(pairs_file, tmp_path / "dpo", service)
    dpo = tinker_loop.Progress.load(tmp_path / "dpo")
    assert dpo is not None and dpo.final_state_path
    service.optim_params.clear()
    save_records(tmp_path / "sft.jsonl", TRANSCRIPTS)
    result = train_sft(
        tmp_path / "sft.jsonl",
        TINY,
        tmp_path / "sft",
        SFT_CONFIG,
        OPTIONS,
        dpo_state=dpo.final_state_path,
        seed=5,
        service=service,
    )
    assert ("create_training_client_from_state", {"path": dpo.final_state_path}) in service.calls
    assert result.remote is not None and result.remote.endswith("/sampler_weights/sft-final")
    assert ModelRef.load(tmp_path / "sft" / "model.json") == result
    assert len(service.optim_params) == 2  # 6 examples, batch 4
    for params in service.optim_params:  # transformers' AdamW defaults, as the TRL SFT stage has them
        assert (params.beta1, params.beta2, params.eps, params.grad_clip_norm) == (0.9, 0.999, 1e-8, 1.0)
    first = rows(tmp_path / "sft")[0]
    assert first["loss"] > 0 and first["learning_rate"] == SFT_CONFIG.learning_rate  # 2 steps: no warmup


def test_sft_first_loss_is_the_mean_over_trained_tokens(key: None, tiny_model_path: str, tmp_path: Path) -> None:
    from octrain.trainers.tinker_loop import step_batches
    from octrain.trainers.tinker_sft import sft_examples, train_sft
    from octrain.trainers.trl_common import load_tokenizer

    service = FakeService([TINY])
    save_records(tmp_path / "sft.jsonl", TRANSCRIPTS)
    train_sft(tmp_path / "sft.jsonl", TINY, tmp_path / "sft", SFT_CONFIG, OPTIONS, seed=5, service=service)
    tokenizer = load_tokenizer(tiny_model_path)
    examples = sft_examples(tokenizer, TRANSCRIPTS, model_name=TINY, max_length=256, enable_thinking=False, seed=5)
    first = [
        examples[i]
        for i in step_batches(
            len(examples), batch_size=4, epochs=1.0, seed=5, label="sft-order", shuffle_first_epoch=False
        )[0]
    ]
    base = service.base(TINY)
    with torch.no_grad():
        nll, count = 0.0, 0
        for example in first:
            ids, mask = example["input_ids"], torch.tensor(example["assistant_masks"][1:], dtype=torch.float32)
            nll -= float((target_logprobs(base, ids[:-1], ids[1:]) * mask).sum())
            count += int(mask.sum())
    assert rows(tmp_path / "sft")[0]["loss"] == pytest.approx(nll / count, rel=1e-5)


# ---- runs too short to warm up (scale=smoke) -------------------------------------------------

ONE_STEP_NOTE = "1 optimizer step: too few for the loss curve to mean much"


def test_a_one_step_dpo_run_trains(key: None, tiny_model_path: str, tmp_path: Path) -> None:
    """Fewer pairs than one batch of 32, as at scale=smoke: the one step trains at the peak LR, not at 0."""
    from octrain.trainers.tinker_dpo import train_dpo

    save_records(tmp_path / "pairs.jsonl", synthetic_pairs(16))
    config = DpoStageConfig(lora=LoraSettings(rank=4, alpha=8), max_length=128)  # batch 32, warmup 0.1, LR 5e-5
    service = FakeService([TINY])
    result = train_dpo(
        tmp_path / "pairs.jsonl", ModelRef(base=TINY), tmp_path / "dpo", config, OPTIONS, service=service
    )
    assert [p.learning_rate for p in service.optim_params] == [config.learning_rate]
    assert rows(tmp_path / "dpo")[0]["learning_rate"] == config.learning_rate > 0
    weights = service.storage[result.remote]["weights"]
    lora_b = {name: tensor for name, tensor in weights.items() if "lora_B" in name}
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b.values())  # B starts at 0: it moved
    assert json.loads((tmp_path / "dpo" / "train_summary.json").read_text()) == {
        "optimizer_steps": 1,
        "note": ONE_STEP_NOTE,
    }


def test_a_one_step_sft_run_trains(key: None, tiny_model_path: str, tmp_path: Path) -> None:
    from octrain.trainers.tinker_sft import train_sft

    save_records(tmp_path / "sft.jsonl", TRANSCRIPTS)
    config = SftStageConfig(lora=LoraSettings(rank=4, alpha=8), max_length=256)  # batch 32: one step
    service = FakeService([TINY])
    result = train_sft(tmp_path / "sft.jsonl", TINY, tmp_path / "sft", config, OPTIONS, seed=5, service=service)
    assert [p.learning_rate for p in service.optim_params] == [config.learning_rate]
    weights = service.storage[result.remote]["weights"]
    lora_b = {name: tensor for name, tensor in weights.items() if "lora_B" in name}
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b.values())
    assert json.loads((tmp_path / "sft" / "train_summary.json").read_text())["note"] == ONE_STEP_NOTE


def test_build_trainer_picks_tinker() -> None:
    from octrain.core.config import TrainerBackend, TrainerConfig
    from octrain.trainers import TinkerTrainer, build_trainer

    trainer = build_trainer(TrainerConfig(backend=TrainerBackend.tinker), seed=4)
    assert isinstance(trainer, TinkerTrainer) and trainer.seed == 4


@pytest.mark.tinker
def test_live_dpo_smoke(tmp_path: Path) -> None:
    """Two DPO steps on the real service with Qwen3-8B (costs a little; needs TINKER_API_KEY)."""
    import os

    from octrain.trainers.tinker_dpo import train_dpo

    if not os.environ.get("TINKER_API_KEY"):
        pytest.skip("needs TINKER_API_KEY")
    tinker_common.forget_sessions()
    save_records(tmp_path / "pairs.jsonl", synthetic_pairs(4))
    config = DpoStageConfig(lora=LoraSettings(rank=8, alpha=16), batch_size=2, max_length=256)
    result = train_dpo(tmp_path / "pairs.jsonl", ModelRef(base="Qwen/Qwen3-8B"), tmp_path / "dpo", config)
    assert result.remote and result.remote.startswith("tinker://")
    assert rows(tmp_path / "dpo")[0]["dpo_loss"] == pytest.approx(math.log(2), abs=0.05)


def test_pipeline_runs_every_training_stage_on_tinker(
    key: None, tiny_model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prompts -> pairs -> dpo -> introspect -> sft with sampler=tinker trainer=tinker, on the fake service:
    introspection samples the DPO weights, SFT continues the DPO state, each model.json names its
    tinker:// weights."""
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
    dpo = ModelRef.load(tmp_path / "pirate_tiny" / "dpo" / "model.json")
    sft = ModelRef.load(tmp_path / "pirate_tiny" / "sft" / "model.json")
    assert dpo.remote == "tinker://run-1/sampler_weights/dpo-final"
    assert sft.remote == "tinker://run-2/sampler_weights/sft-final"
    made = [(name, kwargs) for name, kwargs in service.calls if name.startswith("create")]
    assert ("create_sampling_client", {"model_path": dpo.remote, "base_model": None}) in made  # introspection
    assert ("create_training_client_from_state", {"path": "tinker://run-1/weights/dpo-final"}) in made


def test_preflight_refuses_what_tinker_cannot_train(key: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from octrain.core.compose import compose_config
    from octrain.trainers.tinker_common import check_tinker_run

    service = FakeService([TINY])
    monkeypatch.setattr(tinker_common, "SERVICE_FACTORY", lambda options: service)
    tinker_common.forget_sessions()
    base = ["trainer=tinker", "sampler=tinker"]
    for override, message in [
        ("sft.mode=paper", "sequentially only"),
        ("sft.sft_weight=0.25", "cannot be weighted"),
        ("sft.export_merged=true", "export_merged"),
        ("dpo.lora.dropout=0.1", "no dropout"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_tinker_run(compose_config("pirate_tiny", [*base, override]))
    assert service.calls == []  # refused before any request
    check_tinker_run(compose_config("pirate_tiny", base))
    assert [name for name, _ in service.calls] == ["get_server_capabilities"]
    tinker_common.forget_sessions()


def test_the_tinker_recipe_uses_a_model_the_sdk_documents() -> None:
    from tinker.lib.public_interfaces import service_client, training_client

    from octrain.core.compose import compose_config
    from octrain.core.config import SamplerBackend, TrainerBackend

    config = compose_config("pirate_tinker")
    assert config.sampler.backend is SamplerBackend.tinker and config.trainer.backend is TrainerBackend.tinker
    documented = "".join(Path(module.__file__).read_text() for module in (service_client, training_client))
    for model in (config.teacher.path, config.student.path):
        assert f'"{model}"' in documented  # the SDK's own examples name it (Qwen/Qwen3-8B)
