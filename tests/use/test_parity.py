"""The parity check on the tiny trained run: the reference, and each kind of difference it names.

Each difference is made the way it would happen by mistake (a chat template edited, a stop token
dropped from generation_config.json, a merge missing from tokenizer.json, the adapter left out or a
weight damaged), in a real merged export on disk, and the check must name that difference and no
other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from octrain.core.errors import OctrainError
from octrain.use import parity
from octrain.use.export import export_merged
from octrain.use.model_choice import choose_model


@pytest.fixture(scope="module")
def tiny_reference(trained_tiny_root: Path) -> parity.Reference:
    return parity.reference_of(choose_model("pirate_tiny/sft", run_root=trained_tiny_root))


@pytest.fixture(scope="module")
def merged_dir(trained_tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 merged export of the tiny run, unchecked (the tests check it themselves); read-only."""
    target = tmp_path_factory.mktemp("parity") / "merged"
    export_merged(choose_model("pirate_tiny/sft", run_root=trained_tiny_root), target, check=False)
    return target


def _copy(merged_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "merged"
    shutil.copytree(merged_dir, copy)
    return copy


def _check(directory: Path, reference: parity.Reference, **options: float) -> parity.ParityReport:
    return parity.check(reference, parity.hf_candidate(directory, description=f"the export in {directory}"), **options)


def test_the_reference_is_the_trained_models_greedy_answer(
    tiny_reference: parity.Reference, trained_tiny_root: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from octrain.models.builtin import resolve_model_path

    assert len(tiny_reference.prompts) == len(parity.PARITY_PROMPTS)
    assert tiny_reference.stop_tokens == {2: "<|im_end|>", 0: "<|endoftext|>"}  # generation_config's eos ids
    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(chosen.ref.base), dtype=torch.float32)
    trained = PeftModel.from_pretrained(base, chosen.ref.adapter).eval()
    for prompt in tiny_reference.prompts:
        assert prompt.text.endswith("<|im_start|>assistant\n") and "system" not in prompt.text
        assert 0 < len(prompt.tokens) <= parity.NEW_TOKENS
        assert len(prompt.margins) == len(prompt.tokens) == prompt.logits.shape[0]
        with torch.no_grad():
            logits = trained(torch.tensor([[*prompt.prompt_ids, *prompt.tokens]])).logits[
                0, len(prompt.prompt_ids) - 1 : -1
            ]
        # Teacher-forced, the trained model's top token is the answer's wherever it leads.
        leads = torch.tensor(prompt.margins) > 0
        assert (logits.argmax(-1) == torch.tensor(prompt.tokens))[leads].all()
        top2 = logits.topk(2, dim=-1).values
        assert torch.allclose((top2[:, 0] - top2[:, 1])[leads], torch.tensor(prompt.margins)[leads], atol=1e-4)


def test_a_faithful_export_passes_with_every_position_checked(
    tiny_reference: parity.Reference, merged_dir: Path
) -> None:
    report = _check(merged_dir, tiny_reference)
    assert report.ok, report.differences
    # float32 merge against float32 PEFT: only the order of operations differs (~1e-7 here).
    assert report.max_logit_diff is not None and report.max_logit_diff < 1e-4
    assert report.tolerance == tiny_reference.tolerance("float32") == 3e-4 * tiny_reference.logit_scale
    assert report.checked == report.positions - sum(
        margin <= report.tolerance for prompt in tiny_reference.prompts for margin in prompt.margins
    )
    assert report.checked > report.positions // 2 and report.mismatched == 0
    assert report.summary().startswith("parity: answers as the trained model does;")
    report.raise_if_different()  # nothing to raise


def test_a_different_chat_template_is_named(tiny_reference: parity.Reference, merged_dir: Path, tmp_path: Path) -> None:
    copy = _copy(merged_dir, tmp_path)
    template = copy / "chat_template.jinja"
    template.write_text(template.read_text().replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n\\n'"))
    report = _check(copy, tiny_reference)
    assert not report.ok
    assert report.differences == (
        "chat template: prompt 1 renders differently through its chat template at character 62: trained '', "
        "exported '\\n' (and 3 more of the 4 prompts)",
    )
    with pytest.raises(parity.ParityError, match="does not answer as the trained model does: chat template") as caught:
        report.raise_if_different()
    assert isinstance(caught.value, OctrainError)  # the CLI prints it as one line


def test_different_stop_tokens_and_sampling_are_named(
    tiny_reference: parity.Reference, merged_dir: Path, tmp_path: Path
) -> None:
    copy = _copy(merged_dir, tmp_path)
    path = copy / "generation_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "eos_token_id": 2, "do_sample": True, "temperature": 0.6}))
    report = _check(copy, tiny_reference)
    assert [line.split(":")[0] for line in report.differences] == ["generation config", "generation config"]
    assert (
        "stops at [2 '<|im_end|>'] where the trained model stops at [0 '<|endoftext|>', 2 '<|im_end|>']"
        in (report.differences[0])
    )
    assert "do_sample True (trained: False), temperature 0.6 (trained: 1.0)" in report.differences[1]
    assert report.mismatched == 0  # the weights are right, and the check says so


def test_a_different_tokenizer_is_named(tiny_reference: parity.Reference, merged_dir: Path, tmp_path: Path) -> None:
    copy = _copy(merged_dir, tmp_path)
    path = copy / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    # Drop the merge that makes the first prompt's "Who" (or its first merge): that text then splits in two.
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][1:]
    path.write_text(json.dumps(tokenizer))
    report = _check(copy, tiny_reference)
    assert report.differences and all(line.startswith("tokenizer: ") for line in report.differences), report.differences
    assert "first difference at token" in report.differences[0]


def test_weights_that_answer_differently_are_named(
    tiny_reference: parity.Reference, merged_dir: Path, tmp_path: Path, trained_tiny_root: Path
) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    copy = _copy(merged_dir, tmp_path)
    weights = load_file(str(copy / "model.safetensors"))
    # A damaged export: the last layer's MLP output written as zeros.
    weights["model.layers.1.mlp.down_proj.weight"] = torch.zeros_like(weights["model.layers.1.mlp.down_proj.weight"])
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    report = _check(copy, tiny_reference)
    assert report.differences and report.differences[0].startswith("tokens: prompt ")
    assert report.mismatched > 0 and "by a margin of" in report.differences[0]

    # The base model without the adapter: the character is missing, and the check sees it.
    from octrain.models.builtin import resolve_model_path

    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    base = _check(Path(resolve_model_path(chosen.ref.base)), tiny_reference)
    assert any(line.startswith("tokens:") for line in base.differences), base.differences


def test_answers_as_text_are_held_to_their_firm_prefix(tiny_reference: parity.Reference) -> None:
    answers = [prompt.answer for prompt in tiny_reference.prompts]
    assert parity.check_texts(tiny_reference, answers, tolerance=0.0).ok
    wrong = ["Arr, a different answer entirely.", *answers[1:]]
    report = parity.check_texts(tiny_reference, wrong, tolerance=0.0)
    assert not report.ok and report.differences[0].startswith("tokens: answer 1 at character 0")
    # With a tolerance above every margin, no token is firm: any continuation is allowed.
    above = max(margin for prompt in tiny_reference.prompts for margin in prompt.margins) + 1
    assert parity.check_texts(tiny_reference, wrong, tolerance=above).ok


def test_a_base_model_with_no_adapter_is_its_own_reference(
    tiny_reference: parity.Reference, trained_tiny_root: Path
) -> None:
    """What ``octrain serve`` holds a served teacher to: the base's greedy answers, no adapter on it."""
    import torch
    from transformers import AutoModelForCausalLM

    from octrain.models.builtin import resolve_model_path
    from octrain.use.model_choice import base_of

    chosen = base_of(choose_model("pirate_tiny/sft", run_root=trained_tiny_root))
    reference = parity.reference_of(chosen)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(chosen.ref.base), dtype=torch.float32).eval()
    for prompt, trained in zip(reference.prompts, tiny_reference.prompts, strict=True):
        with torch.no_grad():
            whole = torch.tensor([[*prompt.prompt_ids, *prompt.tokens]])
            logits = base(whole).logits[0, len(prompt.prompt_ids) - 1 : -1]
        assert torch.allclose(logits, prompt.logits, atol=1e-4)
        assert prompt.prompt_ids == trained.prompt_ids
    # The adapter moved the answers: the base's reference is not the trained model's under another name.
    assert any(
        mine.tokens != theirs.tokens or not torch.allclose(mine.logits, theirs.logits, atol=1e-3)
        for mine, theirs in zip(reference.prompts, tiny_reference.prompts, strict=True)
    )
