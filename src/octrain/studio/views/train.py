"""Train: pick a recipe, persona, scale, models and backends; see the composed config; launch in the background.

The form only builds Hydra overrides. The config is :func:`octrain.core.compose.compose_config`'s,
checked as ``python -m octrain`` checks it (:func:`octrain.core.config.validate`, the constitution,
:func:`octrain.run.pipeline.preflight`), and a mistake is shown as the line the command line prints.
A launch is that same command in a process of its own (:mod:`octrain.studio.jobs`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

RECIPES_OWN = "(the recipe's)"
# Form fields and the config group each one overrides (``group=choice``).
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("scale", "scale", "scale"),
    ("sampler", "sampler backend", "sampler"),
    ("trainer", "trainer backend", "trainer"),
    ("model@teacher", "teacher model", "model"),
    ("model@student", "student model", "model"),
)


@dataclass(frozen=True)
class Composed:
    """A composed and checked config, or the CLI's error line for it."""

    yaml: str | None
    error: str | None
    run_dir: Path | None
    stages: tuple[str, ...] = ()


def group_choices(group: str) -> list[str]:
    """The choices of a config group: its YAML files under ``configs/``."""
    from octrain.core.paths import configs_dir

    return sorted(p.stem for p in (configs_dir() / group).glob("*.yaml"))


def persona_choices() -> list[str]:
    from octrain.studio.views.constitutions import gallery

    return sorted({entry.path.stem for entry in gallery() if entry.constitution is not None})


def build_overrides(choices: dict[str, str], persona: str, name: str, extra: str) -> list[str]:
    """The form as Hydra overrides, in the order a user would type them; blank fields keep the recipe's."""
    overrides = [f"{key}={value}" for key, value in choices.items() if value and value != RECIPES_OWN]
    if persona and persona != RECIPES_OWN:
        overrides.append(f"constitution={persona}")
    if name.strip():
        overrides.append(f"name={name.strip()}")
    overrides.extend(shlex.split(extra, comments=True))
    return overrides


@st.cache_data(ttl=30, show_spinner=False)
def compose_and_check(recipe: str, overrides: tuple[str, ...], run_root: str, cwd: str) -> Composed:
    """Compose and check as the command line does; ``cwd`` is in the key because constitutions are looked up there.

    Cached for a while: preflight reads the student's tokenizer, and the page redraws on every click.
    """
    from omegaconf import OmegaConf

    from octrain.core.compose import compose_config
    from octrain.core.config import validate
    from octrain.run.pipeline import preflight, resolve_constitution
    from octrain.studio.state import COMPOSE_LOCK, error_line

    try:
        with COMPOSE_LOCK:
            config = compose_config(recipe, [*overrides, f"run_root={run_root}"])
        text = OmegaConf.to_yaml(OmegaConf.structured(config))
    except Exception as exc:  # Hydra's and OmegaConf's errors share no base class octrain could name
        return Composed(None, error_line(exc), None)
    run_dir = Path(config.run_root) / config.name
    stages = tuple(stage.value for stage in config.stages)
    try:
        validate(config)
        resolve_constitution(config)
        preflight(config)
    except Exception as exc:
        return Composed(text, error_line(exc), run_dir, stages)
    return Composed(text, None, run_dir, stages)


def command_line(recipe: str, overrides: list[str]) -> str:
    return shlex.join(["octrain", f"+recipe={recipe}", *overrides])


def render() -> None:
    from octrain.core.paths import available_recipes
    from octrain.studio import jobs
    from octrain.studio.state import run_root

    st.title("Train")
    recipes = available_recipes()
    if not recipes:
        st.error("no recipes found (recipes/ next to configs/); set OCTRAIN_HOME to a checkout")
        return
    root = run_root()
    left, right = st.columns([2, 3])
    with left:
        default = recipes.index("pirate_tiny") if "pirate_tiny" in recipes else 0
        recipe = st.selectbox("recipe", recipes, index=default, key="train_recipe")
        persona = st.selectbox("persona (constitution)", [RECIPES_OWN, *persona_choices()], key="train_persona")
        choices = {}
        for key, label, group in GROUPS:
            choices[key] = st.selectbox(label, [RECIPES_OWN, *group_choices(group)], key=f"train_{key}")
        name = st.text_input("run name (default: the recipe's)", key="train_name")
        extra = st.text_area(
            "more overrides, as on the command line (key=value, one or more a line)",
            key="train_extra",
            placeholder="dpo.beta=0.2\nstages=[prompts,pairs]",
        )
    overrides = build_overrides(choices, persona, name, extra)
    with right:
        st.markdown("**Command**")
        st.code(f"{command_line(recipe, overrides)} run_root={root}", language="bash", wrap_lines=True)
        with st.spinner("composing and checking the config..."):
            composed = compose_and_check(recipe, tuple(overrides), str(root), str(Path.cwd()))
        if composed.error:
            st.error(composed.error, icon=":material/block:")
        else:
            st.success(f"the config is valid; the run goes to {composed.run_dir}", icon=":material/check_circle:")
        if composed.yaml:
            with st.expander("composed config", expanded=composed.error is None):
                st.code(composed.yaml, language="yaml")
    launch = st.button("Launch in the background", type="primary", disabled=composed.error is not None, key="train_go")
    if launch and composed.error is None and composed.run_dir is not None:
        try:
            job = jobs.launch(recipe, overrides, run_dir=composed.run_dir, run_root=root, stages=composed.stages)
        except jobs.JobError as exc:
            st.error(str(exc))
        else:
            st.session_state["runs_selected"] = str(composed.run_dir)
            st.success(
                f"launched {composed.run_dir.name} (pid {job.pid}): follow it on the Runs page. "
                "It keeps running when this tab closes."
            )
