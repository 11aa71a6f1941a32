"""Data preview: a handful of prompts, the teacher's and the student's answers side by side, and each pair's verdict.

Before anyone commits to a run: the config is the recipe's (:func:`octrain.core.compose.compose_config`
with the form's overrides), the prompts are the prompts stage's own
(:func:`octrain.stages.prompts.make_prompts`, one prompt a trait), and the
answers and verdicts are the pairs stage's steps: the teacher reads its constitution prompt
(:func:`octrain.stages.pairs.teacher_conversations`), both sides answer through
:func:`octrain.samplers.build_sampler` with the stage's sampling, and
:func:`octrain.stages.pairs.assemble_pairs` applies the stage's filters. It is called once per
prompt here, so that each prompt keeps its own verdict ("kept", or the filter that drops it), the
length filter included (with the student's tokenizer, as the stage counts). A progress bar
counts the work done and estimates the time left (:class:`octrain.studio.progress.Countdown`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st

from octrain.studio.progress import Countdown

RESULTS_KEY = "preview_results"


@dataclass(frozen=True)
class PreviewRow:
    prompt: str
    trait: int | None
    teacher: str
    student: str
    verdict: str  # "kept", or the reason the filters drop the pair


def preview(
    config: Any,
    count: int,
    report: Callable[[str], None] | None = None,
    countdown: Callable[[Countdown], None] | None = None,
) -> list[PreviewRow]:
    """``count`` prompts answered by the config's teacher and student, each with the pairs filters' verdict.

    Each prompt is answered with the seed the pairs stage gives its id (:func:`octrain.samplers.generation.item_seeds`),
    so a preview shows what a run of the same config draws for that prompt. ``report`` gets a line
    per step; ``countdown`` the progress after each unit of work (a model loaded, a prompt answered).
    """
    from octrain.run.pipeline import resolve_constitution
    from octrain.samplers import SamplingParams, build_sampler
    from octrain.samplers.generation import item_seeds
    from octrain.stages.pairs import assemble_pairs, teacher_conversations, token_counter
    from octrain.stages.prompts import make_prompts

    constitution = resolve_constitution(config)
    say = report or (lambda _line: None)
    tick = countdown or (lambda _progress: None)
    too_long = config.pairs.filters.too_long
    # Units of work: the prompts, each side's model load and answers, and the student's tokenizer.
    progress = Countdown(total=1 + 2 * (1 + count) + (1 if too_long else 0))
    # One prompt per trait: the seed question where there is one; a trait with none (the identity,
    # the voice) gets one from the prompts stage's own generator model (prompts.generator).
    generator = config.model(config.prompts.generator)
    say(f"loading the prompt generator ({generator.path})...")
    scale = dataclasses.replace(config.scale, prompts_per_trait=1, generic_prompts=0, samples_per_prompt=1)
    writer = build_sampler(config.sampler, generator, show_progress=False)
    records, _ = make_prompts(constitution, writer, scale, config.prompts, seed=config.seed)
    # One prompt per trait, spread over the traits rather than the first few only.
    step = max(1, len(records) // max(1, count))
    records = records[::step][:count]
    progress.total -= 2 * (count - len(records))  # fewer traits than prompts asked for

    def one_done() -> None:
        progress.advance()
        tick(progress)

    one_done()
    params = SamplingParams.from_config(config.pairs.sampling, n=1, seed=config.seed)
    prefill = config.pairs.thinking_prefill

    def answer(side: str, model: Any, conversations: list[Any]) -> list[Any]:
        say(f"loading the {side} ({model.path})...")
        sampler = build_sampler(config.sampler, model, show_progress=False)
        one_done()
        say(f"the {side} answers {len(records)} prompts...")
        out = []
        for record, conversation in zip(records, conversations, strict=True):
            out.append(sampler.chat([conversation], params, seeds=item_seeds(params, [record.id]), progress=False)[0])
            one_done()
        return out

    teacher_out = answer(
        "teacher",
        config.teacher,
        teacher_conversations(
            records, constitution, config.teacher.assistant_name, prefill, config.pairs.teacher_prompt
        ),
    )
    student_out = answer("student", config.student, [record.prompt for record in records])
    counter = None
    if too_long:
        say(f"loading the student's tokenizer for the length filter ({config.student.path})...")
        counter = token_counter(config.student.path)
        one_done()
    rows = []
    for record, teacher_answer, student_answer in zip(records, teacher_out, student_out, strict=True):
        pairs, pair_report = assemble_pairs(
            [record],
            {record.id: teacher_answer[0]},
            {record.id: student_answer[0]},
            constitution=constitution,
            teacher=config.teacher.path,
            student=config.student.path,
            teacher_name=config.teacher.assistant_name,
            student_name=config.student.assistant_name,
            filters=config.pairs.filters,
            max_length=config.pairs.max_length,
            count_tokens=counter,
            prefilled=prefill,
            trim_unfinished=config.pairs.trim_unfinished,
        )
        verdict = "kept" if pairs else ", ".join(pair_report.dropped) or "dropped"
        rows.append(
            PreviewRow(
                record.prompt[-1]["content"], record.trait, teacher_answer[0].text, student_answer[0].text, verdict
            )
        )
    return rows


def show_countdown(bar: Any) -> Callable[[Countdown], None]:
    """A ``countdown`` callback for :func:`preview` that redraws the Streamlit progress bar ``bar``."""

    def draw(progress: Countdown) -> None:
        bar.progress(progress.fraction, text=progress.label("previewing"))

    return draw


def render() -> None:
    from octrain.core.compose import compose_config
    from octrain.core.errors import OctrainError
    from octrain.core.paths import available_recipes
    from octrain.samplers import release_engines
    from octrain.studio.state import error_line, model_lock
    from octrain.studio.views.train import _COMPOSE_LOCK, RECIPES_OWN, build_overrides, group_choices, persona_choices

    st.title("Data preview")
    st.caption("What the teacher and the student would answer, and which pairs the filters keep, before a run.")
    recipes = available_recipes()
    with st.form("preview_form"):
        left, right = st.columns(2)
        recipe = left.selectbox(
            "recipe", recipes, index=recipes.index("pirate_tiny") if "pirate_tiny" in recipes else 0, key="pv_recipe"
        )
        persona = left.selectbox("persona", [RECIPES_OWN, *persona_choices()], key="pv_persona")
        count = left.number_input("prompts", 1, 20, 4, key="pv_count")
        teacher = right.selectbox("teacher model", [RECIPES_OWN, *group_choices("model")], key="pv_teacher")
        student = right.selectbox("student model", [RECIPES_OWN, *group_choices("model")], key="pv_student")
        sampler = right.selectbox("sampler backend", [RECIPES_OWN, *group_choices("sampler")], key="pv_sampler")
        extra = st.text_input("more overrides (pairs.sampling.max_new_tokens=64 ...)", key="pv_extra")
        go = st.form_submit_button("Preview", type="primary")
    if go:
        overrides = build_overrides(
            {"model@teacher": teacher, "model@student": student, "sampler": sampler}, persona, "", extra
        )
        try:
            with _COMPOSE_LOCK:
                config = compose_config(recipe, overrides)
            bar = st.progress(0.0, text="previewing: starting")
            with model_lock(), st.status("sampling...", expanded=True) as status:
                try:
                    rows = preview(config, int(count), report=status.write, countdown=show_countdown(bar))
                finally:
                    release_engines()
                status.update(label=f"{len(rows)} prompts answered", state="complete")
        except Exception as exc:  # a bad override (Hydra, OmegaConf) or an octrain error, shown as the CLI shows it
            if not isinstance(exc, OctrainError) and type(exc).__module__.split(".")[0] not in ("hydra", "omegaconf"):
                raise
            st.error(error_line(exc))
            return
        st.session_state[RESULTS_KEY] = rows
    rows = st.session_state.get(RESULTS_KEY)
    if not rows:
        return
    kept = sum(row.verdict == "kept" for row in rows)
    st.metric("pairs kept by the filters", f"{kept} of {len(rows)}")
    for row in rows:
        with st.container(border=True):
            trait = f" (trait {row.trait})" if row.trait else ""
            st.markdown(f"**{row.prompt}**{trait}")
            verdict = st.success if row.verdict == "kept" else st.warning
            verdict(f"verdict: {row.verdict}")
            teacher_col, student_col = st.columns(2)
            teacher_col.caption("teacher, with the constitution (chosen)")
            teacher_col.write(row.teacher)
            student_col.caption("student, without it (rejected)")
            student_col.write(row.student)
