"""``python -m octrain.memory ARGS``: the same as ``octrain memory ARGS``."""

from __future__ import annotations

import sys

from octrain.cli import main

if __name__ == "__main__":
    sys.exit(main(["memory", *sys.argv[1:]]))
