"""Wizard: a beginner's path from a description to a trained character, one step at a time.

Describe (or pick a shipped persona) -> review the constitution -> preview data -> choose the
hardware -> launch -> chat. Each step is drawn by the page that does it in full, with the same
calls: the constitution checks and saving of :mod:`.constitutions`, the preview of
:mod:`.data_preview`, the config check and launch of :mod:`.train` (:mod:`octrain.studio.jobs`).

The chat opens as soon as the run's last training stage (``sft``, or ``dpo`` in a run without it)
has finished and registered its model: the evaluation after it takes most of a run's time (81%
of the CPU demo's), and a beginner need not wait for it to talk to the character. The run goes on
with it in the background, and the chat step says so.
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
    model = final_checkpoint(Path(run), root) if run else None
    if run:
        _follow(Path(run), root, model_ready=model is not None)
        if model is not None and jobs.status(Path(run)).state == "running":
            st.success(f"**{model}** is trained: talk to it now (Next); the run goes on with its evaluation.")
    _nav(4, ready=model is not None)


def _follow(run_dir: Path, root: Path, *, model_ready: bool) -> None:
    """The launched run's progress, as the Runs page shows it, redrawn every couple of seconds while it runs."""
    from octrain.studio import jobs
    from octrain.studio.views.runs import REFRESH_SECONDS, progress_bars

    live = jobs.status(run_dir).state == "running"

    @st.fragment(run_every=REFRESH_SECONDS if live else None)
    def panel() -> None:
        status = jobs.status(run_dir)
        st.markdown(f"**{run_dir.name}: {status.state}**")
        progress_bars(status, jobs.console_tail(run_dir, 1))
        if live and (status.state != "running" or (not model_ready and final_checkpoint(run_dir, root))):
            st.rerun()  # the run ended, or its model is ready: draw the page again (the Next button, the chat)

    panel()


# The stages that train a model to talk to, in the order a run makes them: the last one a run has is its final model.
TRAINING_STAGES = ("dpo", "sft")


def final_checkpoint(run_dir: Path, root: Path) -> str | None:
    """The registry name of the run's final model, as soon as the stage that makes it has finished:
    its sft checkpoint (its dpo one in a run without sft), whether or not later stages (eval) are
    still running. None until then.

    While the run is running, the model counts once this launch is past that stage: the stage
    finished in it, or a later stage began in it. A model finished before the launch began may
    be about to be trained again (the settings changed); only the pipeline knows, at that stage.
    """
    from octrain.core.layout import DONE_FILE, REGISTRY_FILE, STARTED_FILE
    from octrain.studio import jobs
    from octrain.use.registry import Registry

    run_dir = run_dir.resolve()  # the registry records absolute run directories
    status = jobs.status(run_dir)
    markers = dict(status.stages)
    final = next((stage for stage in reversed(TRAINING_STAGES) if stage in markers), None)
    if final is None or markers[final] != "done" or not (root / REGISTRY_FILE).is_file():
        return None
    if status.state == "running" and status.job is not None:
        order = [stage for stage, _ in status.stages]
        later = order[order.index(final) + 1 :]
        marked = [run_dir / final / DONE_FILE]
        marked += [run_dir / stage / marker for stage in later for marker in (STARTED_FILE, DONE_FILE)]
        if not any(_written_since(path, status.job.started) for path in marked):
            return None
    mine = {entry.stage: entry.name for entry in Registry.at(root).entries() if Path(entry.run_dir) == run_dir}
    return mine.get(final)


def _written_since(path: Path, moment: float) -> bool:
    try:
        return path.stat().st_mtime >= moment
    except OSError:
        return False


def _chat() -> None:
    from octrain.studio import jobs
    from octrain.studio.chat_choice import Choice
    from octrain.studio.state import run_root
    from octrain.studio.views import chat

    run = st.session_state.get("wz_run")
    root = run_root()
    name = final_checkpoint(Path(run), root) if run else None
    if name is None:
        st.info("When the run has trained its final model (its sft stage), the model appears here to talk to.")
        _nav(5)
        return
    status = jobs.status(Path(run))
    if status.state == "running":
        rest = [stage for stage, marker in status.stages if marker != "done"]
        st.info(
            f"The run goes on in the background with {', '.join(rest) or 'its last steps'}: its evaluation report "
            "appears on the **Evaluate** page when it is done, and talking here does not stop it. On a GPU, the "
            "chat and the evaluation share its memory.",
            icon=":material/hourglass_top:",
        )
    st.write(f"Talk to **{name}**. The **Chat and compare** page has every setting, and puts it beside its base.")
    choice = Choice(name, False, False, None, None, None, 0, "")
    chat.chat_panel(choice, root)
    _nav(5)


def render() -> None:
    st.title("Wizard")
    step = int(st.session_state.get(STEP_KEY, 0))
    st.progress((step + 1) / len(STEPS), text=f"step {step + 1} of {len(STEPS)}: {STEPS[step]}")
    (_describe, _review, _preview, _hardware, _launch, _chat)[step]()
