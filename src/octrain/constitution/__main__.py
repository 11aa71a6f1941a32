"""``python -m octrain.constitution``: the old name of ``octrain constitution``, kept for one release.

It prints one deprecation line on stderr, then runs the verb itself (:mod:`octrain.cli.constitution`)
with the same arguments, so the two names cannot drift apart:

    python -m octrain.constitution validate FILE...   is   octrain constitution validate FILE...
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from octrain.cli import main as cli_main

DEPRECATION = "`python -m octrain.constitution` is now `octrain constitution`; the old name goes in the next release"


def main(argv: Sequence[str] | None = None) -> int:
    """``octrain constitution ARGV`` after the deprecation line: the verb's exit status."""
    print(DEPRECATION, file=sys.stderr)
    return cli_main(["constitution", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
