"""Where octrain finds its configs, recipes and constitutions.

They live at the top of the project checkout (``configs/``, ``recipes/``,
``constitutions/``), next to ``src/``: octrain is installed from its checkout with
``pip install -e .``. ``OCTRAIN_HOME`` points elsewhere, for a checkout kept apart from
the installed package. Constitutions are also looked up in ``./constitutions`` first, so a
user's own personas in their working directory take precedence.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    configured = os.environ.get("OCTRAIN_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(__file__).resolve().parents[3]  # src/octrain/core/paths.py


def configs_dir() -> Path:
    return project_root() / "configs"


def recipes_dir() -> Path:
    return project_root() / "recipes"


def constitution_dirs() -> list[Path]:
    local = Path.cwd() / "constitutions"
    shipped = project_root() / "constitutions"
    return [local, shipped] if local.resolve() != shipped.resolve() else [shipped]


def available_recipes() -> list[str]:
    directory = recipes_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []
