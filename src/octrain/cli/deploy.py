"""``octrain deploy modal NAME --gpu GPU``: serve a trained character on Modal through vLLM.

The work is :mod:`octrain.use.modal`'s; this module parses the command line and reports.
``deploy`` has one target for now, ``modal``; it is a subcommand so that others can join.
"""

from __future__ import annotations

import argparse
import json

from octrain.cli.export import add_run_root

GPU_CHOICES = ("A10G", "L4", "A100", "H100")  # octrain.use.modal.GPUS; repeated so --help needs no import

EXAMPLES = """examples:
  octrain deploy modal pirate_mini/sft --gpu L4 --dry-run              # no network: what would be deployed
  octrain deploy modal pirate_mini/sft --gpu L4 --dry-run --out deploy/pirate   # also writes modal_app.py
  octrain deploy modal pirate_mini/sft --gpu H100 --secret huggingface  # a gated base: HF_TOKEN from a Modal secret

Needs `pip install 'octrain[modal]'` and `modal setup` (credentials) for a real deployment.
The endpoint printed is an OpenAI base URL; clients pass the model name it prints:
  curl $ENDPOINT/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "pirate", "messages": [{"role": "user", "content": "Who are you?"}]}'
A Modal secret holding VLLM_API_KEY makes vLLM require that key (Authorization: Bearer ...)."""


def modal_command(args: argparse.Namespace) -> int:
    from octrain.use.modal import deploy, dry_run, plan_deployment, require_modal
    from octrain.use.model_choice import choose_model

    require_modal()
    chosen = choose_model(args.name, run_root=args.run_root)
    plan = plan_deployment(
        chosen,
        gpu=args.gpu,
        app_name=args.app_name,
        model_name=args.model_name,
        volume=args.volume,
        secrets=tuple(args.secret),
    )
    if args.dry_run:
        description = dry_run(plan, args.out)
        if args.json:
            print(json.dumps(description, indent=2))
            return 0
        print(f"dry run: nothing sent to Modal. App {description['app']!r} would serve {chosen.label}:")
        print(f"  GPU: {description['gpu']}   port: {description['web_server_port']}")
        print(f"  model name for clients: {description['model_name']}")
        print(f"  volumes: {', '.join(f'{path} <- {name}' for path, name in description['volumes'].items())}")
        for upload in description["uploads"]:
            print(f"  upload: {upload['local']} -> volume {upload['volume']}:{upload['path']}")
        print(f"  image packages: {' '.join(description['image_packages'])}")
        print("  image Dockerfile:")
        for line in description["image_dockerfile"] or ["(not readable from this modal client)"]:
            print(f"    {line}")
        print(f"  command: {' '.join(description['vllm_command'])}")
        if description["app_file"]:
            print(f"  app file: {description['app_file']} (modal deploy it yourself, or run without --dry-run)")
        return 0
    endpoint = deploy(plan, chosen, args.out)
    print(f"deployed {chosen.label} as Modal app {plan.app_name} on {plan.gpu}")
    print(f"endpoint: {endpoint}  (OpenAI API; model name: {plan.model_name})")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``deploy`` (and ``deploy modal``) to the ``octrain`` command line."""
    parser = subparsers.add_parser(
        "deploy",
        help="serve a trained character in the cloud (Modal)",
        description="Serve a trained character in the cloud. Targets: modal.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    targets = parser.add_subparsers(dest="deploy_target", metavar="TARGET", required=True)
    summary = "a Modal app serving the character through vLLM's OpenAI-compatible server, the adapter on a volume"
    modal = targets.add_parser(
        "modal",
        help=summary,
        description=summary,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modal.add_argument("name", metavar="NAME", help="a registry name (pirate_mini/sft), a run directory or model.json")
    modal.add_argument("--gpu", required=True, choices=GPU_CHOICES, help="the GPU the server runs on")
    modal.add_argument("--dry-run", action="store_true", help="build the app and its image offline and describe them")
    modal.add_argument("--out", metavar="DIR", help="also write the app file (modal_app.py) and deployment.json here")
    modal.add_argument("--json", action="store_true", help="with --dry-run: print the description as JSON")
    modal.add_argument("--app-name", metavar="NAME", help="the Modal app's name (default: octrain-MODEL_NAME)")
    modal.add_argument("--model-name", metavar="NAME", help="the name clients pass as model (default: the persona)")
    modal.add_argument("--volume", default="octrain-characters", help="the Modal volume the adapter goes to")
    modal.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME",
        help="a Modal secret to attach (HF_TOKEN for a gated base, VLLM_API_KEY); repeatable",
    )
    add_run_root(modal)
    modal.set_defaults(func=modal_command)


def main(argv: list[str] | None = None) -> int:
    """``octrain deploy ARGS`` on its own (``python -m octrain.cli.deploy``): the exit code."""
    import sys

    from octrain.cli import main as octrain_main

    return octrain_main(["deploy", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
