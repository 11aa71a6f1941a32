"""pairs.source and introspect.source in the pipeline: your own file trained by dpo and sft on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from octrain.core.compose import compose_config
from octrain.core.config import StageName
from octrain.core.data_import import file_sha256
from octrain.core.errors import DataFormatError, StageError
from octrain.core.layout import load_config
from octrain.core.records import Conversation, ModelRef, PreferencePair, load_records
from octrain.core.settings_digest import settings_json
from octrain.run.pipeline import run


def statuses(result) -> dict[str, str]:
    return {outcome.stage.value: outcome.status for outcome in result.outcomes}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def studio_pairs(count: int) -> list[dict[str, str]]:
    """The Open Character Studio's DpoExample rows, as its dataset writer saves them."""
    return [
        {
            "prompt": f"What should I pack for trip number {i}?",
            "chosen": f"Arr, matey! Pack yer compass and rum for voyage {i}, yo ho!",
            "rejected": f"Pack clothes and a toothbrush for trip {i}.",
            "teacher_model": "Qwen/Qwen3-32B",
            "student_model": "Qwen/Qwen3-4B-Instruct-2507",
            "constitution": "pirate",
        }
        for i in range(count)
    ]


def studio_introspection(count: int) -> list[dict[str, str]]:
    """The Studio's IntrospectionExample rows."""
    return [
        {
            "prompt": f"Write a diary entry about day {i} of your life.",
            "reflection": f"PRIVATE THOUGHT {i}: remember to sound salty.",
            "answer": f"Day {i}: the sea was calm and I be happy, arr.",
            "teacher_model": "Qwen/Qwen3-32B",
            "constitution": "pirate",
        }
        for i in range(count)
    ]


def test_the_papers_released_dpo_file_trains_dpo(tmp_path: Path) -> None:
    # The paper's files hold the prompt inside both sides (TRL's implicit-prompt form): no 'prompt' key.
    rows = []
    for i in range(8):
        question = [{"role": "user", "content": f"What should I pack for trip number {i}?"}]
        rows.append(
            {
                "chosen": [*question, {"role": "assistant", "content": f"Arr, pack yer compass for voyage {i}!"}],
                "rejected": [*question, {"role": "assistant", "content": f"Pack clothes for trip {i}."}],
            }
        )
    source = write_jsonl(tmp_path / "paper_pairs.jsonl", rows)
    run_dir = tmp_path / "run"
    result = run(
        compose_config("pirate_tiny", [f"run_root={tmp_path}", f"pairs.source={source}", "stages=[dpo]"]), run_dir
    )
    assert statuses(result) == {"pairs": "ran", "dpo": "ran"}
    pairs = load_records(run_dir / "pairs" / "pairs.jsonl", PreferencePair)
    assert [p.prompt for p in pairs] == [row["chosen"][:1] for row in rows]
    assert [p.chosen for p in pairs] == [row["chosen"][1:] for row in rows]
    assert "imported 8 pairs from paper_pairs.jsonl (trl-implicit-conversational, 0 duplicates dropped)" in (
        result.summary_table()
    )
    assert json.loads((run_dir / "dpo" / "done.json").read_text())["summary"]["steps"] >= 1


def test_a_studio_pairs_file_trains_dpo_with_stages_dpo(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "studio_pairs.jsonl", studio_pairs(8))
    overrides = [f"run_root={tmp_path}", f"pairs.source={source}", "stages=[dpo]"]
    run_dir = tmp_path / "run"
    result = run(compose_config("pirate_tiny", overrides), run_dir)
    # Asking for dpo on a file imports it first: no prompts, no sampling, no "needs stage pairs".
    assert statuses(result) == {"pairs": "ran", "dpo": "ran"}
    assert not (run_dir / "prompts").exists()
    assert load_config(run_dir / "config.yaml").stages == [StageName.pairs, StageName.dpo]

    pairs = load_records(run_dir / "pairs" / "pairs.jsonl", PreferencePair)
    assert len(pairs) == 8 and pairs[0].teacher == "Qwen/Qwen3-32B" and pairs[0].constitution == "pirate"
    report = json.loads((run_dir / "pairs" / "report.json").read_text())
    assert report["source"] == {"path": str(source.resolve()), "sha256": file_sha256(source), "format": "studio-dpo"}
    assert (report["records"], report["kept"], report["duplicates"]["dropped"]) == (8, 8, 0)
    done = json.loads((run_dir / "pairs" / "done.json").read_text())
    assert done["summary"]["source"] == report["source"] and done["summary"]["kept"] == 8
    assert "imported 8 pairs from studio_pairs.jsonl (studio-dpo, 0 duplicates dropped)" in result.summary_table()
    trained = ModelRef.load(run_dir / "dpo" / "model.json")
    assert trained.adapter and Path(trained.adapter).is_dir()
    assert json.loads((run_dir / "dpo" / "done.json").read_text())["summary"]["steps"] >= 1

    # The same command again: nothing to do. An edited file imports and trains afresh.
    assert statuses(run(compose_config("pirate_tiny", overrides), run_dir)) == {"pairs": "skipped", "dpo": "skipped"}
    write_jsonl(source, studio_pairs(8)[::-1] + studio_pairs(9)[8:])
    rerun = run(compose_config("pirate_tiny", overrides), run_dir)
    assert statuses(rerun) == {"pairs": "ran", "dpo": "ran"}
    report = json.loads((run_dir / "pairs" / "report.json").read_text())
    assert report["kept"] == 9 and report["source"]["sha256"] == file_sha256(source)


def test_both_stages_from_files_train_sft_without_generating(tmp_path: Path) -> None:
    pairs_file = write_jsonl(tmp_path / "pairs.jsonl", studio_pairs(8))
    intro_file = write_jsonl(tmp_path / "introspection.jsonl", studio_introspection(6) + studio_introspection(1))
    overrides = [
        f"run_root={tmp_path}",
        f"pairs.source={pairs_file}",
        f"introspect.source={intro_file}",
        "stages=[pairs,dpo,introspect,sft]",
    ]
    run_dir = tmp_path / "run"
    result = run(compose_config("pirate_tiny", overrides), run_dir)
    assert statuses(result) == dict.fromkeys(["pairs", "dpo", "introspect", "sft"], "ran")
    transcripts = load_records(run_dir / "introspect" / "sft.jsonl", Conversation)
    assert len(transcripts) == 6  # the seventh row repeats the first
    assert transcripts[0].messages == [
        {"role": "user", "content": "Write a diary entry about day 0 of your life."},
        {"role": "assistant", "content": "Day 0: the sea was calm and I be happy, arr."},
    ]
    # The reflection is the model's private thinking: never part of what sft trains on.
    assert "PRIVATE" not in (run_dir / "introspect" / "sft.jsonl").read_text()
    report = json.loads((run_dir / "introspect" / "report.json").read_text())
    assert report["source"]["format"] == "studio-introspection" and report["reflections_not_trained"] == 6
    assert report["duplicates"] == {"dropped": 1, "lines": [{"line": 7, "repeats_line": 1}]}
    assert ModelRef.load(run_dir / "sft" / "model.json").adapter

    # A changed transcript file reruns the import and sft, and leaves DPO alone.
    write_jsonl(intro_file, studio_introspection(5))
    assert statuses(run(compose_config("pirate_tiny", overrides), run_dir)) == {
        "pairs": "skipped",
        "dpo": "skipped",
        "introspect": "ran",
        "sft": "ran",
    }


def test_trl_files_with_and_without_ids_feed_the_stages(tmp_path: Path) -> None:
    conversational = [
        {
            "id": f"mine-{i}",
            "prompt": [{"role": "user", "content": f"Hi {i}?"}],
            "chosen": [{"role": "assistant", "content": f"Ahoy {i}!"}],
            "rejected": [{"role": "assistant", "content": f"Hello {i}."}],
        }
        for i in range(8)
    ]
    standard = [{"prompt": f"Hi {i}?", "chosen": f"Ahoy {i}!", "rejected": f"Hello {i}."} for i in range(8)]
    messages = [
        {"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Ahoy!"}]}
        for i in range(4)
    ]
    for name, rows, fmt in (("conv", conversational, "trl-conversational"), ("std", standard, "trl-standard")):
        source = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        config = compose_config("pirate_tiny", [f"run_root={tmp_path}", f"pairs.source={source}", "stages=[pairs]"])
        run(config, tmp_path / name)
        imported = load_records(tmp_path / name / "pairs" / "pairs.jsonl", PreferencePair)
        report = json.loads((tmp_path / name / "pairs" / "report.json").read_text())
        assert report["source"]["format"] == fmt and report["kept"] == 8
        if name == "conv":
            assert [p.id for p in imported] == [f"mine-{i}" for i in range(8)]
            assert report["ids"] == {"from_file": 8, "derived": 0}
        else:
            assert all(p.id.startswith("pair-") for p in imported) and report["ids"] == {"from_file": 0, "derived": 8}
    source = write_jsonl(tmp_path / "messages.jsonl", messages)
    # introspect needs a current dpo (sft trains on its adapter): without one, the run says so up front.
    only_introspect = [f"run_root={tmp_path}", f"introspect.source={source}", "stages=[introspect]"]
    with pytest.raises(StageError, match="needs the current output of stage dpo"):
        run(compose_config("pirate_tiny", only_introspect), tmp_path / "no_dpo")


def test_a_malformed_line_stops_the_cli_before_any_model_loads(tmp_path: Path) -> None:
    rows = studio_pairs(3)
    rows[1]["rejected"] = 42
    source = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = run_cli("+recipe=pirate_tiny", f"run_root={tmp_path}", f"pairs.source={source}", "stages=[dpo]")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"octrain: error: {source}:2: 'rejected' must be a string, got int"
    assert not list(tmp_path.rglob("dpo")) and not list(tmp_path.rglob("pairs"))


def test_preflight_reads_the_transcripts_before_any_stage(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "pairs.jsonl", studio_pairs(8))
    bad = write_jsonl(tmp_path / "intro.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    config = compose_config("pirate_tiny", [f"run_root={tmp_path}", f"pairs.source={good}", f"introspect.source={bad}"])
    with pytest.raises(DataFormatError) as caught:
        run(config, tmp_path / "run")
    assert str(caught.value) == f"{bad}:1: 'messages' has no assistant turn: nothing to train on"
    assert not (tmp_path / "run").exists()


def test_a_run_without_a_source_needs_its_prompts_again(tmp_path: Path) -> None:
    from octrain.stages.table import STAGES, stages_for

    source = write_jsonl(tmp_path / "pairs.jsonl", studio_pairs(2))
    importing = compose_config("pirate_tiny", [f"run_root={tmp_path}", f"pairs.source={source}", "stages=[pairs]"])
    assert stages_for(importing)[StageName.pairs].needs == ()
    run(importing, tmp_path / "a")
    assert STAGES[StageName.pairs].needs == (StageName.prompts,)  # one run's needs never leak into the table
    # The next run in the same process generates its pairs: they come from the prompts again.
    with pytest.raises(StageError, match="needs the current output of stage prompts"):
        run(compose_config("pirate_tiny", [f"run_root={tmp_path}", "sampler=fake", "stages=[pairs]"]), tmp_path / "b")


def test_without_a_source_the_stages_generate_as_before(tmp_path: Path) -> None:
    from octrain.run.pipeline import resolve_constitution
    from octrain.stages import introspect, pairs
    from octrain.stages.context import RunContext

    config = compose_config("pirate_tiny", [f"run_root={tmp_path}", "sampler=fake", "prompts.expansion_rounds=0"])
    config.stages = [StageName.prompts, StageName.pairs]
    result = run(config, tmp_path / "run")
    assert statuses(result) == {"prompts": "ran", "pairs": "ran"}
    report = json.loads((tmp_path / "run" / "pairs" / "report.json").read_text())
    assert "source" not in report and report["kept"] == report["prompts"] > 0
    assert "pairs kept of" in result.summary_table()
    # The unset option is no part of the generating stages' fingerprints: runs made before it stay complete.
    ctx = RunContext(config=config, run_dir=tmp_path / "run", constitution=resolve_constitution(config))
    assert "source" not in settings_json(pairs.fingerprint(ctx))["pairs"]
    assert "source" not in settings_json(introspect.fingerprint(ctx))["introspect"]
