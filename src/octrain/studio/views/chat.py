"""Chat and compare: talk to a registered checkpoint, streaming; two to four models on one prompt; rate and export.

The chat is :class:`octrain.use.chat.ChatSession`, the object ``octrain chat`` drives: the same
model choice (:func:`~octrain.use.chat.pick_model`), the run's own sampling settings, and each
turn streamed chunk by chunk (``st.write_stream`` over the turn). The comparison is
:func:`~octrain.use.chat.answer_prompt`, what ``octrain sample --compare`` calls: every model
draws with the same seed. A reasoning model can be asked to think first or not
(:func:`~octrain.use.model_choice.with_thinking`, ``--thinking`` on the command line); its thought is
shown folded away above its answer (:func:`~octrain.use.chat.split_thought`). Ratings and
notes are the studio's own; the export writes them with each answer, one JSON object a line.
What the sidebar's settings choose (the options offered, the session they make) is
:mod:`octrain.studio.chat_choice`'s; this module draws.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from octrain.studio.chat_choice import (
    RUNS_OWN,
    THINKING_HELP,
    THINKING_OPTIONS,
    Choice,
    checkpoint_names,
    new_session,
    parse_speaker,
    speaker_for,
    speaker_options,
)

SESSION_KEY = "chat_session"
SESSION_ID_KEY = "chat_session_id"
LOG_KEY = "chat_log"  # every answer of this browser session: chat turns and comparisons
ROUND_KEY = "compare_rounds"
LOADER_KEY = "chat_loader"
LOAD_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class PendingLoad:
    """The background load of one chat session's model."""

    session: Any
    load: Any  # octrain.studio.loading.BackgroundLoad


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


def show_answer(text: str) -> None:
    """An answer as the page shows it: a reasoning model's thought folded away above what it said."""
    from octrain.use.chat import displayable, split_thought

    thought, answer = split_thought(text)
    if thought:  # an empty thought (thinking off, on a template that writes the tags) is not worth a fold
        with st.expander("thinking"):
            st.text(displayable(thought))
    if answer is None:
        st.caption("the model was still thinking when it reached the answer length: no answer")
    else:
        st.markdown(displayable(answer))


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
        thinking = st.selectbox(
            "thinking (reasoning models)", list(THINKING_OPTIONS), key="chat_thinking", help=THINKING_HELP
        )
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
        THINKING_OPTIONS[thinking],
    )


def _start_load(session: Any) -> None:
    """Load the session's model in the background (:class:`~octrain.studio.loading.BackgroundLoad`)."""
    from octrain.studio.loading import BackgroundLoad
    from octrain.studio.state import model_lock

    previous = st.session_state.get(LOADER_KEY)
    if previous is not None and previous.session is not session:
        previous.load.abandon()
    st.session_state[LOADER_KEY] = PendingLoad(
        session, BackgroundLoad(session.load, lock=model_lock(), label=session.model.label, close=session.close)
    )


def _session(choice: Choice, root: Path) -> Any:
    """The chat session of this browser tab, new whenever the settings change; its model starts loading at once."""
    if st.session_state.get(SESSION_ID_KEY) != choice or st.session_state.get(SESSION_KEY) is None:
        old = st.session_state.get(SESSION_KEY)
        pending = st.session_state.get(LOADER_KEY)
        if old is not None and (pending is None or pending.session is not old):
            old.close()  # a session whose load is pending is closed by abandoning the load
        session = new_session(choice, root)
        st.session_state[SESSION_KEY] = session
        st.session_state[SESSION_ID_KEY] = choice
        _start_load(session)
    return st.session_state[SESSION_KEY]


def _loading_notice(session: Any) -> bool:
    """Whether the session's model is still loading; meanwhile a notice that checks back every second.

    Only the notice reruns (a fragment): every other control of the page stays live. When the
    load ends, the whole page is drawn again, with the chat box enabled.
    """
    from octrain.core.errors import OctrainError
    from octrain.studio.progress import duration_text
    from octrain.studio.state import error_line

    pending = st.session_state.get(LOADER_KEY)
    if pending is None or pending.session is not session:
        return False
    load = pending.load
    if load.done:
        if load.error is not None:
            error = load.error
            st.session_state.pop(LOADER_KEY)  # the next message tries again, in the open
            if isinstance(error, OctrainError):
                st.error(error_line(error))
            else:
                st.exception(error)
        return False

    @st.fragment(run_every=LOAD_POLL_SECONDS)
    def notice() -> None:
        if load.done:
            st.rerun()
        st.info(f"loading {load.label}... {duration_text(load.elapsed)}", icon=":material/hourglass_top:")

    notice()
    return True


def chat_panel(choice: Choice, root: Path) -> None:
    """The chat with ``choice``'s model: its history, the box to type in, streamed answers with ratings."""
    from octrain.core.errors import OctrainError
    from octrain.studio.state import error_line, model_lock
    from octrain.use.chat import displayable

    log: list[dict[str, Any]] = st.session_state.setdefault(LOG_KEY, [])
    try:
        session = _session(choice, root)
    except OctrainError as exc:
        st.error(error_line(exc))
        return
    thinks = session.model.model_config().enable_thinking
    st.caption(
        f"talking to **{session.model.label}**"
        + (f" · persona {session.model.persona}" if session.model.persona else "")
        + f" · thinking {'on' if thinks else 'off'}"
    )
    answers = [i for i, entry in enumerate(log) if entry["kind"] == "chat" and entry["session"] == id(session)]
    turn_number = 0
    for message in session.messages():
        if message["role"] == "system":
            with st.expander("system prompt"):
                st.write(message["content"])
            continue
        bubble = st.chat_message(message["role"])
        if message["role"] == "assistant":
            with bubble:
                show_answer(message["content"])
        else:
            bubble.markdown(displayable(message["content"]))
        if message["role"] == "assistant" and turn_number < len(answers):
            _rate(answers[turn_number], bubble)
            turn_number += 1
    loading = _loading_notice(session)
    prompt = st.chat_input(
        "the model is loading..." if loading else "Say something", key="chat_input", disabled=loading
    )
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
                "enable_thinking": thinks,
                "messages": session.messages(),
                "answer": turn.text,  # as the model wrote it; the page shows it made displayable
                "time": time.time(),
            }
        )
        st.rerun()  # redraw with the answer in the history, under its rating


def _chunks(turn: Any) -> Iterator[str]:
    yield from turn


def _compare(root: Path, names: list[str]) -> None:
    from octrain.core.errors import OctrainError
    from octrain.studio.progress import Countdown
    from octrain.studio.state import error_line, model_lock
    from octrain.use.chat import answer_prompt, sampler_config, sampling_params

    log: list[dict[str, Any]] = st.session_state.setdefault(LOG_KEY, [])
    options = speaker_options(names)
    picked = st.multiselect(
        "models (two to four)", options, default=options[: min(2, len(options))], max_selections=4, key="cmp_models"
    )
    prompt = st.text_area("prompt", key="cmp_prompt")
    seed = st.number_input("seed (the same for every model)", 0, 2**31 - 1, value=0, key="cmp_seed")
    thinking = st.selectbox(
        "thinking (the same for every model)", list(THINKING_OPTIONS), key="cmp_thinking", help=THINKING_HELP
    )
    go = st.button("Answer", type="primary", disabled=len(picked) < 2 or not prompt.strip(), key="cmp_go")
    if go:
        try:
            speakers = [speaker_for(option, root, THINKING_OPTIONS[thinking]) for option in picked]
            first = speakers[0].model
            progress = Countdown(len(speakers))
            bar = st.progress(0.0, text=progress.label("waiting for the models"))

            def answered(answer: Any) -> None:
                progress.advance()
                bar.progress(progress.fraction, text=progress.label(f"{answer.speaker.model.label} answered"))

            with model_lock():
                bar.progress(0.0, text=progress.label(f"answering with {len(speakers)} models, one after the other"))
                answers = answer_prompt(
                    prompt,
                    speakers,
                    sampler_config(first),
                    sampling_params(first, seed=int(seed)),
                    on_answer=answered,
                )
            bar.empty()
        except OctrainError as exc:
            st.error(error_line(exc))
        else:
            session = st.session_state.get(SESSION_KEY)
            if session is not None:
                session.close()  # the comparison loaded other models: the chat loads its own again
                _start_load(session)
            indices = []
            for option, answer in zip(picked, answers, strict=True):
                log.append(
                    {
                        "kind": "compare",
                        "model": option,
                        "prompt": prompt,
                        "system": answer.speaker.system,
                        "enable_thinking": answer.speaker.model.model_config().enable_thinking,
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
                show_answer(log[index]["answer"])
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
        chat_panel(choice, root)
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
