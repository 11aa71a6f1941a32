"""The standalone evaluation commands: ``octrain eval COMMAND`` and the Studio's Evaluate tools.

Each command is an :class:`EvalCommand`: its arguments, an example and the function that runs
it. The command line (:mod:`octrain.cli.eval`) adds the parsers with :func:`add_commands` and
runs them with :func:`run_command`; the Studio's Evaluate page parses its forms with the same
parsers and runs the same functions. ``python -m octrain.evaluation`` is an old name for
``octrain eval`` (:mod:`octrain.evaluation.__main__`). Results print as JSON on stdout, or as
text where the command renders one.

* ``classifier`` trains a persona classifier on ``{"text", "label"}`` rows and reports accuracy,
  macro-F1 and the confusion matrix (:func:`octrain.evaluation.classifier.train_classifier`).
* ``elo`` rates base against tuned answers from a matches file, asking a judge for the missing
  winners (:func:`octrain.evaluation.match_files.elo_from_matches`).
* ``model`` runs the whole ``eval`` stage of a finished run (its config, constitution, pairs and
  judge) on any model reference, for example the DPO-only model ``RUN_DIR/dpo/model.json``
  (:func:`octrain.evaluation.paper_suite.evaluate_model`).
* ``revealed-preferences`` runs the revealed-preference protocol alone on a trained model and
  its base (:mod:`octrain.evaluation.revealed`).
* ``quick`` answers a few held-out prompts with base and trained side by side, with the persona
  classifier's verdict on each (:mod:`octrain.evaluation.quick`).
* ``capability`` scores a trained model and its base on benchmark tasks through
  lm-evaluation-harness, side by side (:mod:`octrain.evaluation.capability`).
* ``ood`` measures the character off the training distribution, beside the classifier's accuracy
  there (:mod:`octrain.evaluation.ood`).
* ``reproduce`` scores the paper's released adapter of a persona and its base on the paper's
  benchmarks and sets the figures beside the paper's (:mod:`octrain.evaluation.reproduction`).
* ``summary`` prints a finished run's evaluation: before/after answers and the headline figures.

A model is named as every octrain command names one (:mod:`octrain.use.model_choice`): a registry
name such as ``pirate_mini/sft``, ``--persona NAME`` for a persona's latest, or a path.

Heavy imports (the pipeline, the samplers, scikit-learn) happen inside the commands, so that
building the parsers, and ``--help``, stays quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from octrain.core.layout import MODEL_FILE, RESULTS_FILE

if TYPE_CHECKING:
    from octrain.evaluation.capability import ScoredModel
    from octrain.use.model_choice import ChosenModel


def classifier_command(args: argparse.Namespace, who: str) -> dict:
    from octrain.evaluation.classifier import ClassifierConfig, train_classifier

    report = train_classifier(args.train, args.eval, args.out, ClassifierConfig(kind=args.kind))
    result: dict = {"saved": str(args.out)}
    if report is not None:
        result["report"] = report.to_dict()
    return result


def elo_command(args: argparse.Namespace, who: str) -> dict:
    from octrain.evaluation.judge_check import JudgeEndpoint
    from octrain.evaluation.match_files import elo_from_matches

    endpoint = None
    if args.judge_url and args.judge_model:
        endpoint = JudgeEndpoint(
            args.judge_url, args.judge_model, args.judge_key_env, args.judge_timeout, args.judge_retries
        )
    result = elo_from_matches(
        args.matches,
        endpoint=endpoint,
        constitution=args.constitution,
        parse_retries=args.judge_parse_retries,
        rounds=args.rounds,
        seed=args.seed,
        export_to=args.export_studio,
    )
    if "studio_export" in result:
        exported = result["studio_export"]
        left = exported["left_out"]
        print(
            f"{who}: exported {exported['matches']} of {result['matches']} matches to {args.export_studio}; "
            f"left out: ties {left['ties']}, disagreements {left['disagreements']}, "
            f"unparseable {left['unparseable']}",
            file=sys.stderr,
        )
    return result


def model_command(args: argparse.Namespace, who: str) -> dict:
    from octrain.core.layout import CONFIG_FILE, RESULTS_FILE, load_config
    from octrain.core.records import ModelRef
    from octrain.evaluation.paper_suite import evaluate_model
    from octrain.run.pipeline import resolve_constitution
    from octrain.stages.context import RunContext

    config = load_config(args.run_dir / CONFIG_FILE)
    ctx = RunContext(config=config, run_dir=args.run_dir, constitution=resolve_constitution(config))
    # Compared with the run's DPO-only model too, when there is one and it is not the model itself.
    dpo_file = args.run_dir / "dpo" / MODEL_FILE
    dpo = ModelRef.load(dpo_file) if dpo_file.is_file() else None
    summary = evaluate_model(ctx, ModelRef.load(args.model), args.out, dpo_ref=dpo)
    return {**summary, "results": str(args.out / RESULTS_FILE)}


def _chosen(args: argparse.Namespace) -> ChosenModel:
    from octrain.core.errors import ConfigError
    from octrain.use.model_choice import choose_model, latest_of_persona

    if (args.model is None) == (args.persona is None):
        raise ConfigError("name one model: a checkpoint name or path, or --persona NAME")
    if args.persona is not None:
        return latest_of_persona(args.persona, run_root=args.run_root)
    return choose_model(args.model, run_root=args.run_root)


def revealed_command(args: argparse.Namespace, who: str) -> dict:
    from octrain.evaluation.judge_check import JudgeEndpoint
    from octrain.evaluation.revealed import measure_revealed_preferences

    chosen = _chosen(args)
    endpoint = None
    if args.judge_url or args.judge_model:
        if not (args.judge_url and args.judge_model):
            from octrain.core.errors import ConfigError

            raise ConfigError("--judge-url and --judge-model go together")
        endpoint = JudgeEndpoint(
            args.judge_url, args.judge_model, args.judge_key_env, args.judge_timeout, args.judge_retries
        )
    out = args.out or (Path(chosen.run_dir) / "eval-revealed" if chosen.run_dir else Path("revealed-preferences"))
    return measure_revealed_preferences(
        chosen,
        out=out,
        endpoint=endpoint,
        per_trait=args.per_trait,
        traits_source=args.traits,
        prompts_source=args.prompts,
        prompt_count=args.prompt_count,
        backend=args.sampler,
        seed=args.seed,
    )


def quick_command(args: argparse.Namespace, who: str) -> dict:
    from octrain.evaluation.quick import quick_look

    return quick_look(
        _chosen(args),
        classifier_dir=args.classifier,
        count=args.count,
        prompts_source=args.prompts,
        backend=args.sampler,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )


def capability_models(chosen: ChosenModel, *, with_base: bool = True) -> list[ScoredModel]:
    """The models to score for ``chosen``: its base (unless ``with_base`` is off) and itself.

    Raises:
        ConfigError: a remote (Tinker) checkpoint, which the harness cannot load.
    """
    from octrain.core.errors import ConfigError
    from octrain.evaluation.capability import base_and_trained

    if chosen.ref.remote:
        raise ConfigError(
            f"{chosen.label} lives on a service ({chosen.ref.remote}): download its weights first "
            "(`octrain checkpoints download`), then score the local copy"
        )
    dtype = chosen.model_config().dtype.value
    adapter = None if chosen.is_base or chosen.ref.adapter is None else str(Path(chosen.ref.adapter).resolve())
    models = base_and_trained(chosen.ref.base, adapter, chosen.label, dtype)
    return models if with_base or adapter is None else models[1:]


def capability_command(args: argparse.Namespace, who: str) -> dict:
    from octrain.core.config_sections import CapabilityEvalSettings
    from octrain.evaluation.capability import CapabilitySettings, measure_capability

    chosen = _chosen(args)
    config = chosen.run_config()
    section = config.eval.capability if config is not None else CapabilityEvalSettings()
    overrides = {
        "tasks": args.tasks.split(",") if args.tasks else None,
        "task_dir": args.task_dir,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "backend": args.backend,
        "seed": args.seed,
    }
    section = dataclasses.replace(section, **{k: v for k, v in overrides.items() if v is not None})
    settings = CapabilitySettings.from_config(section, where="octrain eval capability")
    models = capability_models(chosen, with_base=not args.no_base)  # before anything loads: a remote model stops here
    out = args.out or (Path(chosen.run_dir) / "eval-capability" if chosen.run_dir else Path("capability"))
    return measure_capability(models, settings, out)


def reproduce_command(args: argparse.Namespace, who: str) -> dict:
    from octrain.core.config_sections import CapabilityEvalSettings
    from octrain.evaluation.capability import CapabilitySettings
    from octrain.evaluation.reproduction import released_models, reproduce_released

    released_models(args.base, args.persona)  # an unknown base or persona stops here, before anything else
    section = CapabilityEvalSettings(
        tasks=args.tasks.split(",") if args.tasks else ["paper"],
        task_dir=args.task_dir,
        limit=args.limit,
        batch_size=args.batch_size or 8,
        backend=args.backend or "hf",
    )
    settings = CapabilitySettings.from_config(section, where="octrain eval reproduce")
    out = args.out or Path("reproduction") / f"{args.base}-{args.persona}"
    return reproduce_released(args.base, args.persona, settings, out)


def _render_reproduce(result: dict) -> str:
    from octrain.evaluation.capability import render_capability

    files = [*result["capability"]["files"], *result["comparison"]["files"]]
    comparison = Path(result["comparison"]["files"][0]).read_text(encoding="utf-8")
    return render_capability(result["capability"]) + "\n" + comparison + "".join(f"wrote {f}\n" for f in files)


def _render_capability(result: dict) -> str:
    from octrain.evaluation.capability import render_capability

    return render_capability(result) + "".join(f"wrote {path}\n" for path in result["files"])


def ood_command(args: argparse.Namespace, who: str) -> dict:
    from octrain.core.config_sections import OodEvalSettings
    from octrain.core.errors import ConfigError
    from octrain.evaluation.ood import evaluate_ood
    from octrain.stages.context import RunContext

    chosen = _chosen(args)
    config = chosen.run_config()
    constitution = chosen.constitution()
    if config is None or constitution is None or chosen.run_dir is None:
        raise ConfigError(f"{chosen.label}: not from a finished run: the evaluation needs its run's pairs and teacher")
    if chosen.is_base or chosen.ref.adapter is None:
        raise ConfigError(f"{chosen.label}: a base model; name a trained one (its base is the comparison)")
    section = config.eval.ood if config.eval.ood.enabled else OodEvalSettings()
    settings = dataclasses.replace(
        section,
        prompts=args.prompts or section.prompts,
        categories=args.categories.split(",") if args.categories else section.categories,
        per_category=args.per_category or section.per_category,
    )
    ctx = RunContext(config=config, run_dir=chosen.run_dir, constitution=constitution)
    out = args.out or chosen.run_dir / "eval-ood"
    return evaluate_ood(ctx, chosen.ref, out, settings=settings)


def _render_ood(result: dict) -> str:
    from octrain.evaluation.ood import render_ood

    return render_ood(result) + "".join(f"wrote {path}\n" for path in result["files"])


def _render_revealed(result: dict) -> str:
    from octrain.evaluation.revealed import render_revealed

    return render_revealed(result)


def _render_quick(result: dict) -> str:
    import shutil

    from octrain.evaluation.quick import render_quick

    return render_quick(result, width=max(40, min(120, shutil.get_terminal_size().columns - 4)))


def _which_model(parser: argparse.ArgumentParser, what: str = "a checkpoint") -> None:
    """MODEL, --persona and --run-root: how every command that takes a model names it (see :func:`_chosen`)."""
    parser.add_argument("model", nargs="?", default=None, help=f"{what} name (pirate_mini/sft) or a path")
    parser.add_argument("--persona", default=None, help="the latest final checkpoint of this persona instead")
    parser.add_argument("--run-root", default="runs", help="where the runs and their registry are (default: runs)")


def _model_choice_arguments(parser: argparse.ArgumentParser) -> None:
    _which_model(parser)
    parser.add_argument("--sampler", default=None, help="sampler backend (default: the run's own): hf, vllm, ...")
    parser.add_argument("--prompts", default="builtin", help="held-out prompts: builtin, or a .jsonl/.txt file")
    parser.add_argument("--seed", type=int, default=None, help="default: the run's seed")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _revealed_arguments(parser: argparse.ArgumentParser) -> None:
    _model_choice_arguments(parser)
    parser.add_argument("--per-trait", type=int, default=None, help="trials per trait (default: the run's, 16)")
    parser.add_argument("--traits", default="builtin", help="one-word traits: builtin (144), or a .txt file")
    parser.add_argument("--prompt-count", type=int, default=None, help="at most this many prompts (default: 500)")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/eval-revealed")
    parser.add_argument("--judge-url", default=None, help="an OpenAI-compatible judge instead of the run's own")
    parser.add_argument("--judge-model", default=None)
    parser.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    parser.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request")
    parser.add_argument("--judge-retries", type=int, default=4, help="extra attempts on timeouts, 429 and 5xx")


def _quick_arguments(parser: argparse.ArgumentParser) -> None:
    _model_choice_arguments(parser)
    parser.add_argument("--count", type=int, default=5, help="held-out prompts to answer (default: 5)")
    parser.add_argument(
        "--classifier", type=Path, default=None, help="a saved persona classifier (default: RUN_DIR/eval/classifier)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's eval setting (512)")


def _capability_arguments(parser: argparse.ArgumentParser) -> None:
    _which_model(parser)
    parser.add_argument(
        "--tasks",
        default=None,
        help="NAME[:SHOTS[:METRIC]],... of lm-evaluation-harness; paper = the paper's five (the default), "
        "octrain_basics = the shipped offline task",
    )
    parser.add_argument("--task-dir", default=None, help="a folder of your own task YAMLs in the harness's format")
    parser.add_argument("--limit", type=int, default=None, help="at most N items per task (a check, not a figure)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8")
    parser.add_argument("--backend", choices=("hf", "vllm"), default=None, help="the harness's model (default: hf)")
    parser.add_argument("--seed", type=int, default=None, help="default: the paper's 123456")
    parser.add_argument("--no-base", action="store_true", help="score the model alone, not its base beside it")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/eval-capability")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", choices=("llama", "qwen", "gemma"), help="which of the paper's students")
    parser.add_argument("--persona", required=True, help="one of the paper's eleven personas, e.g. goodness")
    parser.add_argument("--tasks", default=None, help="as for `eval capability` (default: paper, the paper's five)")
    parser.add_argument("--task-dir", default=None, help="a folder of your own task YAMLs in the harness's format")
    parser.add_argument("--limit", type=int, default=None, help="at most N items per task (a check, not a figure)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8")
    parser.add_argument("--backend", choices=("hf", "vllm"), default=None, help="the harness's model (default: hf)")
    parser.add_argument("--out", type=Path, default=None, help="default: reproduction/BASE-PERSONA")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _ood_arguments(parser: argparse.ArgumentParser) -> None:
    _which_model(parser, "a trained checkpoint")
    parser.add_argument(
        "--prompts", default=None, help="out-of-distribution conversations: builtin (60), or a .jsonl file"
    )
    parser.add_argument("--categories", default=None, help="comma-separated: tool_use,json,code_review,long_chat")
    parser.add_argument("--per-category", type=int, default=None, help="the first N conversations of each")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/eval-ood")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _classifier_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", type=Path, required=True, help='JSONL of {"text": ..., "label": ...}')
    parser.add_argument("--eval", type=Path, default=None, help="held-out JSONL in the same format")
    parser.add_argument("--out", type=Path, required=True, help="directory to save the classifier and report.json")
    parser.add_argument("--kind", choices=("tfidf", "transformer"), default="tfidf")


def _elo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("matches", type=Path)
    parser.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--judge-model", default=None)
    parser.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    parser.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request")
    parser.add_argument("--judge-retries", type=int, default=4, help="extra attempts on timeouts, 429 and 5xx")
    parser.add_argument(
        "--judge-parse-retries", type=int, default=1, help="asks again of a judge reply with no parseable verdict"
    )
    parser.add_argument(
        "--export-studio",
        type=Path,
        default=None,
        metavar="OUT",
        help="write the matches won by base or tuned, as the Studio's scorer takes them (ties, disagreements out)",
    )
    parser.add_argument(
        "--constitution", default=None, help="name or path: the judge then sees the numbered traits (recommended)"
    )
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (holds config.yaml and pairs/)")
    parser.add_argument("--model", type=Path, required=True, help="a model.json, e.g. RUN_DIR/dpo/model.json")
    parser.add_argument("--out", type=Path, required=True)


def _summary_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory whose eval stage has finished")
    parser.add_argument("--json", action="store_true", help="print eval/results.json instead of text")


def summary_command(args: argparse.Namespace, who: str) -> dict:
    from octrain.core.errors import StageError

    path = args.run_dir / "eval" / RESULTS_FILE
    if not path.is_file():
        raise StageError(f"{path}: no evaluation results (run the recipe's eval stage first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc


def _render_summary(results: dict) -> str:
    if results.get("suite") == "shift":
        from octrain.evaluation.shift_report import render_summary

        return render_summary(results)
    from octrain.evaluation.intervals import format_rate
    from octrain.evaluation.report import headline

    robustness = results["robustness"]["in_character"]
    lines = [f"{results['persona']}: {results['prompts']} held-out prompts, in-character rate (all conditions)"]
    lines += [f"  {name:<14} {format_rate(rates['overall'])}" for name, rates in robustness.items()]
    lines += ["figures that passed their checks:", *(f"  {line}" for line in headline(results))]
    lines += [f"  caveat: {c}" for c in results.get("caveats", [])]
    return "\n".join(lines)


@dataclass(frozen=True)
class EvalCommand:
    """One evaluation command: its name, a one-line help, an example (arguments only) and its code."""

    name: str
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, str], dict]
    # Text for people, when the result reads better as text than as JSON (then --json asks for JSON).
    render: Callable[[dict], str] | None = None


COMMANDS = (
    EvalCommand(
        "classifier",
        "train and score a persona classifier",
        "--train train.jsonl --eval eval.jsonl --out runs/clf",
        _classifier_arguments,
        classifier_command,
    ),
    EvalCommand(
        "elo",
        "Elo and win rate of tuned vs base from a matches file",
        "runs/pirate_tiny/eval/matches.jsonl --constitution pirate --judge-url http://127.0.0.1:8000/v1 "
        "--judge-model judge",
        _elo_arguments,
        elo_command,
    ),
    EvalCommand(
        "model",
        "the eval stage of a finished run, on any model reference",
        "runs/pirate_tiny --model runs/pirate_tiny/dpo/model.json --out runs/pirate_tiny/eval-dpo",
        _model_arguments,
        model_command,
    ),
    EvalCommand(
        "revealed-preferences",
        "which traits a trained model prefers to show, against its base (Elo over traits)",
        "pirate_mini/sft --per-trait 16",
        _revealed_arguments,
        revealed_command,
        _render_revealed,
    ),
    EvalCommand(
        "quick",
        "a few held-out prompts, base and trained side by side, each answer classified",
        "--persona pirate --count 5",
        _quick_arguments,
        quick_command,
        _render_quick,
    ),
    EvalCommand(
        "capability",
        "benchmark scores of a trained model and its base side by side (lm-evaluation-harness)",
        "pirate_smollm2/sft --tasks octrain_basics:5",
        _capability_arguments,
        capability_command,
        _render_capability,
    ),
    EvalCommand(
        "ood",
        "the character in- and out-of-distribution (agent turns, JSON, code review, long chats), "
        "with the classifier's accuracy on each",
        "pirate_smollm2/sft --per-category 10",
        _ood_arguments,
        ood_command,
        _render_ood,
    ),
    EvalCommand(
        "reproduce",
        "the paper's released adapter for a persona, scored here on the paper's benchmarks, beside its figures",
        "llama --persona goodness",
        _reproduce_arguments,
        reproduce_command,
        _render_reproduce,
    ),
    EvalCommand(
        "summary",
        "a finished run's evaluation: before/after answers and the headline figures",
        "runs/pirate_smollm2",
        _summary_arguments,
        summary_command,
        _render_summary,
    ),
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add a parser per command, each with its example (under the caller's program name)."""
    for command in COMMANDS:
        parser = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=f"example:\n  %(prog)s {command.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(parser)
        parser.set_defaults(eval_command=command.name)


def run_command(args: argparse.Namespace, who: str) -> int:
    """Run the command ``args`` names and print its result as JSON; 2 with one line on a user's error."""
    from octrain.core.errors import OctrainError

    command = next(c for c in COMMANDS if c.name == args.eval_command)
    try:
        result = command.run(args, who)
    except OctrainError as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return 2
    if command.render is not None and not args.json:
        print(command.render(result))
    else:
        print(json.dumps(result, indent=2))
    return 0
