"""Evaluate: a finished run's report with its plots, two runs side by side, and the eval tools on uploaded files.

The report is the eval stage's own ``eval/report.md`` (tables and notes as written) with the plots
it links drawn in place; the numbers are ``eval/results.json``. The classifier and Elo tools are
``octrain eval classifier`` and ``octrain eval elo``: their arguments are parsed by the command
line's own parser (:func:`octrain.evaluation.commands.add_commands`) and run by the same command.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import streamlit as st

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def evaluated_runs(root: Path) -> list[Path]:
    """Runs whose eval stage wrote a report, newest first."""
    from octrain.core.layout import REPORT_MD_FILE
    from octrain.studio.jobs import list_runs

    return [run for run in list_runs(root) if (run / "eval" / REPORT_MD_FILE).is_file()] if root.is_dir() else []


def report_parts(report: Path) -> list[tuple[str, str]]:
    """The report as ``("markdown", text)`` and ``("image", path)`` parts, in order.

    Streamlit's markdown cannot load an image from a path relative to the file, so each image the
    report links is drawn by ``st.image`` where it stands.
    """
    text = report.read_text(encoding="utf-8")
    parts: list[tuple[str, str]] = []
    last = 0
    for match in _IMAGE.finditer(text):
        parts.append(("markdown", text[last : match.start()]))
        parts.append(("image", str((report.parent / match.group(2)).resolve())))
        last = match.end()
    parts.append(("markdown", text[last:]))
    return [(kind, value) for kind, value in parts if value.strip()]


def _draw_report(run_dir: Path) -> None:
    from octrain.core.layout import REPORT_MD_FILE, RESULTS_FILE

    for kind, value in report_parts(run_dir / "eval" / REPORT_MD_FILE):
        if kind == "markdown":
            st.markdown(value)
        elif Path(value).is_file():
            st.image(value, caption=Path(value).name)
        else:
            st.caption(f"(plot {value} is missing)")
    results = run_dir / "eval" / RESULTS_FILE
    if results.is_file():
        with st.expander("results.json"):
            st.json(json.loads(results.read_text(encoding="utf-8")), expanded=1)


def eval_command(argv: list[str]) -> dict[str, Any]:
    """Run ``octrain eval ARGV`` in this process and return its result (what the CLI prints as JSON)."""
    from octrain.evaluation.commands import COMMANDS, add_commands

    parser = argparse.ArgumentParser(prog="octrain eval", exit_on_error=False)
    add_commands(parser.add_subparsers(dest="eval_subcommand", required=True))
    args = parser.parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.eval_command)
    return command.run(args, "octrain eval")


class _Uploads:
    """Uploaded files written to a scratch directory, for a command that reads paths.

    Each goes to ``SCRATCH/ROLE/NAME`` under the name it was uploaded with, and :meth:`named`
    puts that name back in a message: an error then points at ``mine.jsonl:2``, the file the user
    has, not at a scratch copy deleted by the time it is read.
    """

    def __init__(self, scratch: str) -> None:
        self.scratch = Path(scratch)
        self.names: dict[str, str] = {}

    def write(self, uploaded: Any, role: str) -> str:
        name = Path(uploaded.name).name
        if name in ("", ".", ".."):
            name = f"{role}.jsonl"
        path = self.scratch / role / name
        path.parent.mkdir()
        path.write_bytes(uploaded.getvalue())
        self.names[str(path)] = name
        return str(path)

    def named(self, message: str) -> str:
        for path, name in self.names.items():
            message = message.replace(path, name)
        return message


def _run_tool(argv: list[str], uploads: _Uploads) -> None:
    """Run ``octrain eval ARGV`` and show its JSON, or its error as the command line prints it."""
    from octrain.core.errors import OctrainError

    try:
        result = eval_command(argv)
    except (OctrainError, argparse.ArgumentError) as exc:
        st.error(f"octrain eval: error: {uploads.named(str(exc))}")
        return
    st.json(result)


def _tools(root: Path) -> None:
    st.subheader("Tools on your own files")
    classifier, elo = st.tabs(["persona classifier", "Elo ratings"])
    with classifier:
        st.caption('`octrain eval classifier`: JSONL rows of `{"text": ..., "label": ...}`.')
        train = st.file_uploader("training data (JSONL)", type=["jsonl", "json"], key="ev_clf_train")
        held = st.file_uploader("held-out data (JSONL, optional)", type=["jsonl", "json"], key="ev_clf_eval")
        out = st.text_input("save the classifier to", value=str(root / "classifiers" / "studio"), key="ev_clf_out")
        if st.button("Train the classifier", disabled=train is None or not out.strip(), key="ev_clf_go"):
            with tempfile.TemporaryDirectory(prefix="octrain-studio-") as scratch, st.spinner("training..."):
                uploads = _Uploads(scratch)
                # --flag=value: a value that starts with '-' is still the flag's value.
                argv = ["classifier", f"--train={uploads.write(train, 'train')}", f"--out={out.strip()}"]
                if held is not None:
                    argv.append(f"--eval={uploads.write(held, 'eval')}")
                _run_tool(argv, uploads)
    with elo:
        st.caption("`octrain eval elo`: a run's `eval/matches.jsonl`; matches without a winner need a judge.")
        matches = st.file_uploader("matches (JSONL)", type=["jsonl"], key="ev_elo_matches")
        constitution = st.text_input("constitution (name or path, optional)", key="ev_elo_const")
        judge_url = st.text_input("judge base URL (optional)", key="ev_elo_url")
        judge_model = st.text_input("judge model (optional)", key="ev_elo_model")
        key_env = st.text_input(
            "environment variable with the judge's API key (empty: no key)", value="OPENAI_API_KEY", key="ev_elo_key"
        )
        if st.button("Rate", disabled=matches is None, key="ev_elo_go"):
            with tempfile.TemporaryDirectory(prefix="octrain-studio-") as scratch, st.spinner("rating..."):
                uploads = _Uploads(scratch)
                argv = ["elo", uploads.write(matches, "matches"), f"--judge-key-env={key_env.strip()}"]
                for flag, value in (
                    ("--constitution", constitution),
                    ("--judge-url", judge_url),
                    ("--judge-model", judge_model),
                ):
                    if value.strip():
                        argv.append(f"{flag}={value.strip()}")
                _run_tool(argv, uploads)


def render() -> None:
    from octrain.studio.state import run_root

    st.title("Evaluate")
    root = run_root()
    runs = evaluated_runs(root)
    if not runs:
        st.info("No run has an evaluation report yet: a run with the eval stage writes RUN/eval/report.md.")
    else:
        names = [str(p.relative_to(root)) for p in runs]
        left, right = st.columns(2)
        first = left.selectbox("run", names, key="ev_run")
        other = right.selectbox("compare with", ["(none)", *[n for n in names if n != first]], key="ev_other")
        if other == "(none)":
            _draw_report(root / first)
        else:
            one, two = st.columns(2)
            with one:
                st.markdown(f"### {first}")
                _draw_report(root / first)
            with two:
                st.markdown(f"### {other}")
                _draw_report(root / other)
    _tools(root)
