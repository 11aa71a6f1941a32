"""Data preview: a handful of prompts, the teacher's and the student's answers side by side, and each pair's verdict.

Before anyone commits to a run: the config is the recipe's (:func:`octrain.core.compose.compose_config`
with the form's overrides), and what the page shows is :func:`octrain.stages.pairs_preview.preview_pairs`:
the prompts stage's own prompts (one a trait), both sides' answers with the pairs stage's sampling
and seeds, and the pairs stage's filters, applied to each prompt on its own so that each keeps its
own verdict ("kept", or the filter that drops it). A progress bar counts the work done and
estimates the time left (:class:`octrain.studio.progress.Countdown`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from octrain.studio.progress import Countdown

RESULTS_KEY = "preview_results"


def preview(
    config: Any,
    count: int,
    report: Callable[[str], None] | None = None,
    countdown: Callable[[Countdown], None] | None = None,
) -> list[Any]:
    """``count`` prompts answered by the config's teacher and student, each with the pairs filters' verdict.

    The rows are :class:`octrain.stages.pairs_preview.PairPreview`. ``report`` gets a line per step;
    ``countdown`` the progress after each unit of work (a model loaded, a prompt answered).
    """
    from octrain.stages.pairs_preview import preview_pairs

    progress = Countdown(total=1)

    def advanced(done: int, total: int) -> None:
        progress.total, progress.done = total, done
        if countdown is not None:
            countdown(progress)

    return preview_pairs(config, count, report=report, on_progress=advanced)


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
    from octrain.studio.state import COMPOSE_LOCK, error_line, model_lock
    from octrain.studio.views.train import RECIPES_OWN, build_overrides, group_choices, persona_choices

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
            with COMPOSE_LOCK:
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
