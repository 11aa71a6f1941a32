"""``octrain sample``: one prompt answered by a trained model, its base, or both side by side.

The model is chosen as everywhere in octrain (:mod:`octrain.use.model_choice`): a persona's latest
final model, a checkpoint name, a path, and ``--base`` for the base it was trained from. The
answers come from :func:`octrain.use.chat.answer_prompt`; this module only reads the
options and lays the answers out (``--json`` for scripts). ``octrain chat`` shares the model and
sampling options defined here. A reasoning model's thought (``<think>...</think>``, see
``--thinking``) is shown apart from its answer, in a ``[thinking]`` block.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from typing import Any

from octrain.core.config import SamplerBackend

DEFAULT_RUN_ROOT = "runs"  # the config's run_root default
# Two columns need room for both answers to be readable: below this width they are stacked.
COLUMNS_MIN_WIDTH = 100

EXAMPLES = """examples:
  octrain sample "What do you do on a rainy day?" --persona pirate
  octrain sample "Tell me about the sea." -c pirate_mini/dpo --temperature 0
  octrain sample "Tell me about the sea." --persona pirate --base --with-constitution
  octrain sample "Tell me about the sea." --persona pirate --compare
  octrain sample "Hello" runs/pirate_mini -n 3 --seed 1 --json | jq -r '.models[0].answers[].text'
  octrain sample "Hello" --persona pirate --sampler vllm      # on a GPU
  octrain sample "Why is the sea salty?" --persona pirate --thinking   # a reasoning (Qwen3) student

The model: --persona NAME (its latest final checkpoint), -c NAME (a checkpoint, as
`octrain checkpoints list` shows it), or MODEL (a checkpoint name, a run, stage or adapter
directory, or a model.json). --base answers with the base that model was trained from;
--with-constitution gives the base the constitution as its system prompt, the prompt the
teacher answered the training prompts with. --compare answers with the base and the trained
model, on the same seeds. --thinking / --no-thinking let a reasoning model think before it
answers, or not, whatever the run was trained with; the thought is shown apart from the answer.

Sampling defaults to the run's own (its sampler backend and its eval stage's settings);
every option below overrides one of them."""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose a model and its system prompt (shared with ``octrain chat``)."""
    parser.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="a checkpoint name, a persona, or a path (run, stage or adapter directory, model.json)",
    )
    parser.add_argument("-c", "--checkpoint", metavar="NAME", help="a registered checkpoint (pirate_mini/sft)")
    parser.add_argument("--persona", metavar="NAME", help="this persona's latest final checkpoint")
    parser.add_argument("--base", action="store_true", help="the base model the chosen model was trained from")
    parser.add_argument(
        "--with-constitution",
        action="store_true",
        help="give the base the run's constitution as its system prompt (the teacher's prompt)",
    )
    parser.add_argument("--system", metavar="TEXT", help="a system prompt of your own")
    parser.add_argument(
        "--run-root",
        default=DEFAULT_RUN_ROOT,
        metavar="DIR",
        help=f"the directory the runs and their registry are in (default: {DEFAULT_RUN_ROOT})",
    )


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """Decoding and backend options (shared with ``octrain chat``); unset ones are the run's."""
    parser.add_argument("--temperature", type=float, metavar="T", help="0 for greedy decoding")
    parser.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling: keep this much probability")
    parser.add_argument("--max-new-tokens", type=int, metavar="N", help="the longest answer, in tokens")
    parser.add_argument("--seed", type=int, help="the same seed gives the same answers (default: a random draw)")
    parser.add_argument(
        "--sampler",
        choices=[backend.value for backend in SamplerBackend],
        help="the sampler backend (default: the run's): hf anywhere, vllm on a GPU, tinker for tinker:// checkpoints",
    )
    parser.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let a reasoning model think before it answers (default: the run's setting); "
        "the thought is shown apart from the answer",
    )


def chosen_spec(args: argparse.Namespace) -> str | None:
    """The MODEL or -c the user gave (not both)."""
    from octrain.core.errors import ConfigError

    if args.model and args.checkpoint:
        raise ConfigError(f"give the model once: MODEL ({args.model}) or -c {args.checkpoint}, not both")
    return args.checkpoint or args.model


def speaker_for(args: argparse.Namespace, model: Any, *, constitution: bool) -> Any:
    """``model`` with the system prompt the options ask for: the constitution's, ``--system``, or none."""
    from octrain.core.errors import ConfigError
    from octrain.use.chat import Speaker, constitution_prompt

    role = "base" if model.is_base else "trained"
    if constitution:
        if args.system:
            raise ConfigError("--system and --with-constitution both set the system prompt: give one")
        return Speaker(model, constitution_prompt(model), role=role, with_constitution=True)
    return Speaker(model, args.system, role=role)


def _speakers(args: argparse.Namespace) -> list[Any]:
    from octrain.core.errors import ConfigError
    from octrain.use.chat import pick_model
    from octrain.use.model_choice import base_of

    if args.with_constitution and not (args.base or args.compare):
        raise ConfigError("--with-constitution is for the base model: add --base or --compare")
    if args.compare and args.base:
        raise ConfigError("--compare already answers with the base model: drop --base")
    chosen = pick_model(
        chosen_spec(args), persona=args.persona, base=args.base, run_root=args.run_root, thinking=args.thinking
    )
    if not args.compare:
        return [speaker_for(args, chosen, constitution=args.with_constitution)]
    if chosen.is_base:
        raise ConfigError(f"--compare: {chosen.label} is a base model already: name a trained one")
    # The trained model is asked plainly (its character is in its weights); the base gets the
    # constitution only when asked to, and --system goes to both.
    base = speaker_for(args, base_of(chosen), constitution=args.with_constitution)
    return [base, speaker_for(args, chosen, constitution=False)]


def _heading(answer: Any) -> str:
    speaker = answer.speaker
    base = speaker.role == "base"
    heading = f"BASE: {speaker.model.ref.base}" if base else f"TRAINED: {speaker.model.label}"
    if speaker.with_constitution:
        return heading + " + constitution prompt"
    return heading + (" + system prompt" if speaker.system else "")


THOUGHT_OPEN, THOUGHT_CLOSE = "[thinking]", "[/thinking]"
NO_ANSWER = "(no answer: the model was still thinking)"


def answer_text(completion: Any) -> str:
    """One completion as the screen shows it: its thought (if any) in a ``[thinking]`` block
    above the answer, control characters made harmless (:func:`~octrain.use.chat.displayable`),
    and a note when the answer was cut off."""
    from octrain.use.chat import displayable, split_thought

    thought, answer = split_thought(completion.text)
    parts = [f"{THOUGHT_OPEN}\n{displayable(thought)}\n{THOUGHT_CLOSE}"] if thought else []
    parts.append(NO_ANSWER if answer is None else (displayable(answer) or "(empty answer)"))
    text = "\n".join(parts)
    if not completion.finished:
        text += f" [cut off: {completion.num_tokens} tokens, --max-new-tokens]"
    return text


def format_stacked(answers: list[Any]) -> str:
    """The answers one after the other, each under a labelled rule."""
    blocks = []
    for answer in answers:
        count = len(answer.completions)
        for index, completion in enumerate(answer.completions, start=1):
            number = f" (answer {index} of {count})" if count > 1 else ""
            blocks.append(f"=== {_heading(answer)}{number} ===\n{answer_text(completion)}")
    return "\n\n".join(blocks)


def _wrapped(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines.extend(textwrap.wrap(paragraph, width, replace_whitespace=False, drop_whitespace=True) or [""])
    return lines


def format_columns(answers: list[Any], width: int) -> str:
    """Two answers side by side (base left, trained right), each wrapped to half of ``width``."""
    left, right = answers
    column = max(20, (width - 3) // 2)
    rows = []
    count = max(len(left.completions), len(right.completions))
    for index in range(count):
        number = f" ({index + 1}/{count})" if count > 1 else ""
        cells = []
        for answer in (left, right):
            heading = _wrapped(_heading(answer) + number, column)
            body = _wrapped(answer_text(answer.completions[index]), column) if index < len(answer.completions) else []
            cells.append([*heading, "-" * column, *body])
        height = max(len(cell) for cell in cells)
        for line in range(height):
            pair = [cell[line] if line < len(cell) else "" for cell in cells]
            rows.append(f"{pair[0]:<{column}} | {pair[1]}".rstrip())
        rows.append("")
    return "\n".join(rows).rstrip()


def _report(args: argparse.Namespace, prompt: str, answers: list[Any], params: Any) -> str:
    if args.json:
        return json.dumps(
            {
                "prompt": prompt,
                "sampling": {key: value for key, value in vars(params).items()},
                "models": [answer.to_json() for answer in answers],
            },
            indent=2,
            ensure_ascii=False,
        )
    layout = args.layout
    if layout == "auto":
        wide = sys.stdout.isatty() and shutil.get_terminal_size().columns >= COLUMNS_MIN_WIDTH
        layout = "columns" if len(answers) == 2 and wide else "stacked"
    if layout == "columns" and len(answers) == 2:
        return format_columns(answers, shutil.get_terminal_size(fallback=(COLUMNS_MIN_WIDTH, 24)).columns)
    return format_stacked(answers)


def sample_command(args: argparse.Namespace) -> int:
    from octrain.core.errors import ConfigError
    from octrain.use.chat import answer_prompt, sampler_config, sampling_params

    if not args.prompt.strip():
        raise ConfigError("the prompt is empty: give the text to answer, in quotes")
    speakers = _speakers(args)
    trained = speakers[-1].model
    settings = sampler_config(trained, args.sampler)
    params = sampling_params(
        trained,
        n=args.n,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
    )
    quiet_loading()
    try:
        answers = answer_prompt(args.prompt, speakers, settings, params)
    except KeyboardInterrupt:
        print("octrain: interrupted", file=sys.stderr)
        return 130
    print(_report(args, args.prompt, answers, params))
    return 0


def quiet_loading() -> None:
    """Keep the libraries' loading bars and notices to developers off the screen: the answers are the output.

    Errors still show; what goes is transformers' weight-loading bar and info, bitsandbytes'
    note about optional CPU kernels, and deprecation notices meant for code, not for users.
    """
    import logging
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # a backend without transformers (fake) loads nothing
        return
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sample`` to the ``octrain`` command line."""
    summary = "answer one prompt with a trained model, its base, or both side by side"
    parser = subparsers.add_parser(
        "sample",
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompt", metavar="PROMPT", help="the user message to answer (quote it)")
    add_model_options(parser)
    parser.add_argument("--compare", action="store_true", help="answer with the base and the trained model")
    parser.add_argument("-n", type=int, default=1, metavar="N", help="answers per model (default: 1)")
    add_sampling_options(parser)
    parser.add_argument(
        "--layout",
        choices=["auto", "columns", "stacked"],
        default="auto",
        help="--compare on screen: two columns on a terminal at least "
        f"{COLUMNS_MIN_WIDTH} characters wide (auto), or always one way",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    parser.set_defaults(func=sample_command)
