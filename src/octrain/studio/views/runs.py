"""Runs: every run under the run root, its stages, progress, loss curves and log; stop and resume.

What is shown is read from the run directory as the pipeline writes it (``config.yaml``, each
stage's ``started.json``/``done.json``, ``metrics.jsonl`` and ``training.png``, ``octrain.log``),
so a run started from a shell shows the same as one launched here. While a run is going, the
detail panel redraws itself every couple of seconds (a Streamlit fragment), without blocking the
rest of the page.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import streamlit as st

from octrain.studio.progress import bar_label, duration_text, parse_bar

REFRESH_SECONDS = 2.0
SELECTED_KEY = "runs_selected"
STATE_ICONS = {
    "running": ":material/progress_activity:",
    "finished": ":material/check_circle:",
    "failed": ":material/error:",
    "stopped": ":material/stop_circle:",
    "incomplete": ":material/pending:",
}
MARKER_LABELS = {"done": "done", "started": "started", "missing": "not started"}
# The curves worth drawing, where a trainer logged them (TRL's names, and octrain's DPO split).
CURVES = ("loss", "dpo_loss", "nll_loss", "eval_loss")


def loss_table(run_dir: Path, stage: str) -> dict[str, list[Any]] | None:
    """Loss columns by step from the stage's ``metrics.jsonl`` (:func:`octrain.trainers.report.read_metrics`)."""
    from octrain.core.layout import METRICS_FILE
    from octrain.trainers.report import read_metrics

    rows = [row for row in read_metrics(run_dir / stage / METRICS_FILE) if "step" in row]
    columns = [name for name in CURVES if any(name in row for row in rows)]
    if not rows or not columns:
        return None
    table: dict[str, list[Any]] = {"step": [row["step"] for row in rows]}
    for name in columns:
        table[name] = [row.get(name) for row in rows]
    return table


def progress_bars(status: Any, console: list[str]) -> None:
    """A run's progress: stages done, elapsed time and the stage now running; under it the bar of
    the step now running (sampling, training) with its count and time left, and the run's error.

    ``console`` is the tail of the run's console (:func:`octrain.studio.jobs.console_tail`): its
    last line is the bar the running step draws.
    """
    total = len(status.stages) or 1
    current = next((stage for stage, marker in status.stages if marker != "done"), None)
    last = console[-1] if console else ""
    label = f"{status.done_count} of {len(status.stages)} stages done · {duration_text(status.elapsed)}"
    if status.state == "running" and current:
        label += f" · now: {current}"
    st.progress(status.done_count / total, text=label)
    if status.state == "running" and last:
        # The step now running draws a tqdm bar (sampling, training): its count and time left.
        bar = parse_bar(last)
        if bar is not None:
            st.progress(bar.fraction, text=bar_label(bar))
        else:
            st.caption(last.strip()[:200])
    if status.error:
        st.error(status.error)


def _overview(runs: list[Path], root: Path) -> None:
    from octrain.studio import jobs

    rows = []
    for run_dir in runs:
        status = jobs.status(run_dir)
        rows.append(
            {
                "run": str(run_dir.relative_to(root)),
                "state": status.state,
                "stages": f"{status.done_count}/{len(status.stages)}",
                "elapsed": duration_text(status.elapsed),
                "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(run_dir.stat().st_mtime)),
            }
        )
    st.dataframe(rows, hide_index=True, width="stretch")


def _buttons(run_dir: Path, state: str, key: str) -> None:
    from octrain.studio import jobs

    if state == "running":
        if st.button("Stop", key=f"stop_{key}", icon=":material/stop:"):
            try:
                jobs.stop(run_dir)
                st.toast(f"stopping {run_dir.name}")
            except jobs.JobError as exc:
                st.error(str(exc))
    elif state != "finished" or jobs.launch_of(run_dir) is not None:
        label = "Resume" if state != "finished" else "Run again (finished stages are skipped)"
        if st.button(
            label, key=f"resume_{key}", icon=":material/play_arrow:", disabled=jobs.launch_of(run_dir) is None
        ):
            try:
                job = jobs.resume(run_dir)
                st.toast(f"resumed {run_dir.name} (pid {job.pid})")
            except jobs.JobError as exc:
                st.error(str(exc))


def _details(run_dir: Path) -> str:
    """The run's panel; returns its state, so the caller can tell when it changes."""
    from octrain.studio import jobs

    status = jobs.status(run_dir)
    st.subheader(f"{STATE_ICONS.get(status.state, '')} {run_dir.name}: {status.state}")
    console = jobs.console_tail(run_dir, 30)  # read once: the step's bar is its last line, the expander shows it all
    progress_bars(status, console)
    st.dataframe(
        [{"stage": stage, "state": MARKER_LABELS[marker]} for stage, marker in status.stages],
        hide_index=True,
    )
    _buttons(run_dir, status.state, run_dir.name)
    for stage in ("dpo", "sft"):
        table = loss_table(run_dir, stage)
        if table is not None:
            st.markdown(f"**{stage} loss**")
            st.line_chart(table, x="step", y=[name for name in table if name != "step"])
        elif (run_dir / stage / "training.png").is_file():
            st.image(str(run_dir / stage / "training.png"), caption=f"{stage} training")
    from octrain.core.layout import REPORT_MD_FILE

    if (run_dir / "eval" / REPORT_MD_FILE).is_file():
        st.info("The evaluation report is ready: open the Evaluate page.", icon=":material/analytics:")
    with st.expander("log (octrain.log)", expanded=status.state in ("running", "failed")):
        st.code("\n".join(jobs.log_tail(run_dir, 40)) or "(no log yet)", language=None)
    if console:
        with st.expander("console (what the launched command printed)"):
            st.code("\n".join(console), language=None)
    return status.state


def render() -> None:
    from octrain.studio import jobs
    from octrain.studio.state import run_root

    st.title("Runs")
    root = run_root()
    runs = jobs.list_runs(root) if root.is_dir() else []
    st.caption(f"run root: {root}")
    if not runs:
        st.info("No runs yet: launch one on the Train page (or `octrain +recipe=pirate_tiny run_root=...`).")
        return
    _overview(runs, root)
    names = [str(p.relative_to(root)) for p in runs]
    wanted = st.session_state.get(SELECTED_KEY)
    index = next((i for i, p in enumerate(runs) if str(p) == wanted), 0)
    chosen = st.selectbox("run", names, index=index, key="runs_pick")
    run_dir = root / chosen
    st.session_state[SELECTED_KEY] = str(run_dir)
    first = jobs.status(run_dir).state
    live = first == "running"

    @st.fragment(run_every=REFRESH_SECONDS if live else None)
    def panel() -> None:
        state = _details(run_dir)
        if live and state != "running":
            st.rerun()  # the run ended: redraw the whole page once, which stops the refreshing

    panel()
