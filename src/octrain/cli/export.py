"""``octrain export NAME --merged DIR | --adapter DIR | --gguf DIR``: a trained character as files, outside octrain.

The work is :mod:`octrain.use.export`'s (and the check :mod:`octrain.use.parity`'s); this module
parses the command line and reports. NAME is anything
:func:`octrain.use.model_choice.choose_model` accepts: a registry name (``pirate_mini/sft``), a
run or stage directory, or a ``model.json``.
"""

from __future__ import annotations

import argparse
import sys

from octrain.use.gguf_export import DEFAULT_GGUF_TYPE, GGUF_TYPES  # names only: nothing heavy is imported

DEFAULT_RUN_ROOT = "runs"  # the config's run_root default

EXAMPLES = """examples:
  octrain export pirate_mini/sft --merged exports/pirate-merged
  octrain export pirate_mini/sft --merged exports/pirate-bf16 --dtype bfloat16
  octrain export pirate_mini/sft --adapter exports/pirate-adapter
  octrain export runs/pirate_mini --adapter exports/pirate-adapter --base-model Qwen/Qwen3-4B --force
  octrain export pirate_mini/sft --gguf exports/pirate-gguf
  octrain export pirate_mini/sft --gguf exports/pirate-q8 --gguf-type q8_0

The merged export loads with plain transformers and vLLM:
  python -c "import transformers as t; t.AutoModelForCausalLM.from_pretrained('exports/pirate-merged')"
  vllm serve exports/pirate-merged
The adapter with PEFT (AutoPeftModelForCausalLM.from_pretrained(DIR)) or vLLM on its base:
  vllm serve BASE --enable-lora --lora-modules pirate=exports/pirate-adapter --max-lora-rank R
The GGUF export (Llama and Qwen3 models with ChatML templates) with llama.cpp or Ollama:
  llama-cli -m exports/pirate-gguf/pirate-f16.gguf -cnv
  cd exports/pirate-gguf && ollama create pirate -f Modelfile && ollama run pirate

Before it reports success, export loads what it wrote back with transformers alone and checks
that it answers a few prompts as the trained model does (chat template, tokenizer, stop tokens
and greedy tokens, near-ties aside); a difference is an error naming it, and DIR is not written.
--no-check skips this (it loads the model twice more)."""


def export_command(args: argparse.Namespace) -> int:
    from octrain.use.export import export_adapter, export_gguf, export_merged
    from octrain.use.model_choice import choose_model

    if args.dtype and not args.merged:
        print("octrain: error: --dtype applies to --merged only", file=sys.stderr)
        return 2
    if args.gguf_type and not args.gguf:
        print("octrain: error: --gguf-type applies to --gguf only", file=sys.stderr)
        return 2
    chosen = choose_model(args.name, run_root=args.run_root)
    check = not args.no_check
    if args.merged:
        result = export_merged(chosen, args.merged, dtype=args.dtype, force=args.force, check=check)
        what = f"merged weights ({result.dtype})"
    elif args.gguf:
        kind = args.gguf_type or DEFAULT_GGUF_TYPE
        result = export_gguf(chosen, args.gguf, gguf_type=kind, force=args.force, check=check)
        what = f"GGUF ({result.dtype}) with an Ollama Modelfile"
    else:
        result = export_adapter(chosen, args.adapter, base_model=args.base_model, force=args.force, check=check)
        what = "the LoRA adapter (PEFT format)"
    print(f"exported {chosen.label} as {what} to {result.directory}")
    print(f"  base model: {result.base_model}")
    print(f"  files: {', '.join(result.files)}")
    print(f"  {result.parity.summary()}" if result.parity is not None else "  parity: not checked (--no-check)")
    return 0


def add_run_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-root",
        default=DEFAULT_RUN_ROOT,
        metavar="DIR",
        help=f"the directory the runs are in, for registry names (default: {DEFAULT_RUN_ROOT})",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``octrain`` command line."""
    summary = "write a trained character as merged weights, a PEFT adapter or GGUF (llama.cpp, Ollama), checked"
    parser = subparsers.add_parser(
        "export",
        help=summary,
        description=summary
        + " to answer as the trained model does. The directory appears whole or not at all (it is written and "
        "checked beside DIR and renamed at the end).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="a registry name (pirate_mini/sft), a run directory or model.json")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--merged", metavar="DIR", help="full weights with the adapter folded in (safetensors)")
    target.add_argument("--adapter", metavar="DIR", help="the LoRA adapter alone, in PEFT format, with the tokenizer")
    target.add_argument(
        "--gguf", metavar="DIR", help="one GGUF file (llama.cpp, Ollama) with an Ollama Modelfile beside it"
    )
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="dtype of the merged weights (default: the dtype the base model is stored in)",
    )
    parser.add_argument(
        "--base-model",
        metavar="HUB_ID",
        help="the base's Hub id for adapter_config.json, when the run trained on a local copy of it",
    )
    parser.add_argument(
        "--gguf-type",
        choices=GGUF_TYPES,
        help=f"the GGUF weights' encoding (default: {DEFAULT_GGUF_TYPE}; q8_0 is half the size, slightly less exact)",
    )
    parser.add_argument("--force", action="store_true", help="replace DIR when it is not empty")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip checking that the export answers as the trained model does (saves loading it twice more)",
    )
    add_run_root(parser)
    parser.set_defaults(func=export_command)


def main(argv: list[str] | None = None) -> int:
    """``octrain export ARGS`` on its own (``python -m octrain.cli.export``): the exit code."""
    import sys

    from octrain.cli import main as octrain_main

    return octrain_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
