"""``python -m octrain.evaluation COMMAND``: the old name of ``octrain eval COMMAND``, for one more release.

It says so in one line on stderr, then runs exactly what ``octrain eval`` runs (the same parser,
the same commands, the same ``octrain:`` prefix on errors), so there is one piece of logic:

    python -m octrain.evaluation elo matches.jsonl   ->   octrain eval elo matches.jsonl
"""

from __future__ import annotations

import sys

from octrain.core.telemetry import disable_telemetry

disable_telemetry()

from octrain.cli import main as cli_main  # noqa: E402

DEPRECATION = "`python -m octrain.evaluation` is now `octrain eval`; the old name goes in the next release"


def main(argv: list[str] | None = None) -> int:
    print(DEPRECATION, file=sys.stderr)
    return cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
