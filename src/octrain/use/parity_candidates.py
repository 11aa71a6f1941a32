"""The models an export is held to the trained model as: each kind of export, read back from its files.

A candidate (:class:`Candidate`) is what the parity check (:mod:`octrain.use.parity_check`) compares
with the trained model's :class:`~octrain.use.parity_reference.Reference`: a tokenizer with its chat
template, the tokens it stops at, the settings it answers with, and a model to run. Each is read back
from what an export wrote, by transformers alone, as a program without octrain would read it: merged
weights (:func:`hf_candidate`), an adapter directory on its base (:func:`adapter_candidate`), or a
GGUF file dequantized by transformers' GGUF loader, with its Ollama Modelfile (:func:`gguf_candidate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from octrain.use.parity_forward import check_device, quiet_loading
from octrain.use.parity_reference import answer_settings


@dataclasses.dataclass
class Candidate:
    """A model to hold to a :class:`~octrain.use.parity_reference.Reference`.

    Attributes:
        description: how messages name it (``merged weights in exports/p (bfloat16)``).
        precision: a key of :data:`~octrain.use.parity_reference.TOLERANCES` (how its weights are stored).
        tokenizer: its tokenizer, chat template included.
        model: a causal LM (``model(input_ids).logits``), or None to check the files only.
        stop_ids: the ids it stops at.
        generation: its :data:`~octrain.use.parity_reference.ANSWER_SETTINGS` where it has a
            transformers generation config, else None (nothing to compare).
        renderings: other ways it renders a conversation into prompt text, by name (an Ollama
            Modelfile's TEMPLATE), each held to the reference as ``tokenizer``'s chat template is.
        settings: other answer settings to compare with ``expected_settings`` (a Modelfile's
            PARAMETERs), by name.
        expected_settings: what ``settings`` must be.
    """

    description: str
    precision: str
    tokenizer: Any
    model: Any
    stop_ids: frozenset[int]
    generation: dict[str, Any] | None = None
    renderings: dict[str, Any] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    expected_settings: dict[str, Any] = dataclasses.field(default_factory=dict)


def hf_candidate(directory: str | Path, *, description: str) -> Candidate:
    """A transformers checkpoint directory (merged weights): its weights as stored, computed in float32.

    Computing in float32 holds the stored weights to the reference, as a GGUF is (transformers
    dequantizes it): the tolerance is for the rounding of the weights
    (:data:`~octrain.use.parity_reference.TOLERANCES`, by the stored dtype), not for the arithmetic
    of whatever runs them later (bf16 arithmetic on the demo run moves logits by up to 1.6, beside
    1.2 for bf16 weights alone).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from octrain.use.gguf_export import stop_ids_of

    stored = getattr(AutoConfig.from_pretrained(directory), "dtype", None)
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(check_device()).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return Candidate(
        description=description,
        precision=str(stored or "float32").removeprefix("torch."),
        tokenizer=tokenizer,
        model=model,
        stop_ids=frozenset(stop_ids_of(model.generation_config, tokenizer)),
        generation=answer_settings(model.generation_config),
    )


def adapter_candidate(directory: str | Path, *, base: str, description: str) -> Candidate:
    """A PEFT adapter directory on ``base`` (a directory or a Hub id), in float32.

    ``base`` is given rather than read from ``adapter_config.json``: an export may name a Hub id
    there that this machine has not downloaded, while the check needs the weights the adapter
    was trained on (whether the Hub id names the same weights is the user's word).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from octrain.use.gguf_export import stop_ids_of

    with quiet_loading():
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(directory)).to(check_device()).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    generation_config = model.base_model.model.generation_config
    return Candidate(
        description=description,
        precision="float32",
        tokenizer=tokenizer,
        model=model,
        stop_ids=frozenset(stop_ids_of(generation_config, tokenizer)),
        generation=answer_settings(generation_config),
    )


def gguf_candidate(
    gguf_file: str | Path,
    *,
    description: str,
    modelfile: str | Path | None = None,
    expected_settings: Mapping[str, Any] | None = None,
) -> Candidate:
    """A GGUF file as transformers reads it back (dequantized), with its Ollama Modelfile when given.

    The stop tokens are the file's eos and eot ids plus the Modelfile's ``stop`` parameters; with
    a Modelfile, prompts are rendered through its TEMPLATE (:mod:`octrain.use.ollama`) as well as
    through the file's own Jinja template (what llama.cpp uses), and its PARAMETERs are compared
    with ``expected_settings``.
    """
    from octrain.use.gguf_export import load_gguf, read_metadata
    from octrain.use.ollama import read_modelfile

    gguf_file = Path(gguf_file)
    metadata = read_metadata(gguf_file)
    with quiet_loading():
        model, tokenizer = load_gguf(gguf_file)
    model = model.to(check_device())
    stops = {
        int(metadata[key])
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
        if metadata.get(key) is not None
    }
    candidate = Candidate(
        description=description,
        precision=_gguf_precision(metadata),
        tokenizer=tokenizer,
        model=model,
        stop_ids=frozenset(stops),
    )
    sampling_keys = {
        "temperature": "general.sampling.temp",
        "top_p": "general.sampling.top_p",
        "min_p": "general.sampling.min_p",
        "repetition_penalty": "general.sampling.penalty_repeat",
    }
    for ours, key in sampling_keys.items():
        if ours in (expected_settings or {}):
            # float32 in the file: compared to six digits
            candidate.settings[f"{key} (GGUF)"] = round(float(metadata.get(key, float("nan"))), 6)
            candidate.expected_settings[f"{key} (GGUF)"] = round(float(expected_settings[ours]), 6)
    if modelfile is not None:
        parsed = read_modelfile(Path(modelfile))
        vocab = tokenizer.get_vocab()
        candidate.stop_ids = frozenset(stops | {vocab[text] for text in parsed.stops if text in vocab})
        candidate.renderings = {"the Modelfile's TEMPLATE": parsed.render}
        candidate.settings.update({f"{key} (Modelfile)": value for key, value in parsed.settings.items()})
        candidate.expected_settings.update(
            {f"{key} (Modelfile)": float(value) for key, value in (expected_settings or {}).items()}
        )
        if parsed.from_file != gguf_file.name:
            candidate.settings["FROM"] = parsed.from_file
            candidate.expected_settings["FROM"] = gguf_file.name
    return candidate


def _gguf_precision(metadata: Mapping[str, Any]) -> str:
    from gguf import LlamaFileType

    file_type = metadata.get("general.file_type")
    names = {
        int(LlamaFileType.ALL_F32): "f32",
        int(LlamaFileType.MOSTLY_F16): "f16",
        int(LlamaFileType.MOSTLY_BF16): "bf16",
        int(LlamaFileType.MOSTLY_Q8_0): "q8_0",
    }
    if file_type not in names:
        raise ValueError(f"no parity tolerance for a GGUF of file type {file_type}")
    return names[int(file_type)]
