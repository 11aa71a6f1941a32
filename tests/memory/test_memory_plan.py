"""The memory plan: shapes counted right, the formulas it rests on, and advice that really helps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from octrain.core.compose import compose_config
from octrain.core.config import ModelRole, OctrainConfig, StageName
from octrain.core.errors import ConfigError
from octrain.core.layout import CONFIG_FILE, save_config
from octrain.core.paths import configs_dir
from octrain.memory.engines import engine_need
from octrain.memory.lora_training import activation_bytes_per_layer_token
from octrain.memory.needs import CARDS, Need, card_gib
from octrain.memory.planner import plan
from octrain.memory.report import config_from_target, memory_report
from octrain.memory.shapes import KNOWN_ARCHITECTURES, Architecture, architecture_from_config, architecture_of
from octrain.memory.training import measure_saved_activations, training_need

QWEN3_4B = "Qwen/Qwen3-4B-Instruct-2507"


def test_parameter_count_from_shapes_is_the_tiny_models_real_count(tiny_model_path: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    real = sum(p.numel() for p in model.parameters())  # tied weights appear once
    assert architecture_of(tiny_model_path).parameters == real
    assert architecture_of("builtin:tiny-qwen3").parameters == real


@pytest.mark.parametrize(
    ("name", "published"),
    [
        (QWEN3_4B, 4.0e9),
        ("Qwen/Qwen3-32B", 32.8e9),
        ("Qwen/Qwen3-8B", 8.2e9),
        ("meta-llama/Llama-3.1-8B-Instruct", 8.03e9),
        ("Qwen/Qwen2.5-7B-Instruct", 7.62e9),
    ],
)
def test_parameter_count_of_each_shipped_shape_matches_a_model_built_on_meta(name: str, published: float) -> None:
    """The built-in shapes, instantiated on the meta device (no memory), count what the table says."""
    import torch
    from transformers import LlamaConfig, Qwen3Config, Qwen3ForCausalLM
    from transformers.models.llama import LlamaForCausalLM

    arch = KNOWN_ARCHITECTURES[name]
    shape = {
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.kv_heads,
        "head_dim": arch.head_dim,
        "vocab_size": arch.vocab_size,
        "tie_word_embeddings": arch.tied_embeddings,
    }
    with torch.device("meta"):
        if arch.qk_norm:
            model = Qwen3ForCausalLM(Qwen3Config(**shape))
        elif arch.qkv_bias:  # Qwen2: Llama's layout with biases on q, k and v
            from transformers import Qwen2Config, Qwen2ForCausalLM

            model = Qwen2ForCausalLM(Qwen2Config(**shape))
        else:
            model = LlamaForCausalLM(LlamaConfig(**shape))
    assert sum(p.numel() for p in model.parameters()) == arch.parameters
    assert abs(arch.parameters - published) / published < 0.01  # the model card's rounded total


def test_lora_parameter_count_matches_peft_on_the_4b_shape() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    arch = KNOWN_ARCHITECTURES[QWEN3_4B]
    config = Qwen3Config(
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=2,  # LoRA's count is per layer: two layers keep PEFT's wrapping quick
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        head_dim=arch.head_dim,
        vocab_size=1024,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = get_peft_model(
            Qwen3ForCausalLM(config), LoraConfig(r=64, target_modules="all-linear", task_type="CAUSAL_LM")
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable * arch.layers // 2 == arch.lora_parameters(64)


def test_kv_cache_per_token_is_the_hand_computed_figure() -> None:
    # Qwen3-4B: K and V, 36 layers, 8 KV heads of 128 values, 2 bytes each.
    assert KNOWN_ARCHITECTURES[QWEN3_4B].kv_bytes_per_token() == 2 * 36 * 8 * 128 * 2 == 147_456
    # Qwen3-32B: 64 layers: a max_model_len of 8,192 tokens is 2 GiB of KV.
    assert KNOWN_ARCHITECTURES["Qwen/Qwen3-32B"].kv_bytes_per_token() * 8192 == 2 * 1024**3


def test_activation_formula_predicts_a_shape_it_was_not_fitted_on() -> None:
    """Measured on the CPU, like the calibration, on a small shape far from the fitted ones."""
    shape = {"hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4, "num_key_value_heads": 2}
    measured = measure_saved_activations(shape, tokens=64, rank=8)
    arch = Architecture("small", 256, 768, 1, 4, 2, 128, 256, True, qk_norm=True)
    predicted = activation_bytes_per_layer_token(arch, 8, ["all-linear"])
    assert abs(predicted - measured) / measured < 0.03


def test_activation_formula_reproduces_the_4b_student_figure() -> None:
    """5.98 MiB per token without checkpointing, where an earlier measurement found ~6.2 MiB."""
    arch = KNOWN_ARCHITECTURES[QWEN3_4B]
    per_token = arch.layers * activation_bytes_per_layer_token(arch, 64, ["all-linear"])
    assert 5.8 < per_token / 1024**2 < 6.3


@pytest.mark.parametrize("stage", [StageName.dpo, StageName.sft])
def test_gradient_checkpointing_needs_far_less_memory(stage: StageName) -> None:
    on = training_need(compose_config("pirate_mini", ["trainer.trl.gradient_checkpointing=true"]), stage)
    off = training_need(compose_config("pirate_mini", ["trainer.trl.gradient_checkpointing=false"]), stage)
    assert on.parts["weights"] == off.parts["weights"]
    assert on.parts["activations"] * 10 < off.parts["activations"]
    assert on.comfortable < 20 < 55 < off.comfortable  # ~14-15 GiB against ~60 (DPO) and ~83 (SFT)


def test_qlora_and_smaller_batches_need_less() -> None:
    base = training_need(compose_config("pirate_mini"), StageName.sft)
    qlora = training_need(compose_config("pirate_mini", ["trainer.trl.load_in_4bit=true"]), StageName.sft)
    single = training_need(compose_config("pirate_mini", ["trainer.trl.per_device_batch_size=1"]), StageName.sft)
    assert qlora.parts["weights"] < base.parts["weights"] / 1.8
    assert single.parts["activations"] == pytest.approx(base.parts["activations"] / 4)


def test_fp8_teacher_fits_an_80gb_card_where_bf16_leaves_little_kv_cache() -> None:
    fp8 = compose_config("pirate_mini")  # Qwen's published fp8 checkpoint, sized from its stored quantization
    assert (fp8.teacher.path, fp8.teacher.quantization) == ("Qwen/Qwen3-32B-FP8", None)
    bf16 = compose_config("pirate_mini", ["model@teacher=qwen3_32b"])
    online = compose_config("pirate_mini", ["model@teacher=qwen3_32b", "teacher.quantization=fp8"])
    need_online = engine_need(online, ModelRole.teacher, stage="pairs-teacher", max_new_tokens=1024, card=80)
    need_fp8 = engine_need(fp8, ModelRole.teacher, stage="pairs-teacher", max_new_tokens=1024, card=80)
    need_bf16 = engine_need(bf16, ModelRole.teacher, stage="pairs-teacher", max_new_tokens=1024, card=80)
    assert need_fp8.judge(80).status == "fits"
    assert need_bf16.judge(80).status == "tight"  # starts, but batches a few sequences at a time
    # bf16: 61 GiB; fp8: 32 GiB (vLLM leaves the embedding and the output head in bf16)
    assert need_bf16.parts["weights"] > 60 > 33 > need_fp8.parts["weights"] > 30
    assert need_online.parts["weights"] == need_fp8.parts["weights"]  # the same fp8 weights either way
    assert need_bf16.judge(141).status == "fits"
    # Where the bf16 checkpoint is tight, the advice is the published fp8 one, not vLLM's online fp8.
    prompts = next(row for row in plan(bf16, (80,)) if row.stage == "prompts")  # the teacher's engine
    assert "model@teacher=qwen3_32b_fp8" in prompts.advice[80]


def test_advice_appears_where_a_stage_does_not_fit_and_the_advice_works() -> None:
    config = compose_config("pirate_mini", ["trainer.trl.gradient_checkpointing=false"])
    rows = {row.stage: row for row in plan(config, (48,)) if row.stage in ("sft", "pairs")}
    sft = rows["sft"]
    assert sft.verdicts[48].status == "no"
    assert sft.advice[48] == "`trainer.trl.gradient_checkpointing=true`"
    fixed = compose_config(
        "pirate_mini", ["trainer.trl.gradient_checkpointing=false", "trainer.trl.gradient_checkpointing=true"]
    )
    assert training_need(fixed, StageName.sft).judge(48).status == "fits"

    teacher = next(row for row in plan(compose_config("pirate_mini"), (24,)) if row.stage == "prompts")
    assert teacher.verdicts[24].status == "no"  # 32 GiB of fp8 weights on a 22 GiB card
    assert "tensor_parallel_size" in teacher.advice[24] and "model@teacher=qwen3_8b" in teacher.advice[24]


def test_the_report_reads_a_run_directorys_config(tmp_path: Path) -> None:
    config = compose_config("pirate_mini", ["stages=[dpo,sft]"])
    save_config(config, tmp_path / CONFIG_FILE)
    for target in (tmp_path, tmp_path / CONFIG_FILE):
        report = memory_report([str(target)], (24,), detail=True)
        assert "| dpo |" in report and "| sft |" in report and "| pairs |" not in report
        assert "- dpo, student Qwen3-4B-Instruct-2507" in report  # --detail: each row's parts
    assert config_from_target([str(tmp_path)]).stages == config.stages


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ([], "name one recipe"),
        (["+recipe=pirate_mini", "+recipe=pirate_tiny"], "name one recipe"),
        (["+recipe=no_such_recipe"], "unknown recipe"),
        (["+recipe=pirate_mini", "no_such_key=1"], "no_such_key"),
        (["no_such_directory"], "no config.yaml there"),
    ],
)
def test_what_the_report_cannot_read_is_a_config_error(target: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        memory_report(target)


def test_a_malformed_run_config_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("dpo: [unclosed\n")
    with pytest.raises(ConfigError, match=str(tmp_path / CONFIG_FILE)):
        memory_report([str(tmp_path)])


def test_cards_are_named_in_gb_and_judged_in_gib() -> None:
    assert [card_gib(card) for card in CARDS] == [22.0, 44.5, 79.2, 139.7]
    assert card_gib(40.5) == 40.5 and card_gib(12) == 12.0  # any other size is taken as GiB


def test_a_teacher_served_over_http_takes_no_memory_here() -> None:
    local = compose_config("pirate_mini", [])
    served = compose_config("pirate_mini", ["teacher.endpoint.base_url=http://gpu-node:8000/v1"])
    local_rows = [row.need.label for row in plan(local)]
    served_rows = [row.need.label for row in plan(served)]
    assert any("teacher" in label for label in local_rows)
    assert served_rows == [label for label in local_rows if "teacher" not in label]


GEMMA3_4B = "google/gemma-3-4b-it"
GLM45_AIR = "zai-org/GLM-4.5-Air"
# gemma-3-4b-it's config.json as the Hub serves it: its text_config names five fields and leaves the
# rest (heads, head_dim, vocabulary, tied embeddings) to transformers' Gemma3TextConfig defaults.
GEMMA3_4B_CONFIG_JSON = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "mm_tokens_per_image": 256,
    "text_config": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "torch_dtype": "bfloat16",
    "vision_config": {
        "hidden_size": 1152,
        "image_size": 896,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
        "vision_use_head": False,
    },
}
GLM45_AIR_CONFIG_JSON = {
    "architectures": ["Glm4MoeForCausalLM"],
    "model_type": "glm4_moe",
    "attention_bias": True,
    "head_dim": 128,
    "hidden_size": 4096,
    "intermediate_size": 10944,
    "moe_intermediate_size": 1408,
    "num_attention_heads": 96,
    "num_key_value_heads": 8,
    "num_hidden_layers": 46,
    "n_routed_experts": 128,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 1,
    "num_nextn_predict_layers": 1,
    "partial_rotary_factor": 0.5,
    "rope_theta": 1000000,
    "tie_word_embeddings": False,
    "use_qk_norm": False,
    "vocab_size": 151552,
}


def _counts(model: object, prefixes: tuple[str, ...]) -> list[int]:
    """Parameters of ``model`` (a torch module) whose names start with each prefix, in order."""
    named = list(model.named_parameters())  # type: ignore[attr-defined]
    return [sum(p.numel() for n, p in named if n.startswith(prefix)) for prefix in prefixes]


def test_gemma3_4b_shape_counts_what_transformers_builds_on_meta() -> None:
    """Language model, vision tower and projector each, against the published 4.3B and the Gemma 3 report."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from octrain.memory.shapes import GEMMA3_4B_VISION

    arch = KNOWN_ARCHITECTURES[GEMMA3_4B]
    text = {
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.kv_heads,
        "head_dim": arch.head_dim,
        "vocab_size": arch.vocab_size,
    }
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=GEMMA3_4B_VISION))
    language, vision, projector = _counts(
        model, ("model.language_model.", "model.vision_tower.", "model.multi_modal_projector.")
    )
    assert language + vision + projector == sum(p.numel() for p in model.parameters()) == arch.parameters
    assert vision + projector == arch.extra_parameters
    assert abs(arch.parameters - 4.3e9) / 4.3e9 < 0.01  # the model card's total
    # The Gemma 3 technical report's 4B row: vision encoder 417M, non-embedding 3,209M.
    assert round(vision / 1e6) == 417 and round((language - arch.embedding_parameters) / 1e6) == 3209


def test_glm45_air_shape_counts_what_transformers_builds_on_meta() -> None:
    """106B total and 12B active (without the embedding and the head), the MTP block left out as transformers does."""
    import torch
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    arch = KNOWN_ARCHITECTURES[GLM45_AIR]
    fields = {k: v for k, v in GLM45_AIR_CONFIG_JSON.items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = Glm4MoeForCausalLM(Glm4MoeConfig(**fields))
    built = sum(p.numel() for p in model.parameters())
    assert len(model.model.layers) == arch.layers == 46  # num_nextn_predict_layers=1 builds no 47th block
    assert abs(arch.parameters - built) / built < 0.01
    assert arch.parameters == built  # in fact to the parameter
    assert abs(arch.parameters - 106e9) / 106e9 < 0.01
    active = arch.active_parameters - arch.embedding_parameters
    assert abs(active - 12e9) / 12e9 < 0.02
    # The experts dominate: fp8 (vLLM's, or the published checkpoint) quantizes all but ~1.3B of it.
    assert arch.parameters - arch.layer_linear_parameters < 1.3e9


@pytest.mark.parametrize(
    ("name", "config_json"), [(GEMMA3_4B, GEMMA3_4B_CONFIG_JSON), (GLM45_AIR, GLM45_AIR_CONFIG_JSON)]
)
def test_a_downloaded_config_json_gives_the_tables_shape(name: str, config_json: dict, tmp_path: Path) -> None:
    """A model directory on disk is sized from its config.json, the same as from the built-in table."""
    (tmp_path / "config.json").write_text(json.dumps(config_json))
    from_disk = architecture_of(str(tmp_path))
    assert from_disk.source == str(tmp_path / "config.json")
    assert replace(from_disk, name=name, source="") == replace(KNOWN_ARCHITECTURES[name], source="")


@pytest.mark.parametrize(
    "config_json",
    [
        {"model_type": "qwen3_moe", "num_experts": 128, "moe_intermediate_size": 768},
        {"model_type": "mixtral", "num_local_experts": 8},
        {"model_type": "deepseek_v3", "n_routed_experts": 256, "q_lora_rank": 1536},  # attention of another shape
    ],
)
def test_mixtures_of_experts_other_than_glms_are_refused_not_miscounted(config_json: dict) -> None:
    dense = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 4, "num_attention_heads": 8}
    with pytest.raises(ConfigError, match="mixture of experts is not sized"):
        architecture_from_config({**dense, "vocab_size": 1000, **config_json}, name="moe", source="config.json")


def test_kv_cache_follows_the_attention_layers_alone() -> None:
    # GLM-4.5-Air: 46 layers of 8 KV heads of 128, however many experts; Gemma 3 4B: 34 layers of 4 x 256.
    assert KNOWN_ARCHITECTURES[GLM45_AIR].kv_bytes_per_token() == 2 * 46 * 8 * 128 * 2 == 188_416
    assert KNOWN_ARCHITECTURES[GEMMA3_4B].kv_bytes_per_token() == 2 * 34 * 4 * 256 * 2 == 139_264


def test_glm45_air_as_a_vllm_teacher_needs_several_gpus_or_fp8() -> None:
    """bf16 weights (~199 GiB) fit no single card; TP 4 on 80 GB cards, or the fp8 release on two, do."""
    local = compose_config("pirate_mini", ["model@teacher=glm45_air"])
    assert (local.teacher.path, local.teacher.endpoint.base_url) == (GLM45_AIR, None)

    def need(config: OctrainConfig, card: float) -> Need:
        return engine_need(config, ModelRole.teacher, stage="pairs-teacher", max_new_tokens=1024, card=card)

    one_gpu = need(local, 80)
    assert 195 < one_gpu.parts["weights"] < 202
    assert one_gpu.judge(80).status == one_gpu.judge(141).status == "no"
    tp4 = compose_config("pirate_mini", ["model@teacher=glm45_air", "sampler.vllm.tensor_parallel_size=4"])
    assert 48 < need(tp4, 80).parts["weights"] < 51 and need(tp4, 80).judge(80).status == "fits"
    fp8 = compose_config(
        "pirate_mini",
        ["model@teacher=glm45_air", "teacher.path=zai-org/GLM-4.5-Air-FP8", "sampler.vllm.tensor_parallel_size=2"],
    )
    assert need(fp8, 80).judge(80).status == "fits"  # ~50 GiB of fp8 weights on each of two cards
    rows = [row for row in plan(local, (80,)) if "teacher" in row.need.label]
    assert [row.stage for row in rows] == ["prompts", "pairs", "eval"]
    for row in rows:
        assert row.verdicts[80].status == "no"
        assert "tensor_parallel_size" in row.advice[80]  # every piece of advice is checked to fit


def test_the_served_glm45_air_takes_no_memory_here() -> None:
    served = compose_config("pirate_mini", ["model@teacher=glm45_air_served"])
    assert served.teacher.endpoint.base_url == "http://127.0.0.1:8000/v1"
    assert served.teacher.endpoint.model == served.teacher.path == GLM45_AIR
    assert [row for row in plan(served, (80,)) if "teacher" in row.need.label] == []


def test_gemma3_student_weights_include_its_vision_tower() -> None:
    config = compose_config("pirate_mini", ["model@student=gemma3_4b_it"])
    assert (config.student.path, config.student.assistant_name) == (GEMMA3_4B, "Gemma")
    dpo = training_need(config, StageName.dpo)
    assert dpo.parts["weights"] == pytest.approx(4_300_079_472 * 2 / 1024**3)  # ~8.0 GiB, 0.8 of it vision
    assert dpo.judge(24).status == "fits"


MODEL_PRESETS = sorted(p.stem for p in (configs_dir() / "model").glob("*.yaml"))


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_every_model_preset_composes_and_can_be_sized(preset: str) -> None:
    """Each configs/model file composes in both roles, and `octrain memory` knows its shape offline."""
    for role in ("teacher", "student"):
        config = compose_config("pirate_mini", [f"model@{role}={preset}"])
        assert config.model(ModelRole(role)).path
    path = config.student.path
    if path.startswith("builtin:"):
        return  # built or fetched on first use: sized from their own config.json (see the tests above)
    assert path in KNOWN_ARCHITECTURES
    assert architecture_of(config.student).parameters > 1e9


def test_on_policy_distillation_is_sized_as_itself_not_as_dpo() -> None:
    def need(*overrides: str) -> Need:
        return training_need(compose_config("pirate_mini", ["distill.method=sdft", *overrides]), StageName.dpo)

    plain = need()
    assert "on-policy distillation, 4 x 1024 tok" in plain.label and "teacher weights" not in plain.parts
    # Its own adapter and answer length: distill.sdft's, not dpo's.
    assert need("dpo.lora.rank=256").parts == plain.parts
    assert need("distill.sdft.lora.rank=128").parts["LoRA + AdamW"] > plain.parts["LoRA + AdamW"]
    # Both models' logits over every answer token (Qwen3's 151,936 entries): 4 answers x 1,024 tokens x 18 bytes.
    assert plain.parts["logits"] == pytest.approx(4 * 1024 * 151_936 * 18 / 2**30)
    assert need("distill.sdft.max_completion_length=512").parts["logits"] == pytest.approx(plain.parts["logits"] / 2)
    # A separate teacher sits frozen beside the student, in bf16.
    separate = need("distill.sdft.teacher_weights=teacher", "model@teacher=qwen3_8b")
    teacher = architecture_of(compose_config("pirate_mini", ["model@teacher=qwen3_8b"]).teacher)
    assert separate.parts["teacher weights"] == pytest.approx(teacher.parameters * 2 / 2**30)
    assert separate.comfortable > plain.comfortable + 15  # Qwen3-8B: ~15 GiB more


def test_advice_for_on_policy_distillation_names_its_own_settings_and_works() -> None:
    config = compose_config("pirate_mini", ["distill.method=sdft"])
    row = next(row for row in plan(config, (24,)) if row.stage == "dpo")
    assert row.verdicts[24].status != "fits"
    assert row.advice[24] == "`trainer.trl.per_device_batch_size=2`"
    fixed = compose_config("pirate_mini", ["distill.method=sdft", "trainer.trl.per_device_batch_size=2"])
    assert training_need(fixed, StageName.dpo).judge(24).status == "fits"
