"""Matches files: base against tuned answers, judged or not, rated by Elo (``octrain eval elo``).

A matches file holds one ``{"prompt", "base_response", "tuned_response", "winner"}`` row per
line, as the eval stage writes them (``eval/matches.jsonl``) and the Studio's scorer takes them.
:func:`elo_from_matches` is the command as a function: winners already in the file are used as
they are; missing or empty ones (the Studio writes ``""`` for a match not yet judged) are filled
by a judge at an OpenAI-compatible endpoint, in both orders (a win only when both agree); and the
decided matches can be written back in the form the Studio's scorer takes, which knows only
``base`` and ``tuned`` (:func:`export_studio`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError, DataFormatError
from octrain.core.files import iter_jsonl, write_jsonl
from octrain.evaluation.judge_check import JudgeEndpoint
from octrain.evaluation.protocols import (
    COHERENCE,
    DISAGREE,
    coherence_criterion,
    match_summary,
    match_winner,
    pairwise_verdicts,
)
from octrain.samplers.base import SamplingParams
from octrain.samplers.openai_http import OpenAIChatSampler

WINNERS = ("base", "tuned", "tie")
# The only winners the Studio's scorer accepts: ties, disagreements and unparseable matches stay out.
STUDIO_WINNERS = ("base", "tuned")


def load_matches(path: Path) -> list[dict[str, Any]]:
    """The rows of a matches file, with ``winner`` None where undecided and ``disagree`` set.

    Raises:
        DataFormatError: a row lacks a string prompt or response, or names an unknown winner.
    """
    rows = []
    for number, row in iter_jsonl(path):
        for key in ("prompt", "base_response", "tuned_response"):
            if not isinstance(row.get(key), str):
                raise DataFormatError(f"{path}:{number}: '{key}' must be a string")
        if row.get("winner") not in (None, "", *WINNERS):
            raise DataFormatError(f"{path}:{number}: 'winner' must be one of {', '.join(WINNERS)}, empty or absent")
        if row.get("winner") == "":
            row["winner"] = None  # the Studio's way of writing "not judged yet"
        # The eval stage's matches files mark a match whose two orders disagreed: already judged.
        row["disagree"] = row.get("winner") is None and row.get("judgement") == "disagree"
        rows.append(row)
    return rows


def export_studio(rows: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """Write the matches won by ``base`` or ``tuned`` to ``path``; count what was left out and why."""
    kept = [
        {key: row[key] for key in ("prompt", "base_response", "tuned_response", "winner")}
        for row in rows
        if row.get("winner") in STUDIO_WINNERS and not row.get("disagree")
    ]
    write_jsonl(path, kept)
    ties = sum(row.get("winner") == "tie" and not row.get("disagree") for row in rows)
    disagreements = sum(bool(row.get("disagree")) for row in rows)
    return {
        "path": str(path),
        "matches": len(kept),
        "left_out": {
            "ties": ties,
            "disagreements": disagreements,
            "unparseable": len(rows) - len(kept) - ties - disagreements,
        },
    }


def elo_from_matches(
    path: Path,
    *,
    endpoint: JudgeEndpoint | None = None,
    constitution: str | None = None,
    parse_retries: int = 1,
    rounds: int = 200,
    seed: int = 0,
    export_to: Path | None = None,
) -> dict[str, Any]:
    """Elo ratings and the tuned model's win rate from the matches file at ``path``.

    Args:
        path: the matches file.
        endpoint: the judge for the undecided matches; needed only when there are some.
        constitution: a constitution's name or path: the judge then sees its numbered traits.
        parse_retries: how often to ask again when a judge reply holds no parseable verdict.
        rounds: bootstrap rounds of the Elo intervals.
        seed: seeds the judge's sampling and the bootstrap.
        export_to: where to write the decided matches for the Studio's scorer; the result's
            ``studio_export`` then says how many were written and what was left out.

    Raises:
        ConfigError: matches without a winner and no ``endpoint``, or ``parse_retries`` below 0.
        DataFormatError: the file is malformed (see :func:`load_matches`).
    """
    if parse_retries < 0:
        raise ConfigError(f"--judge-parse-retries: expected 0 or more, got {parse_retries}")
    rows = load_matches(path)
    missing = [row for row in rows if row.get("winner") is None and not row["disagree"]]
    if missing:
        if endpoint is None:
            raise ConfigError(
                f"{path}: {len(missing)} matches have no winner; give --judge-url and --judge-model to judge them"
            )
        criterion = COHERENCE
        if constitution:
            # Imported here: the run's machinery is needed only to find a constitution by name.
            from octrain.constitution.catalog import resolve_constitution_name

            criterion = coherence_criterion(resolve_constitution_name(constitution).numbered_traits())
        judge = OpenAIChatSampler(
            endpoint.base_url,
            endpoint.model,
            api_key_env=endpoint.api_key_env,
            timeout=endpoint.timeout,
            max_retries=endpoint.retries,
        )
        verdicts = pairwise_verdicts(
            judge,
            [r["prompt"] for r in missing],
            [r["tuned_response"] for r in missing],
            [r["base_response"] for r in missing],
            criterion,
            SamplingParams(temperature=0.1, repetition_penalty=1.0, max_new_tokens=512, seed=seed),
            retries=parse_retries,
        )
        for row, verdict in zip(missing, verdicts, strict=True):
            row["winner"] = match_winner(verdict)
            row["disagree"] = verdict == DISAGREE
    # A disagreement between the two orders is dropped and counted; None left over is unparseable.
    winners = [row.get("winner") for row in rows if not row.get("disagree")]
    disagreements = len(rows) - len(winners)
    summary = match_summary(winners, disagreements=disagreements, rounds=rounds, seed=seed)
    result: dict[str, Any] = {
        "matches": len(rows),
        "decided": summary.pop("judged"),
        "disagreements": summary.pop("disagreements"),
        "unparseable": summary.pop("unparseable"),
    }
    if "win_rate" in summary:
        result["tuned_win_rate"] = summary.pop("win_rate")
    if export_to is not None:
        result["studio_export"] = export_studio(rows, export_to)
    return {**result, **summary}
