"""Wizard: a beginner's path from a description to a trained character, one step at a time.

Describe (or pick a shipped persona) -> review the constitution -> preview data -> choose the
hardware -> launch -> chat. Each step is drawn by the page that does it in full, with the same
calls: the constitution checks and saving of :mod:`.constitutions`, the preview of
:mod:`.data_preview`, the config check and launch of :mod:`.train` (:mod:`octrain.studio.jobs`).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

STEP_KEY = "wz_step"
STEPS = ("Describe", "Review", "Preview", "Hardware", "Launch", "Chat")
# The hardware a beginner has, and the recipe that fits it.
HARDWARE = {
    "This computer's CPU (the tiny offline model: checks the plumbing, minutes)": "pirate_tiny",
    "One GPU with 80 GB (Qwen3-32B teaches Qwen3-4B)": "pirate_mini",
    "Tinker's hosted API (no GPU; needs TINKER_API_KEY)": "pirate_tinker",
}


def _go(step: int) -> None:
    st.session_state[STEP_KEY] = step


def _nav(step: int, *, ready: bool = True) -> None:
    back, forward, _ = st.columns([1, 1, 5])
    if step > 0:
        back.button("Back", on_click=_go, args=(step - 1,), key=f"wz_back_{step}")
    if step < len(STEPS) - 1:
        forward.button(
            "Next", on_click=_go, args=(step + 1,), type="primary", disabled=not ready, key=f"wz_next_{step}"
        )


def _describe() -> None:
    from octrain.studio.views import constitutions

    st.write("Start from one of the shipped characters, or describe yours and let a model draft it.")
    entries = [e for e in constitutions.gallery() if e.constitution is not None and not e.shadowed]
    pick = st.selectbox("start from", [e.path.stem for e in entries], key="wz_template")
    name = st.text_input("your character's name", key="wz_name", placeholder=f"my_{pick}").strip() or f"my_{pick}"
    if st.button("Use this one", key="wz_use"):
        entry = next(e for e in entries if e.path.stem == pick)
        constitutions._open_in_editor(constitutions.editor_text(entry), name)
        _go(1)
        st.rerun()
    st.divider()
    constitutions._draw_drafting()
    _nav(0, ready=bool(st.session_state.get(constitutions.PENDING_KEY) or st.session_state.get(constitutions.TEXT_KEY)))


def _review() -> None:
    from octrain.studio.views import constitutions

    constitutions._take_pending()
    st.session_state.setdefault(constitutions.TEXT_KEY, "")
    st.session_state.setdefault(constitutions.NAME_KEY, "my_persona")
    left, right = st.columns([3, 2])
    with left:
        name = st.text_input("name", key=constitutions.NAME_KEY)
        text = st.text_area("the constitution (Studio YAML)", key=constitutions.TEXT_KEY, height=420)
        overwrite = st.checkbox("overwrite a constitution of the same name", key="wz_overwrite")
        save = st.button("Save", type="primary", key="wz_save")
    with right:
        checked = constitutions._draw_checks(text, name.strip() or "draft")
    if save and checked is not None:
        with left:
            constitutions._save(text, name.strip(), overwrite)
        st.session_state["wz_persona"] = name.strip()
    saved = st.session_state.get("wz_persona")
    if saved:
        st.caption(f"saved as {saved}: the next steps use it")
    _nav(1, ready=bool(saved))


def _preview() -> None:
    from octrain.core.compose import compose_config
    from octrain.samplers import release_engines
    from octrain.studio.state import COMPOSE_LOCK, model_lock
    from octrain.studio.views import data_preview

    persona = st.session_state.get("wz_persona", "")
    st.write(f"A few prompts for **{persona}**, answered by the tiny offline model as teacher and student.")
    if st.button("Preview 3 prompts", key="wz_preview"):
        with COMPOSE_LOCK:
            config = compose_config("pirate_tiny", [f"constitution={persona}"])
        bar = st.progress(0.0, text="previewing: starting")
        with model_lock(), st.spinner("sampling..."):
            try:
                st.session_state["wz_rows"] = data_preview.preview(
                    config, 3, countdown=data_preview.show_countdown(bar)
                )
            finally:
                release_engines()
    for row in st.session_state.get("wz_rows", []):
        with st.container(border=True):
            st.markdown(f"**{row.prompt}** · {row.verdict}")
            a, b = st.columns(2)
            a.caption("teacher")
            a.write(row.teacher)
            b.caption("student")
            b.write(row.student)
    _nav(2)


def _hardware() -> None:
    choice = st.radio("what do you have?", list(HARDWARE), key="wz_hardware")
    st.session_state["wz_recipe"] = HARDWARE[choice]
    _nav(3)


def _launch() -> None:
    from octrain.studio import jobs
    from octrain.studio.state import run_root
    from octrain.studio.views.train import compose_and_check

    persona = st.session_state.get("wz_persona", "")
    recipe = st.session_state.get("wz_recipe", "pirate_tiny")
    overrides = [f"constitution={persona}", f"name={persona}_{recipe.split('_', 1)[-1]}"]
    root = run_root()
    composed = compose_and_check(recipe, tuple(overrides), str(root), str(Path.cwd()))
    if composed.error:
        st.error(composed.error)
    else:
        st.success(f"ready: {recipe} with {persona}, into {composed.run_dir}")
    if st.button("Launch", type="primary", disabled=composed.error is not None, key="wz_launch"):
        assert composed.run_dir is not None
        try:
            job = jobs.launch(recipe, overrides, run_dir=composed.run_dir, run_root=root, stages=composed.stages)
        except jobs.JobError as exc:
            st.error(str(exc))
        else:
            st.session_state["wz_run"] = str(composed.run_dir)
            st.session_state["runs_selected"] = str(composed.run_dir)
            st.success(f"launched (pid {job.pid}); the Runs page follows it")
    run = st.session_state.get("wz_run")
    if run:
        _follow(Path(run))
    _nav(4, ready=bool(run) and jobs.status(Path(run)).state == "finished")


def _follow(run_dir: Path) -> None:
    """The launched run's progress, as the Runs page shows it, redrawn every couple of seconds while it runs."""
    from octrain.studio import jobs
    from octrain.studio.views.runs import REFRESH_SECONDS, progress_bars

    live = jobs.status(run_dir).state == "running"

    @st.fragment(run_every=REFRESH_SECONDS if live else None)
    def panel() -> None:
        status = jobs.status(run_dir)
        st.markdown(f"**{run_dir.name}: {status.state}**")
        progress_bars(status, jobs.console_tail(run_dir, 1))
        if live and status.state != "running":
            st.rerun()  # the run ended: draw the page again (the Next button, the chat)

    panel()


def final_checkpoint(run_dir: Path, root: Path) -> str | None:
    """The registry name of the run's final model (its sft checkpoint, else its dpo one), once registered."""
    from octrain.core.layout import REGISTRY_FILE
    from octrain.use.registry import Registry

    if not (root / REGISTRY_FILE).is_file():
        return None
    mine = {entry.stage: entry.name for entry in Registry.at(root).entries() if Path(entry.run_dir) == run_dir}
    return mine.get("sft") or mine.get("dpo")


def _chat() -> None:
    from octrain.studio.chat_choice import Choice
    from octrain.studio.state import run_root
    from octrain.studio.views import chat

    run = st.session_state.get("wz_run")
    root = run_root()
    name = final_checkpoint(Path(run).resolve(), root) if run else None
    if name is None:
        st.info("When the run has finished, its final checkpoint appears here to talk to.")
        _nav(5)
        return
    st.write(f"Talk to **{name}**. The **Chat and compare** page has every setting, and puts it beside its base.")
    choice = Choice(name, False, False, None, None, None, 0, "")
    chat.chat_panel(choice, root)
    _nav(5)


def render() -> None:
    st.title("Wizard")
    step = int(st.session_state.get(STEP_KEY, 0))
    st.progress((step + 1) / len(STEPS), text=f"step {step + 1} of {len(STEPS)}: {STEPS[step]}")
    (_describe, _review, _preview, _hardware, _launch, _chat)[step]()
