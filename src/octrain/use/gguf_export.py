"""A transformers chat model as one GGUF file, the format llama.cpp and Ollama load.

The ``gguf`` package (llama.cpp's own Python library) reads and writes the format but has no
converter from Hugging Face checkpoints; llama.cpp's ``convert_hf_to_gguf.py`` is not on PyPI.
This module is that converter for the architectures octrain trains, written from the format
itself and kept to what those models need:

* ``llama`` (``LlamaForCausalLM``: SmolLM2, Llama 2/3 without rope scaling) and ``qwen3``
  (``Qwen3ForCausalLM``: the tiny test model and the paper's Qwen3 students). Anything else,
  and any setting of these that the file would not carry (rope scaling, attention biases,
  sliding windows), is refused with a :class:`~octrain.core.errors.ConfigError` naming it,
  rather than written as a file that loads and answers differently.
* Tensor names through ``gguf``'s own map (:func:`gguf.get_tensor_name_map`); the Llama
  architecture's query and key weights are permuted the way llama.cpp's converter does
  (:func:`llama_permute`: llama.cpp applies rotary embeddings to interleaved pairs, transformers
  to the two halves of each head), which transformers' GGUF loader undoes. Qwen3 uses the
  halves convention in llama.cpp too and is written as is.
* Weights in ``f32``, ``f16``, ``bf16`` or ``q8_0`` (:data:`GGUF_TYPES`), quantized with
  ``gguf.quants`` from the float32 fold, so the only rounding is the format's. Norms and other
  1-D tensors stay float32, and a matrix whose rows are not a whole number of Q8_0 blocks
  falls back to f16, as llama.cpp's converter does.
* The tokenizer as llama.cpp's byte-level BPE reads it (``tokenizer.ggml.model = "gpt2"``):
  every token in id order with its type (added special tokens are CONTROL, other added tokens
  USER_DEFINED, holes in the id range UNUSED ``[PADn]`` entries as llama.cpp writes them), the
  merges, the bos/eos/pad/unk ids, whether a BOS/EOS is added, the pre-tokenizer's name
  (:func:`pre_tokenizer_name`) and the chat template. transformers rebuilds its tokenizer from
  exactly these fields (``AutoTokenizer.from_pretrained(dir, gguf_file=...)``).

The model's config goes in under llama.cpp's key names. transformers' GGUF loader reads most of
them back; for Qwen3 it does not read ``attention.key_length`` (the head size), which
:func:`load_gguf` puts back (see there).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from octrain.core.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

# --gguf-type: the weights' encoding, as llama.cpp names it.
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")
DEFAULT_GGUF_TYPE = "f16"
# transformers' config.model_type -> llama.cpp's architecture name.
ARCHITECTURES = {"llama": "llama", "qwen3": "qwen3"}
Q8_0_BLOCK = 32  # values per Q8_0 block: a row must be a whole number of them

# The tokenizers.json pre-tokenizers octrain can name for llama.cpp, by llama.cpp's name.
PRE_TOKENIZERS = ("gpt-2", "smollm", "qwen2")
# transformers' {% generation %} markers (assistant-only loss masks) mean nothing to llama.cpp's
# template engine; removing them does not change what the template renders.
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


@dataclasses.dataclass(frozen=True)
class GgufSummary:
    """What :func:`write_gguf` wrote.

    Attributes:
        path: the file.
        architecture: llama.cpp's name for it (``llama``, ``qwen3``).
        gguf_type: the weights' encoding (one of :data:`GGUF_TYPES`).
        tensor_types: how many tensors went in per ggml type (``{"F32": 61, "Q8_0": 211}``).
        eos_token_id / eot_token_id: the stop tokens the file names (``eot`` None when there is
            no second one).
    """

    path: Path
    architecture: str
    gguf_type: str
    tensor_types: dict[str, int]
    eos_token_id: int | None
    eot_token_id: int | None


def architecture_of(config: Any) -> str:
    """llama.cpp's architecture name for a transformers config; ConfigError for one not supported,
    or for a setting of a supported one that the file could not carry."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        supported = ", ".join(f"{name} ({arch})" for name, arch in ARCHITECTURES.items())
        raise ConfigError(f"GGUF export supports the {supported} architectures; this model is {model_type!r}")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(
            f"GGUF export: rope scaling {rope.get('rope_type')!r} is not written by octrain's converter "
            "(only the plain rotary embedding is)"
        )
    for flag in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if getattr(config, flag, False):
            raise ConfigError(f"GGUF export: {model_type} with {flag}=True is not written by octrain's converter")
    return ARCHITECTURES[model_type]


def _rope_parameters(config: Any) -> dict[str, Any]:
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return dict(parameters)


def _rope_theta(config: Any) -> float:
    theta = _rope_parameters(config).get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ConfigError("GGUF export: the config states no rope_theta")
    return float(theta)


def head_dim_of(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def llama_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from transformers' rotary layout (two halves) to llama.cpp's
    (interleaved pairs), as llama.cpp's converter does for Llama's q_proj and k_proj.

    ``n_head`` is the number of heads the rows hold (the key/value heads for k_proj).
    transformers' GGUF loader applies the inverse (``LlamaTensorProcessor``).
    """
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def pre_tokenizer_name(backend: Mapping[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer of a ``tokenizer.json`` (parsed), read from its structure.

    llama.cpp splits text before BPE with a regex set chosen by ``tokenizer.ggml.pre``; the
    name must describe what the tokenizer the model was trained with does:

    * ``gpt-2``: a lone ``ByteLevel`` with its regex (GPT-2's split); octrain's tiny model, and
      SmolLM2 as octrain's cached copy has it;
    * ``smollm``: single digits split off first (``Digits``), then GPT-2's split; SmolLM2 from the Hub;
    * ``qwen2``: Qwen2/Qwen3's split regex, then ``ByteLevel`` without a regex.

    Raises:
        ConfigError: any other pre-tokenizer (named), rather than a file that splits text differently.
    """
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT

    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if (
        kinds == ["Split", "ByteLevel"]
        and steps[0].get("pattern", {}).get("Regex") == QWEN2_SPLIT
        and not steps[1].get("use_regex", True)
    ):
        return "qwen2"
    raise ConfigError(
        f"GGUF export: the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) is none that octrain can name for "
        f"llama.cpp (supported: {', '.join(PRE_TOKENIZERS)})"
    )


def gguf_chat_template(template: str) -> str:
    """The chat template as the GGUF carries it: transformers' ``{% generation %}`` markers removed."""
    return _GENERATION_TAG.sub("", template)


@dataclasses.dataclass(frozen=True)
class TokenizerFields:
    """The tokenizer as llama.cpp's ``gpt2`` (byte-level BPE) vocabulary stores it."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos / eos / unk / pad -> id
    add_bos: bool
    add_eos: bool
    chat_template: str


def tokenizer_fields(tokenizer: Any, vocab_size: int) -> TokenizerFields:
    """Read ``tokenizer`` (a transformers fast tokenizer) into the fields a GGUF stores.

    ``vocab_size`` is the model's embedding size: the token list has exactly that many entries
    (llama.cpp sizes the vocabulary from it), ids the tokenizer does not use written as UNUSED
    ``[PADn]`` placeholders, as llama.cpp's converter writes them.

    Raises:
        ConfigError: not a byte-level BPE tokenizer, a pre-tokenizer :func:`pre_tokenizer_name`
            cannot name, more tokens than the embedding has rows, or no chat template.
    """
    from gguf import TokenType

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model", {})
    decoder = backend.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise ConfigError(
            f"GGUF export supports byte-level BPE tokenizers (GPT-2 style); this one is "
            f"{model.get('type')} with a {decoder.get('type')} decoder"
        )
    pre = pre_tokenizer_name(backend)
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise ConfigError(
            f"GGUF export: the tokenizer has ids up to {max(vocab.values())}, "
            f"beyond the model's {vocab_size} embeddings"
        )
    by_id = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(int(TokenType.UNUSED))
        elif index in added:
            # An added token is matched whole in the raw text, so llama.cpp wants its text, not its byte spelling.
            tokens.append(added[index].content)
            types.append(int(TokenType.CONTROL if added[index].special else TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[index])
            types.append(int(TokenType.NORMAL))
    merges = []
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        # llama.cpp separates a pair with a space; a space inside a part is spelled as its byte-level character.
        merges.append(" ".join(part.replace(" ", chr(ord(" ") + 256)) for part in (left, right)))
    special_ids = {
        kind: token_id
        for kind, token_id in (
            ("bos", tokenizer.bos_token_id),
            ("eos", tokenizer.eos_token_id),
            ("unk", tokenizer.unk_token_id),
            ("pad", tokenizer.pad_token_id),
        )
        if token_id is not None
    }
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    marked = tokenizer("a", add_special_tokens=True)["input_ids"]
    add_bos = len(marked) > len(plain) and marked[0] == tokenizer.bos_token_id
    add_eos = len(marked) > len(plain) and marked[-1] == tokenizer.eos_token_id
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise ConfigError("GGUF export: the tokenizer has no chat template (a chat model needs one)")
    return TokenizerFields(pre, tokens, types, merges, special_ids, add_bos, add_eos, gguf_chat_template(template))


def _hyperparameters(writer: Any, config: Any, arch: str) -> None:
    """The model's shape under llama.cpp's keys (``{arch}.block_count`` and so on)."""
    head_dim = head_dim_of(config)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(int(config.vocab_size))


def _float_tensors(model: Any, arch: str) -> Iterator[tuple[str, np.ndarray]]:
    """Each weight as ``(GGUF name, float32 array)``, in transformers' layout but for the Llama
    query/key permutation; a tied output projection is left out (llama.cpp reuses the embedding)."""
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(_model_arch(arch), int(config.num_hidden_layers))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise ConfigError(f"GGUF export: no {arch} tensor corresponds to {hf_name}")
        data = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
        if arch == "llama" and stem.endswith("self_attn.q_proj"):
            data = llama_permute(data, n_head)
        elif arch == "llama" and stem.endswith("self_attn.k_proj"):
            data = llama_permute(data, n_kv)
        yield f"{gguf_name}.{suffix}", data


def _model_arch(arch: str) -> Any:
    import gguf

    return {"llama": gguf.MODEL_ARCH.LLAMA, "qwen3": gguf.MODEL_ARCH.QWEN3}[arch]


def _encode(data: np.ndarray, gguf_type: str) -> tuple[np.ndarray, Any]:
    """``data`` (float32) in the file's encoding: the array to write and its ggml type."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if data.ndim < 2 or gguf_type == "f32":
        return data.astype(np.float32, copy=False), Q.F32
    if gguf_type == "f16" or (gguf_type == "q8_0" and data.shape[-1] % Q8_0_BLOCK):
        return data.astype(np.float16), Q.F16
    qtype = {"bf16": Q.BF16, "q8_0": Q.Q8_0}[gguf_type]
    return quants.quantize(data, qtype), qtype


def _file_type(gguf_type: str) -> int:
    from gguf import LlamaFileType

    return int(
        {
            "f32": LlamaFileType.ALL_F32,
            "f16": LlamaFileType.MOSTLY_F16,
            "bf16": LlamaFileType.MOSTLY_BF16,
            "q8_0": LlamaFileType.MOSTLY_Q8_0,
        }[gguf_type]
    )


def stop_ids_of(generation_config: Any, tokenizer: Any) -> list[int]:
    """The tokens generation stops at: the generation config's eos ids, else the tokenizer's eos."""
    eos = getattr(generation_config, "eos_token_id", None)
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if not ids and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    return [int(token_id) for token_id in ids]


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: str | Path,
    *,
    gguf_type: str = DEFAULT_GGUF_TYPE,
    name: str,
    description: str | None = None,
    sampling: Mapping[str, float] | None = None,
) -> GgufSummary:
    """Write ``model`` (a transformers causal LM, any dtype) and ``tokenizer`` as one GGUF file.

    ``name`` goes in ``general.name``; ``sampling`` (``temperature``, ``top_p``, ``min_p``,
    ``repetition_penalty``) in ``general.sampling.*``, the defaults llama.cpp starts from. The
    generation config's eos ids are the stop tokens: the tokenizer's eos as
    ``tokenizer.ggml.eos_token_id``, a second one (Qwen's ``<|endoftext|>`` beside ``<|im_end|>``)
    as ``tokenizer.ggml.eot_token_id``; a third could not be stated and is refused.

    Raises:
        ConfigError: an unknown ``gguf_type``, an architecture, setting or tokenizer the
            converter does not write (see :func:`architecture_of`, :func:`tokenizer_fields`).
    """
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"--gguf-type {gguf_type}: expected one of {', '.join(GGUF_TYPES)}")
    config = model.config
    arch = architecture_of(config)
    fields = tokenizer_fields(tokenizer, int(config.vocab_size))
    stops = stop_ids_of(model.generation_config, tokenizer)
    eos = fields.special_ids.get("eos")
    others = [token_id for token_id in stops if token_id != eos]
    if eos is None and stops:
        eos, others = stops[0], stops[1:]
    if len(others) > 1:
        raise ConfigError(f"GGUF export: the model stops at {len(stops)} tokens ({stops}); a GGUF names two at most")
    eot = others[0] if others else None

    path = Path(path)
    writer = gguf.GGUFWriter(path, arch, use_temp_file=True)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if description:
        writer.add_description(description)
    writer.add_file_type(_file_type(gguf_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _hyperparameters(writer, config, arch)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(fields.pre)
    writer.add_token_list(fields.tokens)
    writer.add_token_types(fields.token_types)
    writer.add_token_merges(fields.merges)
    for kind, token_id in fields.special_ids.items():
        if kind != "eos":
            getattr(writer, f"add_{kind}_token_id")(token_id)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if eot is not None:
        writer.add_eot_token_id(eot)
    writer.add_add_bos_token(fields.add_bos)
    writer.add_add_eos_token(fields.add_eos)
    writer.add_chat_template(fields.chat_template)
    for key, value in (sampling or {}).items():
        adder = {
            "temperature": writer.add_sampling_temp,
            "top_p": writer.add_sampling_top_p,
            "top_k": writer.add_sampling_top_k,
            "min_p": writer.add_sampling_min_p,
            "repetition_penalty": writer.add_sampling_penalty_repeat,
        }.get(key)
        if adder is not None:
            adder(int(value) if key == "top_k" else float(value))

    counts: dict[str, int] = {}
    for gguf_name, data in _float_tensors(model, arch):
        encoded, qtype = _encode(data, gguf_type)
        writer.add_tensor(gguf_name, encoded, raw_dtype=qtype if qtype.name not in ("F32", "F16") else None)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GgufSummary(path, arch, gguf_type, dict(sorted(counts.items())), eos, eot)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The scalar and string fields of a GGUF file, by key (arrays are left out).

    Read with transformers' own header reader (milliseconds), else ``gguf.GGUFReader`` (which
    parses every token string: seconds for a large vocabulary).
    """
    try:
        from transformers.integrations.gguf import read_gguf_metadata
    except ImportError:  # an older transformers
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields
        return {
            key: field.contents()
            for key, field in fields.items()
            if not key.startswith("GGUF.") and not (field.types and field.types[0].name == "ARRAY")
        }
    metadata, _ = read_gguf_metadata(str(path))
    # Arrays come back as lists (numbers) or as their length (strings); neither is a scalar field.
    return {key: value for key, value in metadata.items() if not isinstance(value, list) and not _is_string_array(key)}


def _is_string_array(key: str) -> bool:
    return key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")


def load_gguf(path: str | Path, *, dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` read back from a GGUF file by transformers alone (dequantized, float32).

    This is how the parity check and the tests see a GGUF export: through transformers'
    loader, not octrain's writer. One correction: transformers' Qwen3 mapping does not read
    ``qwen3.attention.key_length`` and falls back to ``Qwen3Config``'s default head size (128,
    right for every released Qwen3, wrong for the tiny test model), so the head size the file
    states is put into the config before the weights are loaded.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    metadata = read_metadata(path)
    arch = metadata["general.architecture"]
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    head_dim = metadata.get(f"{arch}.attention.key_length")
    if head_dim is not None and getattr(config, "head_dim", None) != head_dim:
        config.head_dim = int(head_dim)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, config=config, dtype=dtype or torch.float32
    )
    return model.eval(), tokenizer
