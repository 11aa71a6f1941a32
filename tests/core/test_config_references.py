"""Every config key the shipped config files name in their comments exists.

The comments are the documentation a user copies from (``sampler.vllm.tensor_parallel_size=2``):
a key that moved must not live on there. Octrain's own keys are looked up in the typed schema;
``hydra.launcher.*`` keys in the launcher config that names them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import REPO
from octrain.core.config import OctrainConfig

# The top-level sections of OctrainConfig that comments refer to, plus Hydra's launcher section.
KEY = re.compile(
    r"(?<![\w.])((?:sampler|trainer|teacher|student|scale|prompts|pairs|dpo|introspect|sft|eval|hydra\.launcher)"
    r"(?:\.[a-z_][a-z0-9_]*)+)"
)
CONFIG_FILES = sorted((REPO / "configs").rglob("*.yaml"))


def referenced_keys(path: Path) -> list[str]:
    comments = [line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line]
    return sorted({match.group(1).rstrip(".") for text in comments for match in KEY.finditer(text)})


def test_the_launcher_configs_name_keys() -> None:
    keys = referenced_keys(REPO / "configs" / "hydra" / "launcher" / "slurm.yaml")
    assert "sampler.vllm.tensor_parallel_size" in keys and "hydra.launcher.partition" in keys


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_key_a_config_comment_names_exists(path: Path) -> None:
    schema = OmegaConf.structured(OctrainConfig)
    launcher = yaml.safe_load(path.read_text()) if "launcher" in path.parts else {}
    for key in referenced_keys(path):
        if key.startswith("hydra.launcher."):
            field = key.removeprefix("hydra.launcher.")
            assert field in launcher, f"{path.name} names {key}, which its launcher config lacks"
        else:
            assert OmegaConf.select(schema, key, default="<missing>") != "<missing>", f"{path.name} names {key}"
