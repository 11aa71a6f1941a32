"""``octrain eval revealed-preferences``: which traits a trained model likes to show, against its base.

The protocol of METHOD.md section 4 (:mod:`octrain.evaluation.protocols`), on its own: the
base and the trained model answer the *same* trials (two traits offered, embody the one you
prefer without naming it), a judge names the trait each answer shows, and Elo over traits
ranks what each model likes to be. Reported: the traits that rose and fell most, the Spearman
correlation of the two rankings with a paired bootstrap interval, and each model's split-half
reliability, the noise floor that correlation must be read against (a ranking that does not
agree with itself says nothing when it disagrees with the other). Too few trials per trait
gives wide intervals; the result says so rather than letting a number stand alone.

The judge is the model's run's judge (its ``eval.judge`` setting: the teacher, or an HTTP
endpoint), or any OpenAI-compatible endpoint given on the command line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from octrain.config import JudgeKind, OctrainConfig, SamplingConfig
from octrain.errors import ConfigError
from octrain.jsonl import write_jsonl, write_text_atomic
from octrain.model_choice import ChosenModel
from octrain.samplers.base import Sampler

RESULT_FILE = "revealed_preferences.json"
TRIALS_FILE = "trials.jsonl"
# Below this many trials per trait, a trait's rating rests on a handful of judgements and its
# interval spans most of the ranking (the method's setting is 16).
FEW_TRIALS_PER_TRAIT = 8


@dataclasses.dataclass(frozen=True)
class JudgeEndpoint:
    """An OpenAI-compatible judge given on the command line (the key is read from ``api_key_env``)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 4


def build_revealed_judge(chosen: ChosenModel, endpoint: JudgeEndpoint | None) -> Sampler:
    """The judge: ``endpoint`` when given, else the run's own judge; an error when neither exists."""
    from octrain.evaluation.judge_check import http_judge

    config = chosen.run_config()
    if endpoint is not None:
        from octrain.config import EvalStageConfig

        settings = EvalStageConfig(
            judge=JudgeKind.http,
            judge_base_url=endpoint.base_url,
            judge_model=endpoint.model,
            judge_api_key_env=endpoint.api_key_env,
            judge_timeout=endpoint.timeout,
            judge_retries=endpoint.retries,
        )
        return http_judge(settings)
    if config is None:
        raise ConfigError(f"{chosen.label} comes with no run, so no run's judge: pass --judge-url and --judge-model")
    from octrain.stages.evaluate import build_judge

    return build_judge(config)


def _settings(config: OctrainConfig | None) -> tuple[SamplingConfig, SamplingConfig, int, int]:
    """(answer sampling, judge sampling, trials per trait, Elo rounds): the run's, else the defaults."""
    from octrain.config import EvalStageConfig

    settings = config.eval if config is not None else EvalStageConfig()
    return settings.sampling, settings.judge_sampling, settings.trials_per_trait, settings.elo_rounds


def measure_revealed_preferences(
    chosen: ChosenModel,
    *,
    out: Path,
    endpoint: JudgeEndpoint | None = None,
    per_trait: int | None = None,
    traits_source: str = "builtin",
    prompts_source: str = "builtin",
    prompt_count: int | None = None,
    backend: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Base and trained answer the same trials; the judge names the traits; Elo ranks them.

    Writes ``out/revealed_preferences.json`` (the summary) and ``out/trials.jsonl`` (every
    trial: prompt, the two traits, both answers, the judge's choice). Inputs are checked
    before any model loads.
    """
    from octrain.evaluation import protocols
    from octrain.evaluation.side_by_side import base_and_trained, heldout_prompts
    from octrain.evaluation.traits import load_traits
    from octrain.model_choice import sampler_settings
    from octrain.samplers.base import SamplingParams
    from octrain.stages.evaluate import preference_summary

    config = chosen.run_config()
    sampling, judge_sampling, run_per_trait, rounds = _settings(config)
    per_trait = run_per_trait if per_trait is None else per_trait
    if per_trait < 1:
        raise ConfigError(f"--per-trait must be at least 1, got {per_trait}")
    seed = (config.seed if config is not None else 0) if seed is None else seed
    traits = load_traits(traits_source)
    count = prompt_count or (config.eval.prompt_count if config is not None else 500)
    prompts, notes = heldout_prompts(chosen, prompts_source, count, seed=seed)
    plan = protocols.plan_trials(prompts, traits, per_trait=per_trait, seed=seed)
    trials = {name: protocols.copy_trials(plan) for name in ("base", "trained")}
    params = SamplingParams.from_config(sampling, seed=seed)
    judge_params = SamplingParams.from_config(judge_sampling, seed=seed)
    judge = build_revealed_judge(chosen, endpoint)  # a missing key for an HTTP judge fails here, before the models
    out.mkdir(parents=True, exist_ok=True)

    # Over a thousand trials: the run's data-parallel engines are worth starting here.
    with base_and_trained(chosen, sampler_settings(chosen, backend, single_engine=False)) as model:
        for name, trained in (("base", False), ("trained", True)):
            protocols.answer_trials(model(trained), trials[name], params, f"revealed preferences ({name})")
    retries = config.eval.judge_parse_retries if config is not None else 1
    revealed = {
        name: protocols.judge_trials(judge, trials[name], judge_params, rounds=rounds, seed=seed, retries=retries)
        for name in trials
    }
    judge.close()

    summary = preference_summary(revealed, rounds=rounds, seed=seed)
    summary["per_trait"] = per_trait
    summary["traits"] = len(traits)
    summary["prompts"] = len(prompts)
    summary["notes"] = notes + caveats(summary)
    write_jsonl(
        out / TRIALS_FILE,
        ({"model": name, **dataclasses.asdict(trial)} for name, result in revealed.items() for trial in result.trials),
    )
    result = {"model": chosen.label, "out": str(out), **summary}
    write_text_atomic(out / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return result


def caveats(summary: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the numbers."""
    notes = []
    if summary["per_trait"] < FEW_TRIALS_PER_TRAIT:
        notes.append(
            f"{summary['per_trait']} trials per trait (the method uses 16): each trait's rating rests on a "
            "handful of judgements, so its rank is mostly noise"
        )
    judged = 2 * summary["trials"]
    if judged and summary["unparseable"] / judged > 0.1:
        notes.append(f"{summary['unparseable']} of {judged} judge answers could not be read and were left out")
    halves = [value for value in summary["split_half"].values() if value is not None]
    if summary["spearman"] is not None and halves and summary["spearman"] >= min(halves):
        notes.append(
            "the two rankings agree with each other at least as well as a model's two halves agree with "
            "themselves: no sign that training changed the trait ranking"
        )
    if summary["spearman"] is None:
        notes.append("too few traits were rated for both models to compare their rankings")
    return notes


def render_revealed(result: dict[str, Any], top: int = 10) -> str:
    """The summary as text: the traits that moved most, the rank correlation and its noise floor."""
    lines = [
        f"revealed preferences of {result['model']}: {result['trials']} trials per model, "
        f"{result['per_trait']} per trait, {result['traits']} traits, {result['prompts']} held-out prompts"
    ]
    for label, key in (("rose most (trained - base Elo)", "rose"), ("fell most", "fell")):
        moved = result[key][:top]
        lines.append(f"{label}: " + (", ".join(f"{trait} {delta:+.0f}" for trait, delta in moved) or "none"))
    interval = result["spearman_ci"]
    spearman = result["spearman"]
    halves = result["split_half"]

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines.append(
        f"ranking agreement base vs trained: Spearman {number(spearman)}"
        + (f" (95% CI {interval[0]:.2f} to {interval[1]:.2f})" if interval else "")
        + f"; split-half reliability: base {number(halves.get('base'))}, trained {number(halves.get('trained'))}"
    )
    lines.append(f"judge answers unparseable: {result['unparseable']}")
    lines.extend(f"note: {note}" for note in result["notes"])
    lines.append(f"saved: {Path(result['out']) / RESULT_FILE}, {Path(result['out']) / TRIALS_FILE}")
    return "\n".join(lines)
