"""The planner's old name, kept for one release: ``python -m octrain.memory_plan`` is now ``octrain memory``.

Run as a module, it prints one deprecation line on stderr and then runs ``octrain memory`` with the
same arguments. Imported, it warns once (a :class:`FutureWarning`, like the flat layout's other old
names in :mod:`octrain.core.moved`) and hands out the names the planner's modules define. A real
file rather than an entry in ``octrain.core.moved``, because ``python -m`` needs one.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

from octrain.memory import advice, engines, lora_training, needs, planner, report, shapes, training

DEPRECATION = (
    "octrain: `python -m octrain.memory_plan` is now `octrain memory` (same arguments); "
    "the old name goes in the next release"
)
# Where the old module's names live now, looked through in this order.
_NEW_HOMES = (shapes, needs, engines, lora_training, training, advice, planner, report)

if __name__ != "__main__":
    warnings.warn(
        "octrain.memory_plan is now octrain.memory (and `octrain memory`); the old name goes in the next release",
        FutureWarning,  # shown by default, unlike DeprecationWarning outside __main__
        stacklevel=2,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``octrain memory ARGV``: the exit status (0, or 2 with one line on stderr)."""
    from octrain.cli import main as cli_main  # the command line, only when it is run

    return cli_main(["memory", *(sys.argv[1:] if argv is None else argv)])


def __getattr__(name: str) -> Any:
    for module in _NEW_HOMES:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    print(DEPRECATION, file=sys.stderr)
    sys.exit(main())
