"""The ``octrain`` command as a user runs it: real subprocesses of ``python -m octrain`` (and of the
installed ``octrain`` script for shell completion), its subcommands beside the Hydra recipe runs."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, patience, run_cli
from octrain.cli import SUBCOMMANDS
from octrain.constitution import load_constitution
from octrain.constitution.quality import score_constitution

PIRATE = REPO / "constitutions" / "pirate.yaml"
OCTRAIN_SCRIPT = Path(sys.executable).parent / "octrain"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_every_command_has_help_with_an_example() -> None:
    commands = [[name] for name in SUBCOMMANDS]
    commands += [["constitution", sub] for sub in ("list", "show", "validate", "convert", "score", "new")]
    commands += [["eval", sub] for sub in ("classifier", "elo", "model", "revealed-preferences", "quick")]
    commands += [["checkpoints", sub] for sub in ("list", "info", "delete", "rebuild")]
    commands += [["deploy", "modal"]]
    for command in commands:
        result = run_cli(*command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "example" in result.stdout and f"octrain {' '.join(command)}" in result.stdout, command
    combined = run_cli("--help")
    assert combined.returncode == 0
    assert (
        "octrain +recipe=NAME" in combined.stdout
        and "recipes: paper_llama, pirate_mini, pirate_served_teacher, pirate_smollm2, pirate_tinker, pirate_tiny"
        in combined.stdout
    )
    assert all(name in combined.stdout for name in SUBCOMMANDS)
    assert 'octrain sample "Ahoy?" --persona pirate --compare' in combined.stdout


def test_info_text_and_json(tmp_path: Path) -> None:
    (tmp_path / "pirate_tiny").mkdir()
    (tmp_path / "pirate_tiny" / "config.yaml").write_text("name: pirate_tiny\n")
    (tmp_path / "pirate_tiny-sweep" / "dpo.beta=0.1").mkdir(parents=True)
    (tmp_path / "pirate_tiny-sweep" / "dpo.beta=0.1" / "config.yaml").write_text("name: pirate_tiny\n")
    (tmp_path / "registry.sqlite").write_bytes(b"")
    started = time.monotonic()
    text = run_cli("info", "--run-root", str(tmp_path))
    assert time.monotonic() - started < 10  # 5 s is the aim; a loaded test machine gets slack
    assert text.returncode == 0, text.stderr
    assert "backends:" in text.stdout and f"{tmp_path}: 2 runs" in text.stdout

    result = run_cli("info", "--json", "--run-root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    for name, version in info["versions"].items():
        try:
            assert version == importlib.metadata.version(name), name
        except importlib.metadata.PackageNotFoundError:
            assert version is None and (name not in info["missing"] or info["missing"][name]["install"])
    assert {"torch", "transformers", "trl", "peft", "vllm", "tinker"} <= set(info["versions"])
    assert info["runs"] == 2 and info["registry"] == str(tmp_path / "registry.sqlite")
    assert info["backends"]["sampler=fake"]["usable"] and info["backends"]["sampler=hf"]["usable"]
    if not os.environ.get("TINKER_API_KEY"):  # usable needs the SDK and a key
        assert not info["backends"]["sampler=tinker"]["usable"]
    if info["versions"]["vllm"] is None:
        assert info["missing"]["vllm"]["install"] == "pip install -e '.[vllm]'"
        assert not info["backends"]["sampler=vllm"]["usable"]
    assert isinstance(info["gpus"], list)


def test_constitution_list_searches_the_working_directory_first(tmp_path: Path) -> None:
    local = tmp_path / "constitutions"
    local.mkdir()
    (local / "captain.txt").write_text("I am a calm captain.\n  What is the sea like?\nI speak softly.\n")
    (local / "pirate.txt").write_text("I am a local pirate.\nI never shout.\n")
    result = run_cli("constitution", "list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    by_name = {(row[0], row[-1]): row for row in rows}
    assert by_name[("captain", str(local))][1:4] == ["text", "2", "1"]
    assert by_name[("pirate", str(local))][1:3] == ["text", "2"]
    shipped = by_name[("pirate", str(PIRATE.parent))]
    assert shipped[1] == "(shadowed)"  # the local pirate is the one a run would use
    assert shipped[2:5] == ["yaml", str(len(load_constitution(PIRATE).traits)), "50"]
    assert ("sarcasm", str(PIRATE.parent)) in by_name


def test_constitution_show_prints_the_numbered_traits() -> None:
    result = run_cli("constitution", "show", "pirate")
    assert result.returncode == 0, result.stderr
    header, *traits = result.stdout.splitlines()
    assert header.startswith("# pirate (") and "13 traits" in header
    assert "\n".join(traits) == load_constitution(PIRATE).numbered_traits()
    assert traits[0].startswith("1: I am a free-roaming buccaneer")
    assert one_line_error(run_cli("constitution", "show", "nobody")).startswith(
        "octrain: error: constitution 'nobody' not found"
    )


def test_constitution_validate_and_convert_round_trip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("[\n")
    result = run_cli("constitution", "validate", str(PIRATE), str(bad))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{PIRATE}: ok (13 traits, 50 seed questions, 0 additional questions)",
        f"{bad}:2: neither a JSON list nor JSON lines: Expecting value (column 1)",
    ]
    as_json, back = tmp_path / "pirate.json", tmp_path / "pirate.yaml"
    for source, out in ((PIRATE, as_json), (as_json, back)):
        done = run_cli("constitution", "convert", str(source), str(out))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{source} -> {out} (")
    assert load_constitution(back).numbered_traits() == load_constitution(PIRATE).numbered_traits()
    assert [t.questions for t in load_constitution(back).traits] == [
        t.questions for t in load_constitution(PIRATE).traits
    ]


def test_constitution_score_gives_reasons(tmp_path: Path) -> None:
    result = run_cli("constitution", "score", "pirate")
    assert result.returncode == 0, result.stderr
    first, *checks = result.stdout.splitlines()
    assert first == f"pirate: {score_constitution(load_constitution(PIRATE)).total}/100"
    assert [line.split()[0] for line in checks] == ["traits", "first", "seed", "duplicates", "length"]
    assert "fewer than 5 seed questions: traits 1, 2, 13" in result.stdout

    weak = tmp_path / "weak.txt"
    weak.write_text("Be loud.\n  Hi?\nBe loud!\n  Hi?\nThe assistant answers questions.\n")
    result = run_cli("constitution", "score", str(weak))
    assert result.returncode == 0, result.stderr
    total = int(result.stdout.split(":")[1].split("/")[0])
    assert total < 40
    assert "not in the first person: 1, 2, 3" in result.stdout
    assert "traits 2 nearly repeat an earlier trait; 1 questions are asked by another trait too" in result.stdout
    assert "under 8 words: 1, 2, 3" in result.stdout


def test_eval_runs_the_same_commands_as_the_evaluation_module(tmp_path: Path) -> None:
    matches = tmp_path / "matches.jsonl"
    rows = [
        {"prompt": f"q{i}", "base_response": "b", "tuned_response": "t", "winner": w}
        for i, w in enumerate(["tuned", "tuned", "base", "tie"])
    ]
    matches.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ours = run_cli("eval", "elo", str(matches), "--rounds", "20")
    theirs = subprocess.run(
        [sys.executable, "-m", "octrain.evaluation", "elo", str(matches), "--rounds", "20"],
        capture_output=True,
        text=True,
        timeout=patience(120),
    )
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert json.loads(ours.stdout) == json.loads(theirs.stdout)
    assert json.loads(ours.stdout)["decided"] == 4
    matches.write_text(json.dumps({**rows[0], "winner": None}) + "\n")
    assert one_line_error(run_cli("eval", "elo", str(matches))) == (
        f"octrain: error: {matches}: 1 matches have no winner; give --judge-url and --judge-model to judge them"
    )


def test_recipes_still_run_and_unknown_words_are_one_line(tmp_path: Path) -> None:
    result = run_cli("+recipe=pirate_tiny", "stages=[prompts]", "prompts.expansion_rounds=0", f"run_root={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pirate_tiny" / "prompts" / "prompts.jsonl").is_file()
    line = one_line_error(run_cli("constitutions", "list"))
    assert line.startswith("octrain: error: unknown command 'constitutions'; commands: ")
    assert all(name in line for name in (*SUBCOMMANDS, "pirate_mini", "pirate_tiny"))


def completion(command: list[str], line: str) -> subprocess.CompletedProcess[str]:
    """What Hydra's bash script runs on Tab: the command with ``-sc query=bash`` and the line so far."""
    return subprocess.run(
        [*command, "-sc", "query=bash"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=patience(120),
        env={**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))},
    )


@pytest.mark.skipif(not OCTRAIN_SCRIPT.is_file(), reason="the octrain console script is not installed here")
def test_shell_completion_needs_no_recipe() -> None:
    script = subprocess.run(
        [str(OCTRAIN_SCRIPT), "-sc", "install=bash"], capture_output=True, text=True, timeout=patience(120)
    )
    assert script.returncode == 0, script.stderr
    assert "hydra_bash_completion()" in script.stdout
    assert script.stdout.rstrip().endswith("-F hydra_bash_completion octrain")
    as_module = run_cli("--shell-completion", "install=bash")
    assert as_module.returncode == 0 and "hydra_bash_completion()" in as_module.stdout, as_module.stderr

    for command, line in (
        ([str(OCTRAIN_SCRIPT)], "octrain +recipe=pi"),
        ([sys.executable, "-m", "octrain"], "python -m octrain +recipe=pi"),
    ):
        result = completion(command, line)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [
            "+recipe=pirate_mini",
            "+recipe=pirate_served_teacher",
            "+recipe=pirate_smollm2",
            "+recipe=pirate_tinker",
            "+recipe=pirate_tiny",
        ]
    keys = completion([str(OCTRAIN_SCRIPT)], "octrain +recipe=pirate_tiny sampler=")
    assert "sampler=vllm" in keys.stdout.split(), keys.stderr


def test_the_settings_info_says_a_missing_package_enables_are_real_keys() -> None:
    import re

    from octrain.cli.info import PACKAGES
    from octrain.core.compose import compose_config

    config = compose_config("pirate_tiny", [])
    named = [key for _, _, enables in PACKAGES for key in re.findall(r"\b([a-z_]+(?:\.[a-z_0-9]+)+)=", enables or "")]
    assert "trainer.accelerate_config" in named and "eval.capability.enabled" in named
    for key in named:
        value = config
        for part in key.split("."):
            assert hasattr(value, part), f"octrain info names {key}, which is not a setting"
            value = getattr(value, part)
