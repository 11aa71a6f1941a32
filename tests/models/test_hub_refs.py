"""``hub:ORG/REPO[/SUBFOLDER][@REVISION]`` wherever a model is named, against a stand-in for the Hub on 127.0.0.1.

The stand-in (tests/hub_standin.py) serves folders through the routes ``huggingface_hub`` downloads by;
the commands are real subprocesses whose ``HF_ENDPOINT`` points at it, with a Hugging Face cache of the
test's own. Fetched once, a reference resolves offline; offline before that, it is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, patience
from hub_standin import HubStandIn
from octrain.core.errors import ConfigError
from octrain.models.hub import HubRef, parse_hub_ref


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hub:org/repo", HubRef("org/repo")),
        ("hub:maius/llama-3.1-8b-it-personas/sarcasm", HubRef("maius/llama-3.1-8b-it-personas", "sarcasm")),
        ("hub:org/repo/a/b@v1.0", HubRef("org/repo", "a/b", "v1.0")),
    ],
)
def test_references_parse_into_repository_subfolder_and_revision(spec: str, expected: HubRef) -> None:
    assert parse_hub_ref(spec) == expected
    assert str(expected) == spec


@pytest.mark.parametrize("spec", ["hub:org", "hub:org/", "hub:org/repo@", "hub:/repo", "hub:org/re po"])
def test_a_malformed_reference_says_the_form(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"expected hub:ORG/REPO, hub:ORG/REPO/SUBFOLDER or either with @REVISION"):
        parse_hub_ref(spec)


@pytest.fixture
def hub(tmp_path: Path, tiny_model_path: str, trained_tiny_root: Path) -> Iterator[HubStandIn]:
    """The Hub holding the tiny model as a repository, and a trained tiny adapter in a persona subfolder."""
    root = tmp_path / "hub"
    shutil.copytree(tiny_model_path, root / "octrain-test" / "tiny-chat")
    adapter = trained_tiny_root / "pirate_tiny" / "dpo" / "adapter"
    personas = root / "octrain-test" / "tiny-personas"
    shutil.copytree(adapter, personas / "pirate", ignore=shutil.ignore_patterns("*.md"))
    (personas / "README.md").write_text("the paper's layout: one adapter per persona, in subfolders\n")
    stand_in = HubStandIn(root)
    try:
        yield stand_in
    finally:
        stand_in.close()


def octrain(tmp_path: Path, hub: HubStandIn, *args: str, offline: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m octrain ARGS`` with the stand-in as the Hub and a Hugging Face cache of the test's own."""
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.base_url,
        "HF_HOME": str(tmp_path / "hf-home"),  # a cache of the test's own: empty at first
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "NO_PROXY": "127.0.0.1",
    }
    command = [sys.executable, "-m", "octrain", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=patience(600), env=env)


def sample(tmp_path: Path, hub: HubStandIn, model: str, *, offline: bool = False) -> subprocess.CompletedProcess[str]:
    settings = ["--json", "--temperature", "0", "--max-new-tokens", "12"]
    return octrain(tmp_path, hub, "sample", SEA, model, *settings, offline=offline)


def texts(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [answer["text"] for model in json.loads(result.stdout)["models"] for answer in model["answers"]]


SEA = "Tell me about the sea."


@pytest.mark.slow  # four sample commands (~25 s on 2 cores): the slow lane, which CI runs
def test_a_persona_adapter_in_a_subfolder_answers_and_then_works_offline(
    hub: HubStandIn, tmp_path: Path, trained_tiny_root: Path
) -> None:
    spec = "hub:octrain-test/tiny-personas/pirate"
    before = sample(tmp_path, hub, spec, offline=True)
    assert before.returncode == 2
    assert (
        before.stderr.strip()
        .splitlines()[-1]
        .startswith(f"octrain: error: {spec}: not in the local Hugging Face cache, and the Hub cannot be reached")
    )
    fetched = sample(tmp_path, hub, spec)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    # Only the persona's subfolder came down, not its neighbours.
    adapter = trained_tiny_root / "pirate_tiny" / "dpo" / "adapter"
    files = [p.name for p in adapter.iterdir() if p.is_file() and p.suffix != ".md"]
    assert sorted(hub.served) == sorted(f"octrain-test/tiny-personas/pirate/{name}" for name in files)
    served = len(hub.served)
    again = sample(tmp_path, hub, spec, offline=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(hub.served) == served  # the cache answered
    # The adapter from the Hub answers as the same adapter folder on disk does.
    local = sample(tmp_path, hub, str(adapter))
    assert texts(again) == texts(local) == texts(fetched)


@pytest.mark.slow  # three runs, one through dpo (~35 s): the slow lane
def test_a_run_trains_a_student_named_by_a_hub_reference(hub: HubStandIn, tmp_path: Path) -> None:
    args = [
        "+recipe=pirate_tiny",
        "stages=[prompts,pairs,dpo]",
        "prompts.expansion_rounds=0",
        "scale.prompts_per_trait=1",
        "student.path=hub:octrain-test/tiny-chat",
        f"run_root={tmp_path / 'runs'}",
    ]
    offline = octrain(tmp_path, hub, *args, offline=True)
    assert (
        offline.returncode == 2 and "hub:octrain-test/tiny-chat: not in the local Hugging Face cache" in offline.stderr
    )
    assert not (tmp_path / "runs" / "pirate_tiny" / "pairs").exists()  # stopped in preflight, before any stage
    done = octrain(tmp_path, hub, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    dpo = json.loads((tmp_path / "runs" / "pirate_tiny" / "dpo" / "done.json").read_text())
    assert dpo["summary"]["steps"] >= 1
    missing = octrain(
        tmp_path, hub, *[a if "student.path" not in a else "student.path=hub:octrain-test/nope" for a in args]
    )
    assert missing.returncode == 2
    assert "hub:octrain-test/nope: no repository octrain-test/nope on the Hub" in missing.stderr
