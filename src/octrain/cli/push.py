"""``octrain push NAME --repo user/name``: a trained character to the Hugging Face Hub, with its model card.

The work is :mod:`octrain.use.hub`'s (upload folder, card, huggingface_hub calls); this
module parses the command line and reports.
"""

from __future__ import annotations

import argparse

from octrain.cli.export import add_run_root

EXAMPLES = """examples:
  octrain push pirate_mini/sft --repo me/pirate-qwen3 --dry-run /tmp/pirate-upload   # look first: no network
  HF_TOKEN=hf_... octrain push pirate_mini/sft --repo me/pirate-qwen3 --private
  octrain push pirate_mini/sft --repo me/pirate-qwen3-merged --merged --dtype bfloat16 --license apache-2.0

The token is read from HF_TOKEN (or the login `hf auth login` saved) and is never written or printed.
HF_ENDPOINT points huggingface_hub at another Hub (a mirror, or a test server).
The folder holds the adapter (or with --merged, the full weights), README.md (the model card:
metadata, constitution, training settings and data counts, the run's eval report and plots,
usage snippets) and plots/."""


def push_command(args: argparse.Namespace) -> int:
    from octrain.use.hub import push
    from octrain.use.model_choice import choose_model

    chosen = choose_model(args.name, run_root=args.run_root)
    result = push(
        chosen,
        args.repo,
        private=args.private,
        merged=args.merged,
        license=args.license,
        base_model=args.base_model,
        dtype=args.dtype,
        dry_run=args.dry_run,
        force=args.force,
    )
    if args.dry_run:
        print(f"dry run: nothing sent; the folder that would be uploaded to {args.repo} is {result.folder}")
    else:
        print(f"pushed {chosen.label} to {result.url}")
    for name in result.files:
        print(f"  {name}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``push`` to the ``octrain`` command line."""
    summary = "upload a trained character to the Hugging Face Hub with a model card written from its run"
    parser = subparsers.add_parser(
        "push", help=summary, description=summary, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", metavar="NAME", help="a registry name (pirate_mini/sft), a run directory or model.json")
    parser.add_argument("--repo", required=True, metavar="USER/NAME", help="the Hub model repo (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--merged", action="store_true", help="upload merged full weights instead of the adapter")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="with --merged: the weights' dtype (default: the base's)",
    )
    parser.add_argument("--license", metavar="ID", help="the card's license (default: the base's, when known here)")
    parser.add_argument(
        "--base-model", metavar="HUB_ID", help="the base's Hub id, when the run trained on a local copy of it"
    )
    parser.add_argument(
        "--dry-run", metavar="DIR", help="only write the folder that would be uploaded into DIR; no network"
    )
    parser.add_argument("--force", action="store_true", help="with --dry-run: replace DIR when it is not empty")
    add_run_root(parser)
    parser.set_defaults(func=push_command)


def main(argv: list[str] | None = None) -> int:
    """``octrain push ARGS`` on its own (``python -m octrain.cli.push``): the exit code."""
    import sys

    from octrain.cli import main as octrain_main

    return octrain_main(["push", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
