"""``octrain serve NAME...``: a trained character behind an OpenAI-compatible chat API.

The command line is planned by :mod:`octrain.use.serving` (vLLM's server on a GPU box, elsewhere
octrain's thin server over transformers' continuous batching, :mod:`octrain.use.serving_gateway`)
and run until Ctrl-C. ``--print-command`` shows the server command without starting it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from octrain.use.model_choice import ChosenModel
    from octrain.use.serving import ServePlan

EXAMPLES = """examples:
  octrain serve pirate_mini/sft                    # http://127.0.0.1:8000/v1, model "pirate_mini/sft"
  octrain serve --persona pirate --port 9000       # the persona's latest final model
  octrain serve pirate_mini/sft stoic_mini/sft --backend vllm   # two characters on one base
  octrain serve runs/pirate_mini/sft/model.json --print-command
  octrain serve --persona pirate --no-thinking     # a reasoning (Qwen3) student, answering at once

then, from any OpenAI client:
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "pirate_mini/sft", "messages": [{"role": "user", "content": "Ahoy?"}]}'
  octrain eval elo matches.jsonl --judge-url http://127.0.0.1:8000/v1 --judge-model pirate_mini/sft

backends: vllm (a CUDA GPU and the [vllm] extra; the adapters are served as LoRA modules) or
transformers (anywhere, the [serve] extra: octrain's server over transformers' continuous batching;
the adapter is folded into the base once, exactly, and the merged weights are cached under
~/.cache/octrain/serve). auto picks vllm when it can run. Both batch concurrent requests, refuse a
max_tokens past the context with HTTP 400, and stop a request whose client disconnects."""


def _run(args: argparse.Namespace) -> int:
    from octrain.core.errors import ConfigError
    from octrain.use.model_choice import choose_model, latest_of_persona, with_thinking
    from octrain.use.serving import plan_serving, run_server

    if bool(args.models) == bool(args.persona):
        raise ConfigError("name the models to serve, or --persona NAME (not both)")
    if args.persona:
        chosen = [latest_of_persona(args.persona, run_root=args.run_root)]
    else:
        chosen = [choose_model(spec, run_root=args.run_root) for spec in args.models]
    chosen = [with_thinking(model, args.thinking) for model in chosen]
    plan = plan_serving(
        chosen,
        names=args.name or (),
        backend=args.backend,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
    )
    if args.print_command:
        print(f"cd {plan.cwd} && {plan.command_line()}")
        print(f"model names: {', '.join(plan.model_names)}; base URL: {plan.base_url}")
        return 0
    on_ready = None if args.no_check else _parity_check(plan, chosen, args)
    return run_server(plan, ready_timeout=args.ready_timeout, log_file=args.log, on_ready=on_ready)


def _parity_check(plan: ServePlan, chosen: list[ChosenModel], args: argparse.Namespace) -> Callable[[], None]:
    """The trained models' reference answers, computed before the server starts, and the hook that checks them."""
    from octrain.use.serving import served_names
    from octrain.use.serving_parity import parity_hook, references_for, served_precision

    names = served_names(plan, chosen, args.name or ())
    listed = ", ".join(names)
    print(f"computing each model's own answers (float32) to check the server against (--no-check skips): {listed}")
    references = references_for(chosen, names)
    precision = served_precision(args.dtype if plan.backend == "transformers" else "auto", chosen[0].ref.base)
    return parity_hook(plan.base_url, references, precision=precision, say=lambda line: print(line, flush=True))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve trained characters behind an OpenAI-compatible chat API (vLLM or transformers)",
        description="Serve trained characters behind an OpenAI-compatible chat API until Ctrl-C.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="*", help="checkpoint names (pirate_mini/sft) or paths")
    parser.add_argument("--persona", default=None, help="serve this persona's latest final model")
    parser.add_argument(
        "--name", action="append", default=None, help="the model name clients pass (once per model; default: its name)"
    )
    parser.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="transformers: auto, cpu, cuda:0, ...")
    parser.add_argument("--dtype", default="auto", help="transformers: auto, bfloat16, float16, float32")
    parser.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let a reasoning model think before it answers (default: the run's setting); "
        "a request's chat_template_kwargs can still ask otherwise",
    )
    parser.add_argument("--run-root", default="runs", help="where the runs and their registry are (default: runs)")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the health check")
    parser.add_argument("--log", type=Path, default=None, help="write the server's output to this file")
    parser.add_argument("--print-command", action="store_true", help="print the server command; start nothing")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip the parity check (by default the server must answer the parity prompts greedily as the "
        "trained model does before octrain says it serves)",
    )
    parser.set_defaults(func=_run)
