"""Chat and compare: talk to a registered checkpoint, streaming; two to four models on one prompt; rate and export.

The chat is :class:`octrain.chat_session.ChatSession`, the object ``octrain chat`` drives: the same
model choice (:func:`~octrain.chat_session.pick_model`), the run's own sampling settings, and each
turn streamed chunk by chunk (``st.write_stream`` over the turn). The comparison is
:func:`~octrain.chat_session.answer_prompt`, what ``octrain sample --compare`` calls: every model
draws with the same seed. Ratings and notes are the studio's own; the export writes them with
each answer, one JSON object a line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

RUNS_OWN = "(the run's)"
SESSION_KEY = "chat_session"
SESSION_ID_KEY = "chat_session_id"
LOG_KEY = "chat_log"  # every answer of this browser session: chat turns and comparisons
ROUND_KEY = "compare_rounds"
ROLE_SUFFIXES = {"": (False, False), " (base)": (True, False), " (base + constitution)": (True, True)}


@dataclass(frozen=True)
class Choice:
    """What the sidebar settings ask for; a change of any of them starts a new chat session."""

    spec: str
    base: bool
    with_constitution: bool
    backend: str | None
    temperature: float | None
    max_new_tokens: int | None
    seed: int | None
    system: str


def checkpoint_names(root: Path) -> list[str]:
    """The registered checkpoints, newest first (``octrain checkpoints list``)."""
    from octrain.registry import Registry

    if not root.is_dir():
        return []
    return [entry.name for entry in Registry.at(root).entries()]


def speaker_options(names: list[str]) -> list[str]:
    return [f"{name}{suffix}" for name in names for suffix in ROLE_SUFFIXES]


def parse_speaker(option: str) -> tuple[str, bool, bool]:
    for suffix, (base, with_constitution) in ROLE_SUFFIXES.items():
        if suffix and option.endswith(suffix):
            return option[: -len(suffix)], base, with_constitution
    return option, False, False


def speaker_for(option: str, root: Path) -> Any:
    """A :class:`~octrain.chat_session.Speaker`: the model, its base, or its base with the constitution."""
    from octrain.chat_session import Speaker, constitution_prompt, pick_model

    spec, base, with_constitution = parse_speaker(option)
    chosen = pick_model(spec, base=base, run_root=root)
    system = constitution_prompt(chosen) if with_constitution else None
    return Speaker(chosen, system=system, role="base" if base else "trained", with_constitution=with_constitution)


def new_session(choice: Choice, root: Path) -> Any:
    from octrain.chat_session import ChatSession, constitution_prompt, pick_model, sampler_config, sampling_params

    chosen = pick_model(choice.spec, base=choice.base, run_root=root)
    system = constitution_prompt(chosen) if choice.with_constitution else (choice.system or None)
    return ChatSession(
        chosen,
        settings=sampler_config(chosen, choice.backend),
        params=sampling_params(
            chosen, seed=choice.seed, temperature=choice.temperature, max_new_tokens=choice.max_new_tokens
        ),
        run_root=root,
        system=system,
    )


def export_lines(log: list[dict[str, Any]], state: Callable[[str], Any] | None = None) -> str:
    """The session as JSONL: one answer a line, with its prompt or conversation, rating (1-5) and note.

    ``state`` reads a widget's value by key (default: this browser session's ``st.session_state``).
    """
    read = state or st.session_state.get
    rows = []
    for index, entry in enumerate(log):
        stars = read(f"rate_{index}")
        row = {key: value for key, value in entry.items() if key != "session"}
        row["rating"] = None if stars is None else int(stars) + 1  # st.feedback's stars are 0-4
        row["note"] = read(f"note_{index}") or ""
        rows.append(row)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _rate(index: int, container: Any) -> None:
    with container:
        left, right = st.columns([1, 3])
        with left:
            st.feedback("stars", key=f"rate_{index}")
        with right:
            st.text_input(
                "note", key=f"note_{index}", label_visibility="collapsed", placeholder="a note on this answer"
            )


def _settings(root: Path, names: list[str]) -> Choice:
    with st.sidebar:
        st.markdown("**Chat settings**")
        option = st.selectbox("model", speaker_options(names), key="chat_model")
        spec, base, with_constitution = parse_speaker(option)
        backend = st.selectbox("sampler", [RUNS_OWN, "hf", "vllm", "tinker", "fake"], key="chat_backend")
        temperature = st.number_input("temperature (blank: the run's)", 0.0, 5.0, value=None, key="chat_temp")
        max_new = st.number_input("answer length in tokens (blank: the run's)", 1, 32768, value=None, key="chat_len")
        seed = st.number_input("seed", 0, 2**31 - 1, value=0, key="chat_seed")
        system = st.text_area("system prompt", key="chat_system", disabled=with_constitution)
    return Choice(
        spec,
        base,
        with_constitution,
        None if backend == RUNS_OWN else backend,
        None if temperature is None else float(temperature),
        None if max_new is None else int(max_new),
        int(seed),
        system,
    )


def _session(choice: Choice, root: Path) -> Any:
    """The chat session of this browser tab, new whenever the settings change."""
    if st.session_state.get(SESSION_ID_KEY) != choice or st.session_state.get(SESSION_KEY) is None:
        old = st.session_state.get(SESSION_KEY)
        if old is not None:
            old.close()
        st.session_state[SESSION_KEY] = new_session(choice, root)
        st.session_state[SESSION_ID_KEY] = choice
    return st.session_state[SESSION_KEY]


def _chat(choice: Choice, root: Path) -> None:
    from octrain.chat_session import displayable
    from octrain.errors import OctrainError
    from octrain.studio.state import error_line, model_lock

    log: list[dict[str, Any]] = st.session_state.setdefault(LOG_KEY, [])
    try:
        session = _session(choice, root)
    except OctrainError as exc:
        st.error(error_line(exc))
        return
    st.caption(
        f"talking to **{session.model.label}**"
        + (f" · persona {session.model.persona}" if session.model.persona else "")
    )
    answers = [i for i, entry in enumerate(log) if entry["kind"] == "chat" and entry["session"] == id(session)]
    turn_number = 0
    for message in session.messages():
        if message["role"] == "system":
            with st.expander("system prompt"):
                st.write(message["content"])
            continue
        bubble = st.chat_message(message["role"])
        bubble.markdown(displayable(message["content"]))
        if message["role"] == "assistant" and turn_number < len(answers):
            _rate(answers[turn_number], bubble)
            turn_number += 1
    prompt = st.chat_input("Say something", key="chat_input")
    if st.button("New conversation", key="chat_reset"):
        session.reset()
        st.rerun()
    if prompt:
        with st.chat_message("user"):
            st.markdown(prompt)
        with st.chat_message("assistant"):
            try:
                with model_lock():
                    with st.spinner(f"loading {session.model.label}..."):
                        session.load()
                    turn = session.send(prompt)
                    st.write_stream(displayable(chunk) for chunk in _chunks(turn))
            except OctrainError as exc:
                st.error(error_line(exc))
                return
        log.append(
            {
                "kind": "chat",
                "session": id(session),
                "model": session.model.label,
                "messages": session.messages(),
                "answer": turn.text,  # as the model wrote it; the page shows it made displayable
                "time": time.time(),
            }
        )
        st.rerun()  # redraw with the answer in the history, under its rating


def _chunks(turn: Any) -> Iterator[str]:
    yield from turn


def _compare(root: Path, names: list[str]) -> None:
    from octrain.chat_session import answer_prompt, displayable, sampler_config, sampling_params
    from octrain.errors import OctrainError
    from octrain.studio.state import error_line, model_lock

    log: list[dict[str, Any]] = st.session_state.setdefault(LOG_KEY, [])
    options = speaker_options(names)
    picked = st.multiselect(
        "models (two to four)", options, default=options[: min(2, len(options))], max_selections=4, key="cmp_models"
    )
    prompt = st.text_area("prompt", key="cmp_prompt")
    seed = st.number_input("seed (the same for every model)", 0, 2**31 - 1, value=0, key="cmp_seed")
    go = st.button("Answer", type="primary", disabled=len(picked) < 2 or not prompt.strip(), key="cmp_go")
    if go:
        try:
            speakers = [speaker_for(option, root) for option in picked]
            first = speakers[0].model
            with model_lock(), st.spinner(f"answering with {len(speakers)} models, one after the other..."):
                answers = answer_prompt(prompt, speakers, sampler_config(first), sampling_params(first, seed=int(seed)))
        except OctrainError as exc:
            st.error(error_line(exc))
        else:
            session = st.session_state.get(SESSION_KEY)
            if session is not None:
                session.close()  # the comparison loaded other models: the chat loads its own again
            indices = []
            for option, answer in zip(picked, answers, strict=True):
                log.append(
                    {
                        "kind": "compare",
                        "model": option,
                        "prompt": prompt,
                        "system": answer.speaker.system,
                        "answer": answer.completions[0].text,
                        "seed": int(seed),
                        "time": time.time(),
                    }
                )
                indices.append(len(log) - 1)
            st.session_state.setdefault(ROUND_KEY, []).append(indices)
    for indices in reversed(st.session_state.get(ROUND_KEY, [])):
        st.markdown(f"**{log[indices[0]]['prompt']}**")
        columns = st.columns(len(indices))
        for column, index in zip(columns, indices, strict=True):
            with column.container(border=True):
                st.markdown(f"`{log[index]['model']}`")
                st.write(displayable(log[index]["answer"]))
                _rate(index, st.container())


def render() -> None:
    from octrain.studio.state import run_root

    st.title("Chat and compare")
    root = run_root()
    names = checkpoint_names(root)
    if not names:
        st.info(f"No registered checkpoints under {root}: train one on the Train page first.")
        return
    chat, compare = st.tabs(["Chat", "Compare side by side"])
    choice = _settings(root, names)
    with chat:
        _chat(choice, root)
    with compare:
        _compare(root, names)
    log = st.session_state.get(LOG_KEY, [])
    st.sidebar.download_button(
        "Export the session (JSONL)",
        data=export_lines(log),
        file_name="octrain-studio-session.jsonl",
        mime="application/jsonl",
        disabled=not log,
        key="chat_export",
    )
