"""``octrain memory`` as a user runs it (real subprocesses), beside its old name ``python -m octrain.memory_plan``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, patience, run_cli
from octrain.core.compose import compose_config
from octrain.core.layout import CONFIG_FILE, save_config

DEPRECATION = "octrain: `python -m octrain.memory_plan` is now `octrain memory`"


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` from the repository, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=patience(300)
    )


def table_stages(stdout: str) -> list[str]:
    """The stage column of the report's table, header and rule left out."""
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [row.split("|")[1].strip() for row in rows[1:]]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    return lines[0]


def test_the_verb_prints_a_table_for_a_recipe() -> None:
    result = run_cli("memory", "+recipe=pirate_mini", "--card", "80")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("# Memory plan: pirate_mini")
    assert any(line.startswith("| stage | what runs | needs (GiB) | 80 GB") for line in result.stdout.splitlines())
    assert table_stages(result.stdout) == ["prompts", "pairs", "pairs", "dpo", "introspect", "sft", "eval", "eval"]


def test_the_verb_reads_a_run_directory_with_overridden_cards_and_detail(tmp_path: Path) -> None:
    save_config(compose_config("pirate_mini", ["stages=[dpo,sft]"]), tmp_path / CONFIG_FILE)
    result = run_cli("memory", str(tmp_path), "--card", "24", "--card", "48", "--detail")
    assert result.returncode == 0, result.stderr
    assert table_stages(result.stdout) == ["dpo", "sft"]
    assert "| stage | what runs | needs (GiB) | 24 GB (22 GiB) | 48 GB (44.5 GiB) |" in result.stdout
    assert "activations" in result.stdout  # --detail lists each row's parts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["+recipe=no_such_recipe"], "octrain: error: unknown recipe 'no_such_recipe'"),
        (["+recipe=pirate_mini", "no_such_key=1"], "octrain: error: Could not override 'no_such_key'"),
        ([], "octrain: error: name one recipe (+recipe=NAME)"),
    ],
)
def test_what_the_verb_cannot_plan_is_one_line_and_status_2(args: list[str], message: str) -> None:
    assert one_line_error(run_cli("memory", *args)).startswith(message)


def test_the_old_name_says_what_replaced_it_then_prints_the_same_report() -> None:
    old = run_module("octrain.memory_plan", "+recipe=pirate_mini", "--card", "48")
    new = run_cli("memory", "+recipe=pirate_mini", "--card", "48")
    assert old.returncode == new.returncode == 0, old.stderr
    assert old.stderr.splitlines() == [old.stderr.splitlines()[0]] and old.stderr.startswith(DEPRECATION)
    assert old.stdout == new.stdout
    assert run_module("octrain.memory", "+recipe=pirate_mini", "--card", "48").stdout == new.stdout


def test_the_old_name_fails_as_the_verb_does_after_its_deprecation_line() -> None:
    result = run_module("octrain.memory_plan", "+recipe=no_such_recipe")
    assert result.returncode == 2
    deprecation, error = result.stderr.strip().splitlines()
    assert deprecation.startswith(DEPRECATION) and error.startswith("octrain: error: unknown recipe")


def test_the_old_module_still_imports_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "octrain.memory_plan", raising=False)
    with pytest.warns(FutureWarning, match="octrain.memory_plan is now octrain.memory"):
        old = importlib.import_module("octrain.memory_plan")
    import octrain.memory as new
    from octrain.memory.lora_training import ACT_COEFFS

    assert old.plan is new.plan and old.describe is new.describe and old.ACT_COEFFS is ACT_COEFFS
    with pytest.raises(AttributeError):
        _ = old.no_such_name


def test_help_has_examples_and_imports_neither_torch_nor_the_planner() -> None:
    code = (
        "import sys\n"
        "from octrain.cli import main\n"
        "status = main(['memory', '--help'])\n"
        "print(status, [m for m in ('torch', 'transformers', 'octrain.memory') if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=patience(300)
    )
    assert result.returncode == 0, result.stderr
    assert "octrain memory +recipe=pirate_mini" in result.stdout and "examples:" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "0 []"
