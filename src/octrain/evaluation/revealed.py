"""``octrain eval revealed-preferences``: which traits a trained model likes to show, against its base.

The protocol of docs/method.md section 4 (:mod:`octrain.evaluation.protocols`), on its own: the
base and the trained model answer the *same* trials (two traits offered, embody the one you
prefer without naming it), a judge names the trait each answer shows, and
:mod:`octrain.evaluation.trait_preferences` rates the traits for each model and compares the
rankings: the agreement of the two rankings corrected for the trials' noise (1 when training
changed nothing), the raw Spearman and each model's reliability it is corrected by, and the
traits that rose or fell beyond their simultaneous intervals, every figure with an interval from
one paired bootstrap. Too few trials per trait gives wide intervals; the result says so rather
than letting a number stand alone.

The judge is the model's run's judge (its ``eval.judge`` setting: the teacher, or an HTTP
endpoint), or any OpenAI-compatible endpoint given on the command line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from octrain.core.config import JudgeKind, OctrainConfig, SamplingConfig
from octrain.core.errors import ConfigError
from octrain.core.files import write_jsonl, write_text_atomic
from octrain.core.layout import REVEALED_FILE, TRIALS_FILE
from octrain.evaluation.judge_check import JudgeEndpoint, build_judge, http_judge
from octrain.samplers.base import Sampler
from octrain.use.model_choice import ChosenModel


def build_revealed_judge(chosen: ChosenModel, endpoint: JudgeEndpoint | None) -> Sampler:
    """The judge: ``endpoint`` when given, else the run's own judge; an error when neither exists."""
    config = chosen.run_config()
    if endpoint is not None:
        from octrain.core.config import EvalStageConfig

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
    return build_judge(config)


def _settings(config: OctrainConfig | None) -> tuple[SamplingConfig, SamplingConfig, int, int]:
    """(answer sampling, judge sampling, trials per trait, Elo rounds): the run's, else the defaults."""
    from octrain.core.config import EvalStageConfig

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
    from octrain.evaluation.trait_preferences import preference_summary
    from octrain.evaluation.traits import load_traits
    from octrain.samplers.base import SamplingParams
    from octrain.use.model_choice import sampler_settings

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
    revealed = {name: protocols.judge_trials(judge, trials[name], judge_params, retries=retries) for name in trials}
    judge.close()

    summary = preference_summary(revealed, traits=traits, rounds=rounds, seed=seed)
    summary["per_trait"] = per_trait
    summary["traits"] = len(traits)
    summary["prompts"] = len(prompts)
    summary["caveats"] = notes + caveats(summary)
    write_jsonl(
        out / TRIALS_FILE,
        ({"model": name, **dataclasses.asdict(trial)} for name, result in revealed.items() for trial in result.trials),
    )
    result = {"model": chosen.label, "out": str(out), **summary}
    write_text_atomic(out / REVEALED_FILE, json.dumps(result, indent=2) + "\n")
    return result


def caveats(summary: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the numbers (:mod:`octrain.evaluation.caveats`)."""
    from octrain.evaluation import caveats as check

    return check.present(
        check.few_trials_per_trait(summary["per_trait"]),
        check.unreadable_judge("revealed preferences", summary["unparseable"], 2 * summary["trials"]),
        summary["agreement"]["note"],
    )


def render_revealed(result: dict[str, Any], top: int = 10) -> str:
    """The summary as text: the verdict, the corrected agreement, and the traits that moved beyond their intervals."""
    from octrain.evaluation.report import preference_figures

    lines = [
        f"revealed preferences of {result['model']}: {result['trials']} trials per model, "
        f"{result['per_trait']} per trait, {result['traits']} traits, {result['prompts']} held-out prompts",
        *preference_figures(result, top=top),
        f"judge answers unparseable: {result['unparseable']} of {2 * result['trials']}",
    ]
    lines.extend(f"caveat: {caveat}" for caveat in result["caveats"])
    lines.extend(f"note: {note}" for note in result["notes"])
    lines.append(f"saved: {Path(result['out']) / REVEALED_FILE}, {Path(result['out']) / TRIALS_FILE}")
    return "\n".join(lines)
