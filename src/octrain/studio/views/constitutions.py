"""Constitutions: a gallery of the personas octrain finds, an editor checked by the real loader, AI drafting.

Validation is :func:`octrain.constitution.drafting.validate_draft`: the text goes to a scratch
file and :func:`~octrain.constitution.load_constitution` reads it, so the error beside the text is
the loader's own ``NAME.yaml:LINE: FIELD: message``, the one ``octrain constitution validate``
prints. The editor holds Studio YAML, the format ``octrain constitution new`` writes; a gallery
entry in another format is opened as its YAML rendering (``octrain constitution convert``'s).
Saving goes through :func:`~octrain.constitution.drafting.save_draft`, which refuses to replace a
persona unless the overwrite box is ticked, as ``--force`` does on the command line. A new persona
goes where ``octrain constitution new`` puts one (:func:`~octrain.constitution.search_dirs.new_persona_dir`):
``./constitutions``, or the user's constitution directory when the studio runs from the checkout,
whose ``constitutions/`` is tracked; runs and the command line find it by name in either.
"""

from __future__ import annotations

import re

import streamlit as st

from octrain.constitution import Constitution
from octrain.constitution.catalog import CatalogEntry, catalog

TEXT_KEY = "ct_text"
NAME_KEY = "ct_name"
PENDING_KEY = "ct_pending"  # text to put in the editor on the next run (a widget's value cannot change once drawn)
_LINE = re.compile(r"^[^:]+:(\d+):")
# The teacher's system prompt names the assistant as the run's teacher model is configured;
# the model config's default is what a recipe that sets nothing gets.
DEFAULT_ASSISTANT = "Assistant"


# The gallery is the library's catalog, the listing `octrain constitution list` prints.
GalleryEntry = CatalogEntry


def gallery() -> list[GalleryEntry]:
    """Every constitution in the search directories, in lookup order (:func:`octrain.constitution.catalog.catalog`)."""
    return catalog()


def editor_text(entry: GalleryEntry) -> str:
    """The text the editor opens for a gallery entry: a YAML file as written, comments and all;
    another format as its Studio YAML rendering."""
    from octrain.constitution.convert import to_yaml

    if entry.path.suffix.lower() in (".yaml", ".yml"):
        return entry.path.read_text(encoding="utf-8-sig")
    assert entry.constitution is not None
    return to_yaml(entry.constitution)


def error_line_number(message: str) -> int | None:
    """The line a loader error points at (``FILE:LINE: ...``), for showing that line of the text."""
    match = _LINE.match(message)
    return int(match.group(1)) if match else None


def _open_in_editor(text: str, name: str) -> None:
    st.session_state[PENDING_KEY] = (text, name)


def _take_pending() -> None:
    pending = st.session_state.pop(PENDING_KEY, None)
    if pending is not None:
        st.session_state[TEXT_KEY], st.session_state[NAME_KEY] = pending


def _draw_gallery(entries: list[GalleryEntry]) -> None:
    with st.expander(
        f"Gallery: {len(entries)} constitutions to start from", expanded=not st.session_state.get(TEXT_KEY)
    ):
        columns = st.columns(3)
        for index, entry in enumerate(entries):
            with columns[index % 3].container(border=True):
                title = entry.path.stem + (" (shadowed)" if entry.shadowed else "")
                st.markdown(f"**{title}** · `{entry.path.suffix.lstrip('.')}`")
                if entry.constitution is None:
                    st.error(f"does not load: {entry.error}")
                    continue
                constitution = entry.constitution
                st.caption(
                    f"{len(constitution.traits)} traits, {constitution.question_count} seed questions · "
                    f"{entry.path.parent}"
                )
                if constitution.description:
                    st.write(constitution.description)
                st.button(
                    "Edit a copy",
                    key=f"ct_use_{index}",
                    on_click=_open_in_editor,
                    args=(editor_text(entry), f"my_{entry.path.stem}"),
                )


def _show_error_context(text: str, message: str) -> None:
    line = error_line_number(message)
    if line is None:
        return
    rows = text.splitlines()
    first, last = max(1, line - 2), min(len(rows), line + 2)
    shown = "\n".join(f"{'>' if n == line else ' '} {n:>4} | {rows[n - 1]}" for n in range(first, last + 1))
    if shown:
        st.code(shown, language=None, wrap_lines=True)


def _draw_checks(text: str, name: str) -> Constitution | None:
    """The loader's verdict on the text, the traits as the teacher sees them, and the quality score."""
    from octrain.constitution.drafting import validate_draft
    from octrain.constitution.persona_prompts import teacher_system_prompt
    from octrain.constitution.quality import score_constitution
    from octrain.core.errors import DataFormatError

    if not text.strip():
        st.info("Start from a gallery entry, draft one with a model, or write YAML here.")
        return None
    try:
        constitution, notes = validate_draft(text, name)
    except DataFormatError as exc:
        message = str(exc)
        st.error(message, icon=":material/error:")
        _show_error_context(text, message)
        return None
    st.success(
        f"loads: {len(constitution.traits)} traits, {constitution.question_count} seed questions",
        icon=":material/check_circle:",
    )
    for note in notes:
        st.warning(note)
    score = score_constitution(constitution)
    st.metric("quality score", f"{score.total}/100")
    st.dataframe(
        [{"check": c.name, "points": f"{c.points:.1f} / {c.most}", "why": c.reason} for c in score.checks],
        hide_index=True,
        width="stretch",
    )
    st.markdown("**The traits, as the teacher sees them**")
    st.code(constitution.numbered_traits(), language=None, wrap_lines=True)
    with st.expander("The teacher's whole system prompt"):
        st.code(teacher_system_prompt(constitution, DEFAULT_ASSISTANT), language=None, wrap_lines=True)
    return constitution


def _save(text: str, name: str, overwrite: bool) -> None:
    from octrain.constitution import drafting
    from octrain.constitution.quality import score_constitution
    from octrain.core.errors import OctrainError

    try:
        drafting.check_name(name)
        named = drafting.with_name(text, name)  # the file is NAME.yaml: its meta.name must say so too
        constitution, notes = drafting.validate_draft(named, name)
        target = drafting.target_path(name)
        draft = drafting.Draft(name, named, constitution, score_constitution(constitution), 0, tuple(notes))
        replaced = drafting.save_draft(draft, target, force=overwrite)
    except OctrainError as exc:
        st.error(str(exc))
        return
    if named != text:
        _open_in_editor(named, name)
    st.success(f"saved {target}")
    for path in replaced:
        st.caption(f"{'replaced' if path == target else 'shadows'} {path}")


def _draw_drafting() -> None:
    """AI drafting: ``octrain constitution new`` through an OpenAI-compatible endpoint or a local model."""
    from octrain.constitution.drafting import DEFAULT_MAX_TOKENS, DEFAULT_TRAITS
    from octrain.constitution.quality import QUESTIONS_PER_TRAIT

    with st.expander("Draft a constitution with a model", expanded=False):
        with st.form("ct_draft_form"):
            name = st.text_input("persona name", value="my_persona", key="ct_draft_name")
            description = st.text_area("who the character is, in a sentence", key="ct_draft_description")
            source = st.radio(
                "model", ["OpenAI-compatible endpoint", "local model"], horizontal=True, key="ct_draft_source"
            )
            left, right = st.columns(2)
            base_url = left.text_input("base URL", value="https://api.openai.com/v1", key="ct_draft_url")
            model = left.text_input("model name at the endpoint", value="gpt-4o-mini", key="ct_draft_model")
            key_env = left.text_input(
                "environment variable with the API key (empty: no key)", value="OPENAI_API_KEY", key="ct_draft_key"
            )
            local = right.text_input("local model (path, cached Hub id)", value="builtin:tiny-qwen3", key="ct_local")
            backend = right.selectbox("local backend", ["hf", "vllm"], key="ct_draft_backend")
            traits = right.number_input("traits", 3, 20, DEFAULT_TRAITS, key="ct_draft_traits")
            questions = right.number_input("seed questions per trait", 1, 20, QUESTIONS_PER_TRAIT, key="ct_draft_q")
            max_tokens = right.number_input("answer length (tokens)", 64, 32768, DEFAULT_MAX_TOKENS, key="ct_draft_tok")
            go = st.form_submit_button("Draft", type="primary")
        if go:
            _run_draft(
                name,
                description,
                endpoint=(base_url, model, key_env) if source.startswith("OpenAI") else None,
                local=(local, backend),
                traits=int(traits),
                questions=int(questions),
                max_tokens=int(max_tokens),
            )


def _run_draft(
    name: str,
    description: str,
    *,
    endpoint: tuple[str, str, str] | None,
    local: tuple[str, str],
    traits: int,
    questions: int,
    max_tokens: int,
) -> None:
    from octrain.constitution import drafting
    from octrain.core.errors import OctrainError
    from octrain.samplers import SamplingParams, release_engines
    from octrain.studio.state import model_lock

    params = SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.0, max_new_tokens=max_tokens)
    with st.status(f"drafting {name!r}...", expanded=True) as status:
        # The bar follows drafting's own steps (asking, validating, retry k of N, accepted or rejected).
        bar = st.progress(0.0, text="starting")
        reached = [0.0]

        def show(step: drafting.DraftProgress) -> None:
            reached[0] = step.fraction
            bar.progress(step.fraction, text=step.describe())

        try:
            drafting.check_name(name)
            with model_lock():
                if endpoint is not None:
                    sampler = drafting.openai_sampler(endpoint[0], endpoint[1], api_key_env=endpoint[2])
                else:
                    bar.progress(0.0, text=f"loading {local[0]}")
                    sampler = drafting.local_sampler(local[0], backend=local[1])
                try:
                    draft = drafting.draft_constitution(
                        sampler,
                        name,
                        description,
                        traits=traits,
                        questions=questions,
                        params=params,
                        report=status.write,
                        progress=show,
                    )
                finally:
                    sampler.close()
                    if endpoint is None:
                        release_engines()
        except drafting.DraftRejected as exc:
            status.update(label="the draft does not load", state="error")
            st.error(str(exc))
            if exc.rejected_path is not None:
                # Open the rejected draft: the error above points at its line, for a fix by hand.
                _open_in_editor(exc.rejected_path.read_text(encoding="utf-8"), name)
                st.button("Open the rejected draft in the editor")
            return
        except OctrainError as exc:
            bar.progress(reached[0], text=f"failed: {exc}")
            status.update(label="drafting failed", state="error")
            st.error(str(exc))
            return
        status.update(label=f"drafted {name!r} ({draft.score.total}/100)", state="complete")
    _open_in_editor(draft.text, name)
    st.button("Open the draft in the editor", type="primary")


def render() -> None:
    from octrain.constitution.search_dirs import new_persona_dir

    st.title("Constitutions")
    _take_pending()
    entries = gallery()
    _draw_gallery(entries)
    _draw_drafting()
    st.subheader("Editor")
    st.session_state.setdefault(NAME_KEY, "my_persona")
    st.session_state.setdefault(TEXT_KEY, "")
    left, right = st.columns([3, 2])
    with left:
        name = st.text_input(f"name (saved as {new_persona_dir() / 'NAME.yaml'})", key=NAME_KEY)
        text = st.text_area("Studio YAML", key=TEXT_KEY, height=560)
        overwrite = st.checkbox("overwrite a constitution of the same name", key="ct_overwrite")
        save = st.button("Save", type="primary", key="ct_save")
    with right:
        st.markdown("**Check**")
        checked = _draw_checks(text, name.strip() or "draft")
    if save:
        if checked is None:
            st.error("fix the error first: a constitution that does not load is never saved")
        else:
            with left:
                _save(text, name.strip(), overwrite)
