"""The evaluation modules the ``eval`` stage reaches import first, in a fresh interpreter.

``octrain.stages`` imports every stage module while its package loads, and the ``eval`` stage
imports :mod:`octrain.evaluation.fingerprint`; an evaluation module that imports
``octrain.stages...`` at its top and is imported by the stage would then find itself half
loaded. An import graph sees no circle there (the package's ``__init__`` is the hidden edge), so
each module is imported first, on its own.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["octrain.evaluation.fingerprint", "octrain.evaluation.paper_suite", "octrain.evaluation.character_shift"],
)
def test_imports_first_in_a_fresh_interpreter(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
