"""Which model a spec names: registry names, personas, run and stage directories, adapters, bases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from octrain.core.errors import ConfigError, RegistryError
from octrain.use.model_choice import base_of, choose_model, latest_of_persona


def test_every_way_of_naming_the_trained_model_gives_the_same_adapter(trained_tiny_root: Path) -> None:
    run = trained_tiny_root / "pirate_tiny"
    by_name = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    assert by_name.checkpoint is not None and by_name.checkpoint.stage == "sft"
    assert Path(by_name.ref.adapter or "").is_dir() and by_name.run_dir == run.resolve()
    by_persona = latest_of_persona("pirate", run_root=trained_tiny_root)
    for chosen in (
        choose_model(str(run), run_root="/nowhere"),
        choose_model(str(run / "sft"), run_root="/nowhere"),
        choose_model(str(run / "sft" / "model.json"), run_root="/nowhere"),
        by_persona,
    ):
        assert Path(chosen.ref.adapter or "").resolve() == Path(by_name.ref.adapter or "").resolve()
        assert chosen.run_dir == run.resolve() and chosen.persona == "pirate"
    # The run's student settings come along, with this model's base.
    assert by_name.model_config().path == by_name.ref.base == "builtin:tiny-qwen3"
    assert by_name.constitution() is not None and by_name.constitution().name == "pirate"
    dpo = choose_model("pirate_tiny/dpo", run_root=trained_tiny_root)
    assert dpo.ref.adapter != by_name.ref.adapter and Path(dpo.ref.adapter or "").is_dir()
    base = base_of(by_name)
    assert base.is_base and base.ref.adapter is None and base.run_dir == by_name.run_dir


def test_an_adapter_directory_names_its_base(trained_tiny_root: Path, tmp_path: Path) -> None:
    adapter = Path(choose_model("pirate_tiny/dpo", run_root=trained_tiny_root).ref.adapter or "")
    copy = shutil.copytree(adapter, tmp_path / "adapter")
    chosen = choose_model(str(copy), run_root="/nowhere")
    assert chosen.ref.adapter == str(copy.resolve()) and chosen.run_dir is None
    assert chosen.ref.base == json.loads((copy / "adapter_config.json").read_text())["base_model_name_or_path"]
    (copy / "adapter_config.json").write_text("{}")
    with pytest.raises(Exception, match="base_model_name_or_path"):
        choose_model(str(copy), run_root="/nowhere")


def test_unknown_names_and_non_models_are_one_clear_error(trained_tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="did you mean pirate_tiny/sft"):
        choose_model("pirate_tiny/sfx", run_root=trained_tiny_root)
    with pytest.raises(RegistryError, match="no checkpoint registry"):
        choose_model("pirate_tiny/sft", run_root=tmp_path)
    with pytest.raises(RegistryError, match="personas with one: pirate"):
        latest_of_persona("ninja", run_root=trained_tiny_root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a model"):
        choose_model(str(tmp_path / "empty"), run_root=trained_tiny_root)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ConfigError, match=r"model\.json"):
        choose_model(str(tmp_path / "notes.txt"), run_root=trained_tiny_root)


def test_a_built_in_model_is_a_base_and_an_unknown_one_lists_those_built_in(tmp_path: Path) -> None:
    chosen = choose_model("builtin:tiny-qwen3", run_root=tmp_path)  # no registry needed: it is not a name
    assert chosen.is_base and chosen.ref.base == "builtin:tiny-qwen3" and chosen.ref.adapter is None
    with pytest.raises(ConfigError, match=r"'builtin:tiny-qwen4'.*builtin:tiny-qwen3.*builtin:smollm2-135m-instruct"):
        choose_model("builtin:tiny-qwen4", run_root=tmp_path)
