"""Deploy: serve, export, push to the Hub and deploy to Modal, each shown as a dry run first.

Each tab calls what the matching command calls: :func:`octrain.use.serving.plan_serving` (``octrain
serve --print-command``), :func:`octrain.use.export.export_merged` / ``export_adapter`` (``octrain
export``), :func:`octrain.use.hub.push` with ``dry_run`` (``octrain push --dry-run``) and
:func:`octrain.use.modal.plan_deployment` with :func:`~octrain.use.modal.dry_run` (``octrain
deploy modal --dry-run``). A real push or deployment goes out only after its confirmation box is ticked.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import streamlit as st


def _serve(chosen: Any, name: str) -> None:
    from octrain.use.serving import plan_serving

    backend = st.selectbox("backend", ["auto", "vllm", "transformers"], key="dp_serve_backend")
    port = st.number_input("port", 1, 65535, 8000, key="dp_serve_port")
    if st.button("Plan the server", key="dp_serve_go"):
        with st.spinner("planning (transformers folds the adapter into the base once)..."):
            plan = plan_serving([chosen], backend=backend, port=int(port))
        st.code(f"cd {shlex.quote(str(plan.cwd))} && {plan.command_line()}", language="bash", wrap_lines=True)
        st.write(f"model names: {', '.join(plan.model_names)} · base URL: `{plan.base_url}`")
        st.caption(f"or start it from a shell, with its health check: `octrain serve {name} --backend {backend}`")


def _export(chosen: Any) -> None:
    from octrain.use.export import export_adapter, export_merged

    kind = st.radio("what", ["merged model", "adapter"], horizontal=True, key="dp_export_kind")
    target = st.text_input("to directory", value=str(Path("exports") / chosen.label.replace("/", "-")), key="dp_exp_to")
    force = st.checkbox("replace a non-empty directory", key="dp_export_force")
    if st.button("Export", key="dp_export_go"):
        with st.spinner("exporting..."):
            if kind == "merged model":
                result = export_merged(chosen, target, force=force)
            else:
                result = export_adapter(chosen, target, force=force)
        st.success(f"exported to {result.directory.resolve()}")
        st.json(_export_facts(result), expanded=False)


def _export_facts(result: Any) -> dict[str, Any]:
    """An :class:`~octrain.use.export.ExportResult` as JSON: paths as strings, the file names as a list."""
    return {
        "directory": str(result.directory.resolve()),
        "kind": result.kind,
        "base_model": result.base_model,
        "dtype": result.dtype,
        "files": list(result.files),
    }


def _push(chosen: Any) -> None:
    from octrain.use.hub import push

    repo = st.text_input("Hub repository (you/name)", key="dp_push_repo")
    merged = st.checkbox("push the merged model (else the adapter)", key="dp_push_merged")
    private = st.checkbox("private", value=True, key="dp_push_private")
    # `octrain push --dry-run DIR [--force]`: the folder is the user's to read, and is not replaced unasked.
    into = st.text_input(
        "dry run: build the folder in",
        value=str(Path("exports") / f"{chosen.label.replace('/', '-')}-upload"),
        key="dp_push_dir",
    )
    replace = st.checkbox("replace a non-empty folder", key="dp_push_force")
    if st.button("Dry run: build the folder", disabled=not (repo.strip() and into.strip()), key="dp_push_dry"):
        folder = Path(into.strip()).expanduser()
        with st.spinner("building the upload folder and its model card..."):
            result = push(chosen, repo.strip(), merged=merged, private=private, dry_run=folder, force=replace)
        st.success(f"would upload {len(result.files)} files from {(result.folder or folder).resolve()}")
        st.code("\n".join(result.files), language=None)
        card = (result.folder or folder) / "README.md"
        if card.is_file():
            with st.expander("model card"):
                st.markdown(card.read_text(encoding="utf-8"))
    confirm = st.checkbox("I mean it: upload to the Hub (needs HF_TOKEN)", key="dp_push_confirm")
    if st.button("Push", disabled=not (confirm and repo.strip()), key="dp_push_go"):
        with st.spinner("pushing..."):
            result = push(chosen, repo.strip(), merged=merged, private=private)
        st.success(f"pushed: {result.url}")


def _modal(chosen: Any) -> None:
    from octrain.use.modal import GPUS, deploy, dry_run, plan_deployment

    gpu = st.selectbox("GPU", GPUS, index=GPUS.index("L4") if "L4" in GPUS else 0, key="dp_modal_gpu")
    if st.button("Dry run: build the app, no network", key="dp_modal_dry"):
        plan = plan_deployment(chosen, gpu=gpu)
        with st.spinner("building the Modal app and its image description..."):
            st.json(dry_run(plan))
    confirm = st.checkbox("I mean it: deploy on Modal (needs a Modal token)", key="dp_modal_confirm")
    if st.button("Deploy", disabled=not confirm, key="dp_modal_go"):
        with st.spinner("deploying..."):
            url = deploy(plan_deployment(chosen, gpu=gpu), chosen)
        st.success(f"deployed: {url}")


def render() -> None:
    from octrain.core.errors import OctrainError
    from octrain.studio.chat_choice import checkpoint_names
    from octrain.studio.state import error_line, run_root
    from octrain.use.chat import pick_model

    st.title("Deploy")
    root = run_root()
    names = checkpoint_names(root)
    if not names:
        st.info(f"No registered checkpoints under {root}: train one on the Train page first.")
        return
    name = st.selectbox("model", names, key="dp_model")
    try:
        chosen = pick_model(name, run_root=root)
    except OctrainError as exc:
        st.error(error_line(exc))
        return
    tabs = st.tabs(["Serve", "Export", "Hub", "Modal"])
    for tab, draw in zip(
        tabs,
        (lambda: _serve(chosen, name), lambda: _export(chosen), lambda: _push(chosen), lambda: _modal(chosen)),
        strict=True,
    ):
        with tab:
            try:
                draw()
            except OctrainError as exc:
                st.error(error_line(exc))
            except ImportError as exc:
                st.error(f"a package this needs is missing ({exc.name}): see the extras in the README")
