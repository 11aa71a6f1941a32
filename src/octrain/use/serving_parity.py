"""Before ``octrain serve`` says it is serving: does the server answer as the trained model does?

The most common complaint about fine-tuned models in production is that the served one is worse than
the one that was trained, and the usual cause is something that changed on the way out: a chat
template, a stop token, a sampling default, a merge. So ``octrain serve`` asks each model it serves,
through the server's own HTTP API, the parity prompts of :mod:`octrain.use.parity` (greedy,
``max_tokens`` as the reference's), and holds the text answers to the trained model's: the base with
its adapter through PEFT, in float32, computed before the server starts (so the two never share a
GPU). A difference stops the server and names what differs; ``--no-check`` skips all of it.

Greedy answers legitimately part ways at a near-tie (a bf16 server and a float32 reference round
differently), so each answer must equal the reference up to its first token whose lead is within
the tolerance for the precision the server computes in (:func:`octrain.use.parity.check_texts`).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from octrain.use.model_choice import ChosenModel
from octrain.use.parity import ParityError, ParityReport, Reference, check_texts, reference_of


def references_for(chosen: Sequence[ChosenModel], names: Sequence[str]) -> dict[str, Reference]:
    """The trained model's answers to the parity prompts, for each model a server will serve under ``names``."""
    return {name: reference_of(model) for model, name in zip(chosen, names, strict=True)}


def served_answer(base_url: str, model: str, messages: Sequence[dict[str, str]], max_tokens: int) -> str:
    """One greedy answer from an OpenAI-compatible server's ``/chat/completions``."""
    body = {"model": model, "messages": list(messages), "temperature": 0, "max_tokens": max_tokens, "seed": 0}
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read()[:300].decode(errors="replace")
        raise ParityError(f"the server refused a parity prompt for {model}: HTTP {error.code} {detail}") from error
    except (OSError, ValueError) as error:
        raise ParityError(f"the server did not answer a parity prompt for {model}: {error}") from error
    try:
        return reply["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as error:
        raise ParityError(f"the server's answer for {model} is not a chat completion: {str(reply)[:300]}") from error


def check_server(base_url: str, references: dict[str, Reference], *, precision: str) -> list[ParityReport]:
    """Ask the server each reference's prompts and compare; ParityError naming what differs, else the reports."""
    reports = []
    for name, reference in references.items():
        answers = [
            served_answer(base_url, name, prompt.messages, max_tokens=len(prompt.tokens))
            for prompt in reference.prompts
        ]
        report = check_texts(reference, answers, precision=precision)
        report = dataclasses.replace(report, candidate=f"the server's {name}")
        report.raise_if_different()
        reports.append(report)
    return reports


def parity_hook(
    base_url: str, references: dict[str, Reference], *, precision: str, say: Callable[[str], None]
) -> Callable[[], None]:
    """What :func:`octrain.use.serving.run_server` calls once the server is healthy, before it says it serves."""

    def check() -> None:
        for name, report in zip(references, check_server(base_url, references, precision=precision), strict=True):
            say(f"{name}: {report.summary()}")

    return check


def served_precision(dtype: str, base: str) -> str:
    """The precision a server computes in: ``dtype``, or with ``auto`` the dtype the base is stored in."""
    if dtype != "auto":
        return dtype
    from octrain.use.export import base_dtype

    return base_dtype(base)
