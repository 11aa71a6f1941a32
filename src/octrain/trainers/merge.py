"""Combine LoRA adapters exactly, and fold adapters into full model weights.

A LoRA adapter adds ``ΔW = s·B·A`` to each target layer's weight ``W``, where ``A`` is
``r × in``, ``B`` is ``out × r`` and ``s = lora_alpha / r`` (PEFT's standard scaling).
When adapters are trained one after another (the second on the base with the first folded
in), the model the user ends up with is ``W + ΔW1 + ΔW2``: a *sum of updates*.

:func:`combine_adapters` writes one PEFT adapter whose update is exactly
``Σ w_i·s_i·B_i·A_i``. It relies on the identity ``[B_1 … B_k]·[A_1; …; A_k] = Σ B_i·A_i``:
stack the ``A`` factors row-wise, place the ``B`` factors side by side, and the product of
the stacked factors is the sum of the individual products, with no cross terms. The new
rank is ``Σ r_i``; we set ``lora_alpha = r`` so the new scaling is 1, and fold each
``w_i·s_i`` into its ``B_i`` block. By default the rank is then padded with zero rows of
``A`` and zero columns of ``B`` up to the next rank vLLM can be configured for
(:data:`VLLM_LORA_RANKS`, :func:`serving_rank`): zero blocks add nothing to ``B·A``, so the
update stays exact, and the adapter's own ``r`` is a valid ``max_lora_rank``.

Why not PEFT's ``add_weighted_adapter(combination_type="linear")``: it mixes the factors
separately, ``A = Σ √(w_i s_i)·A_i`` and ``B = Σ √(w_i s_i)·B_i``, so the merged update
is ``(Σ_i c_i B_i)(Σ_j c_j A_j) = Σ_i Σ_j c_i c_j B_i A_j``. The off-diagonal cross terms
``B_i A_j`` (``i ≠ j``) are products of factors that were never trained together; the
result is not the sum of the updates and the combined model is not the one the user
trained. (PEFT's ``"cat"`` combination is exact too, but it needs the base model loaded
and every adapter attached to it; here we work on the adapter files alone.)

:func:`merge_into_weights` and :func:`fold_adapter` apply an adapter to the base weights
(``merge_and_unload``) in float32, for export and for sequential training respectively.

Everything heavy (torch, safetensors, peft, transformers) is imported inside the functions
so that ``import octrain.trainers.merge`` stays cheap for the CLI.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from octrain.core.config import VLLM_LORA_RANKS
from octrain.core.errors import ConfigError
from octrain.core.files import atomic_directory
from octrain.core.layout import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


# Tensor-name endings PEFT writes for a plain LoRA layer, as (A ending, B ending). Linear
# (and conv) layers hold their factors in sub-modules, hence ``.weight``; embedding layers
# hold them as bare parameters. In every case the rank is dim 0 of A and dim 1 of B, so the
# same concatenation applies.
_FACTOR_SUFFIXES = ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B"))

# Config switches that change what an adapter computes in ways a plain ``s·B·A`` sum cannot
# represent (different scaling, extra tensors, token-dependent activation, ...). An adapter
# with any of them set is refused rather than combined incorrectly.
_UNSUPPORTED_SETTINGS = (
    "use_rslora",
    "use_dora",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layers_pattern",
    "modules_to_save",
    "lora_bias",
    "target_parameters",
    "layer_replication",
    "alora_invocation_tokens",
    "trainable_token_indices",
    "use_qalora",
    "use_bdlora",
    "megatron_config",
    "velora_config",
    "monteclora_config",
    "arrow_config",
    "kasa_config",
)


@dataclass
class _Adapter:
    """One validated adapter read from disk: its config and its per-module factor pairs."""

    path: Path
    config: dict[str, Any]
    scaling: float
    # module prefix (the tensor name without its factor ending) -> (A ending, B ending, A, B)
    modules: dict[str, tuple[str, str, torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def serving_rank(rank: int) -> int:
    """The smallest rank in :data:`VLLM_LORA_RANKS` that holds an adapter of rank ``rank``.

    Raises:
        ConfigError: ``rank`` is not a positive integer, or is above the largest rank vLLM serves.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"a LoRA rank must be a positive integer, got {rank!r}")
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ConfigError(f"LoRA rank {rank} is above {VLLM_LORA_RANKS[-1]}, the largest rank vLLM can serve")


def combine_adapters(
    adapters: list[tuple[str | Path, float]],
    output_dir: Path,
    *,
    pad_for_serving: bool = True,
    tokenizer_from: str | Path | None = None,
) -> Path:
    """Write one LoRA adapter whose update is exactly the weighted sum of the given adapters' updates.

    For every target module the output holds ``A = [A_1; …; A_k]`` (rows stacked) and
    ``B = [w_1·s_1·B_1 … w_k·s_k·B_k]`` (columns side by side) with ``r = lora_alpha = Σ r_i``,
    so ``s·B·A = Σ w_i·s_i·B_i·A_i``. A module that some adapters do not touch gets zero rows
    and columns in their blocks, so that every module has the same rank (PEFT wants one ``r``
    per adapter). The factors are written in float32 whatever the input dtype, so that folding
    the weights into ``B`` loses nothing.

    Padding: ``Σ r_i`` is often a rank vLLM cannot be set up for (32 + 64 = 96, say), and a
    server sized from the adapter's own ``r`` then refuses to start. With ``pad_for_serving``
    the rank is raised to :func:`serving_rank` of the sum by appending zero rows to ``A`` and
    zero columns to ``B``; they add nothing to ``B·A``, so the update is unchanged, at the cost
    of a somewhat larger file. ``lora_alpha`` follows ``r``, keeping the scaling at 1.

    Args:
        adapters: ``(adapter directory, weight)`` pairs; each directory is in PEFT's format
            (``adapter_config.json`` + ``adapter_model.safetensors``).
        output_dir: Where to write the combined adapter. It appears whole or not at all; an
            existing directory there is replaced.
        pad_for_serving: Pad the rank up to one vLLM accepts (the default). Pass False for the
            bare sum ``Σ r_i``, for example when the adapter is only ever folded into weights.
        tokenizer_from: A model (Hub id, directory or ``builtin:tiny-qwen3``) whose tokenizer and
            chat template are saved into the adapter directory too, so that the directory loads
            with ``AutoTokenizer.from_pretrained`` on its own. None: adapter files only.

    Returns:
        ``output_dir``.

    Raises:
        ConfigError: No adapters, a weight that is not a finite number, a missing or unreadable
            adapter, an adapter that is not plain LoRA (for example DoRA or rsLoRA), or adapters
            whose factors for the same module disagree on the base layer's shape: the message
            names the adapter directory at fault. Also, when padding, a summed rank above the
            largest rank vLLM serves.
    """
    import torch

    if not adapters:
        raise ConfigError("combine_adapters needs at least one adapter")
    loaded: list[tuple[_Adapter, float]] = []
    for path, weight in adapters:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise ConfigError(f"adapter weight for {path} must be a finite number, got {weight!r}")
        loaded.append((_read_adapter(Path(path)), float(weight)))

    endings, shapes = _check_compatible([adapter for adapter, _ in loaded])
    fan_in_fan_out = {bool(adapter.config.get("fan_in_fan_out", False)) for adapter, _ in loaded}
    if len(fan_in_fan_out) > 1:
        raise ConfigError(
            f"adapters disagree on fan_in_fan_out ({', '.join(str(a.path) for a, _ in loaded)}); "
            "their factors are laid out differently and cannot be concatenated"
        )

    summed_rank = sum(int(adapter.config["r"]) for adapter, _ in loaded)
    total_rank = serving_rank(summed_rank) if pad_for_serving else summed_rank
    tensors: dict[str, torch.Tensor] = {}
    for prefix in sorted(endings):
        a_end, b_end = endings[prefix]
        a_blocks, b_blocks = [], []
        for adapter, weight in loaded:
            if prefix in adapter.modules:
                _, _, lora_a, lora_b = adapter.modules[prefix]
                a_blocks.append(lora_a.to(torch.float32))
                # The new scaling is 1 (lora_alpha == r), so each block carries its own w_i·s_i.
                b_blocks.append(lora_b.to(torch.float32) * (weight * adapter.scaling))
            else:
                # This adapter leaves the module alone: zero blocks contribute B·A = 0.
                _append_zero_blocks(a_blocks, b_blocks, int(adapter.config["r"]), shapes[prefix])
        # Padding up to the serving rank, again with zeros: exact for the same reason.
        _append_zero_blocks(a_blocks, b_blocks, total_rank - summed_rank, shapes[prefix])
        tensors[prefix + a_end] = torch.cat(a_blocks, dim=0).contiguous()
        tensors[prefix + b_end] = torch.cat(b_blocks, dim=1).contiguous()

    first = loaded[0][0].config
    # PEFT matches a list entry against the end of a module's name, so the last component of
    # each module name (q_proj, down_proj, ...) targets exactly those layers. An explicit list
    # rather than "all-linear" keeps the output independent of how PEFT expands shortcuts.
    target_modules = sorted({_module_name(prefix).rsplit(".", 1)[-1] for prefix in endings})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": first.get("base_model_name_or_path"),
        "r": total_rank,
        "lora_alpha": total_rank,
        "target_modules": target_modules,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out.pop(),
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }

    # Loaded before anything is written, so that a missing tokenizer leaves no trace.
    tokenizer = _load_tokenizer(tokenizer_from) if tokenizer_from is not None else None

    def write(staging: Path) -> None:
        from safetensors.torch import save_file

        (staging / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(staging / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            # Into the staging directory, so the adapter and its tokenizer appear together.
            tokenizer.save_pretrained(staging)

    with atomic_directory(Path(output_dir)) as staging:
        write(staging)
    return Path(output_dir)


def _append_zero_blocks(
    a_blocks: list[torch.Tensor],
    b_blocks: list[torch.Tensor],
    rank: int,
    shape: tuple[tuple[int, ...], int, tuple[int, ...]],
) -> None:
    """Append ``rank`` zero rows to the A blocks and ``rank`` zero columns to the B blocks of one module.

    ``shape`` is the base layer's shape as :func:`_check_compatible` returns it.
    """
    import torch

    if rank == 0:
        return
    a_tail, b_out, b_tail = shape
    a_blocks.append(torch.zeros((rank, *a_tail), dtype=torch.float32))
    b_blocks.append(torch.zeros((b_out, rank, *b_tail), dtype=torch.float32))


def _load_tokenizer(model: str | Path) -> Any:
    """The tokenizer (chat template included) of ``model``, as ``AutoTokenizer`` loads it."""
    from transformers import AutoTokenizer

    from octrain.models.builtin import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(str(model)))


def fold_adapter(base_path: str, adapter_dir: str | Path) -> PreTrainedModel:
    """Load the base model in float32 and fold a LoRA adapter into its weights.

    Float32 keeps ``W + s·B·A`` exact to rounding even when the base was saved in bf16; the
    result is a plain transformers model (no PEFT wrappers), ready to train a further
    adapter on or to save.

    Args:
        base_path: The base model, as ``from_pretrained`` accepts it (``builtin:tiny-qwen3``
            is resolved to the cached tiny model).
        adapter_dir: A PEFT LoRA adapter directory.

    Returns:
        The merged model, in float32 and in eval mode.

    Raises:
        ConfigError: The adapter is missing or is not a plain LoRA adapter.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from octrain.models.builtin import resolve_model_path

    adapter = _read_adapter(Path(adapter_dir))  # refuse bad adapters before the slow load
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(base_path), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter.path)).merge_and_unload()
    merged.eval()
    return merged


def merge_into_weights(base_path: str, adapter_dir: str | Path, output_dir: Path) -> Path:
    """Fold a LoRA adapter into the base model and save full float32 weights and the tokenizer.

    Args:
        base_path: The base model, as ``from_pretrained`` accepts it.
        adapter_dir: A PEFT LoRA adapter directory (for example one from :func:`combine_adapters`).
        output_dir: Where to save the merged model. It appears whole or not at all; an existing
            directory there is replaced.

    Returns:
        ``output_dir``, loadable with ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        ConfigError: The adapter is missing or is not a plain LoRA adapter.
    """
    from transformers import AutoTokenizer

    from octrain.models.builtin import resolve_model_path

    model = fold_adapter(base_path, adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(base_path))
    with atomic_directory(Path(output_dir)) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(output_dir)


def lora_rank(adapter_dir: str | Path) -> int:
    """The rank ``r`` a PEFT LoRA adapter's ``adapter_config.json`` records (what vLLM's
    ``--max-lora-rank`` must cover); ConfigError naming the file when it is missing or not a positive integer."""
    config_path = Path(adapter_dir) / ADAPTER_CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {config_path}: {exc}") from exc
    rank = config.get("r") if isinstance(config, dict) else None
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ConfigError(f"{config_path}: the LoRA rank 'r' must be a positive integer, got {rank!r}")
    return rank


def _read_adapter(path: Path) -> _Adapter:
    """Read and validate one adapter directory; every problem is a ConfigError naming ``path``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_dir():
        raise ConfigError(f"adapter directory {path} does not exist")
    config_path = path / ADAPTER_CONFIG_FILE
    weights_path = path / ADAPTER_WEIGHTS_FILE
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise ConfigError(f"adapter {path} has no {needed.name}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        peft_type = config.get("peft_type") if isinstance(config, dict) else None
        raise ConfigError(f"adapter {path} is not a LoRA adapter (peft_type {peft_type!r})")
    for key in _UNSUPPORTED_SETTINGS:
        if config.get(key):
            raise ConfigError(
                f"adapter {path} sets {key}={config[key]!r}, which combine/merge does not support "
                "(only plain LoRA with scaling lora_alpha / r can be combined exactly)"
            )
    if config.get("bias", "none") != "none":
        raise ConfigError(f"adapter {path} trains biases (bias={config['bias']!r}); only bias='none' is supported")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ConfigError(f"adapter {path} has an invalid rank r={rank!r}")
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise ConfigError(f"adapter {path} has an invalid lora_alpha={alpha!r}")

    try:
        state = load_file(str(weights_path))
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"cannot read {weights_path}: {exc}") from exc
    adapter = _Adapter(path=path, config=config, scaling=alpha / rank)
    pending: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # prefix -> {"A"/"B": (ending, tensor)}
    for name, tensor in state.items():
        for a_end, b_end in _FACTOR_SUFFIXES:
            if name.endswith(a_end):
                pending.setdefault(name[: -len(a_end)], {})["A"] = (a_end, tensor)
                break
            if name.endswith(b_end):
                pending.setdefault(name[: -len(b_end)], {})["B"] = (b_end, tensor)
                break
        else:
            # Anything else (DoRA magnitudes, biases, saved full modules, ...) would be dropped silently.
            raise ConfigError(f"adapter {path} holds a tensor combine/merge does not understand: {name}")
    if not pending:
        raise ConfigError(f"adapter {path} holds no LoRA weights")
    for prefix, factors in pending.items():
        missing = sorted({"A", "B"} - set(factors))
        if missing:
            raise ConfigError(f"adapter {path}: module {_module_name(prefix)} has no lora_{missing[0]} factor")
        (a_end, lora_a), (b_end, lora_b) = factors["A"], factors["B"]
        if (a_end, b_end) not in _FACTOR_SUFFIXES:
            raise ConfigError(f"adapter {path}: module {_module_name(prefix)} mixes embedding and linear factors")
        if lora_a.dim() < 2 or lora_b.dim() < 2 or lora_a.shape[0] != rank or lora_b.shape[1] != rank:
            raise ConfigError(
                f"adapter {path}: module {_module_name(prefix)} has factors of shapes {tuple(lora_a.shape)} and "
                f"{tuple(lora_b.shape)}, which do not match rank r={rank}"
            )
        adapter.modules[prefix] = (a_end, b_end, lora_a, lora_b)
    return adapter


def _check_compatible(
    adapters: list[_Adapter],
) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[tuple[int, ...], int, tuple[int, ...]]]]:
    """Check that adapters touching the same module agree on the base layer's shape.

    Returns:
        For every module prefix in any adapter: its factor endings, and the base-layer shape
        as ``(A's non-rank dims, B's output dim, B's trailing dims)``, used to size zero blocks.
    """
    endings: dict[str, tuple[str, str]] = {}
    shapes: dict[str, tuple[tuple[int, ...], int, tuple[int, ...]]] = {}
    owner: dict[str, Path] = {}
    for adapter in adapters:
        for prefix, (a_end, b_end, lora_a, lora_b) in adapter.modules.items():
            shape = (tuple(lora_a.shape[1:]), int(lora_b.shape[0]), tuple(lora_b.shape[2:]))
            if prefix not in shapes:
                endings[prefix], shapes[prefix], owner[prefix] = (a_end, b_end), shape, adapter.path
            elif shapes[prefix] != shape or endings[prefix] != (a_end, b_end):
                raise ConfigError(
                    f"adapter {adapter.path}: module {_module_name(prefix)} adapts a layer of a different shape "
                    f"than in {owner[prefix]} (A {(-1, *shape[0])} vs {(-1, *shapes[prefix][0])}, "
                    f"B out {shape[1]} vs {shapes[prefix][1]}); were they trained on the same base model?"
                )
    return endings, shapes


def _module_name(prefix: str) -> str:
    """The base model's module name for a tensor prefix (PEFT prepends ``base_model.model.``)."""
    return prefix.removeprefix("base_model.model.")
