"""The flat layout's module names still import for one release, each with a warning naming its new home."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from octrain.core.moved import MOVED


def test_every_old_name_points_at_a_module_that_exists_and_no_file_answers_it() -> None:
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
        # The finder is asked only when no file answers: an old name that is still a file would never reach it.
        assert not any(finder for finder in sys.meta_path[:-1] if _finds(finder, old)), old


def _finds(finder: object, name: str) -> bool:
    find_spec = getattr(finder, "find_spec", None)
    if find_spec is None or type(finder).__name__ == "MovedModuleFinder":
        return False
    try:
        return find_spec(name, None) is not None
    except (ImportError, ValueError):
        return False


def test_an_old_import_warns_once_and_hands_out_the_new_modules_objects() -> None:
    code = (
        "import warnings\n"
        "warnings.simplefilter('default')\n"
        "from octrain.pipeline import run\n"
        "import octrain.run.pipeline as new\n"
        "import octrain.registry as old_registry\n"
        "from octrain.use.registry import Registry\n"
        "print(run is new.run, old_registry.Registry is Registry)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True"]
    assert done.stderr.count("FutureWarning") == 2
    assert "octrain.pipeline is now octrain.run.pipeline; the old name goes in the next release" in done.stderr
    assert "octrain.registry is now octrain.use.registry" in done.stderr


def test_a_name_that_never_existed_still_fails_to_import(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("octrain.no_such_module")
    monkeypatch.delitem(sys.modules, "octrain.seeding", raising=False)
    with pytest.warns(FutureWarning, match="octrain.seeding is now octrain.core.seeding"):
        old = importlib.import_module("octrain.seeding")
    assert old.derive_seed is importlib.import_module("octrain.core.seeding").derive_seed
    with pytest.raises(AttributeError):
        _ = old.no_such_name
