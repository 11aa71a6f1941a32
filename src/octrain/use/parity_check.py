"""Holding a candidate to the trained model's reference: every difference named, in one report.

A candidate (:mod:`octrain.use.parity_candidates`) is held to the
:class:`~octrain.use.parity_reference.Reference` (:func:`check`), and every difference is named:

* **chat template**: the candidate's template renders each prompt to the same text;
* **tokenizer**: that text becomes the same token ids, and the answer's ids decode to the same text;
* **generation config**: it stops at the same tokens, and the settings that change answers
  (``do_sample``, ``temperature``, ...) are the trained model's;
* **tokens**: the reference's prompt and answer are fed through the candidate in one pass
  (teacher forcing), and its top token must be the reference's at every answer position where
  the reference's margin exceeds the tolerance for the candidate's precision
  (:data:`~octrain.use.parity_reference.TOLERANCES`, a share of the reference's logit scale). Greedy
  decoding legitimately parts ways at near-ties: two tokens a rounding apart can swap when weights
  are stored in bf16 or quantized, and from there the two answers are different texts that are both
  the model's. Teacher forcing keeps every position comparable; the margin rule skips exactly the
  near-ties. A candidate without its adapter, with a wrong template, a scrambled weight or a
  different tokenizer changes the top token at positions far above any tolerance.

:class:`ParityReport` says what was checked and what differed, and
:meth:`ParityReport.raise_if_different` turns a difference into one
:class:`ParityError` naming them. :func:`check_texts` holds an answer given as text (an HTTP
server: ``octrain serve``) to the same reference, free-running: the answer must match the
reference's up to its first near-tie.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from octrain.core.errors import StageError
from octrain.use.parity_candidates import Candidate
from octrain.use.parity_forward import answer_logits, model_device, rendered_prompt
from octrain.use.parity_reference import ANSWER_SETTINGS, PromptReference, Reference

# Fewer checked tokens than this share of the answer positions is no evidence either way: a difference.
MIN_CHECKED_SHARE = 0.25


class ParityError(StageError):
    """An export (or a server) does not answer as the trained model does; the message names what differs."""


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """What :func:`check` found.

    Attributes:
        candidate: the candidate's description.
        differences: one line per difference, each starting with what differs (``chat template``,
            ``tokenizer``, ``generation config``, ``tokens``); empty when none.
        positions: answer positions in the reference.
        checked: of those, the ones whose margin exceeded ``tolerance`` (the others are near-ties);
            fewer than :data:`MIN_CHECKED_SHARE` of ``positions`` is itself a difference.
        mismatched: checked positions where the candidate's top token was another.
        max_logit_diff: the largest absolute logit difference over all answer positions and the
            whole vocabulary (None when no logits were compared).
        tolerance: the margin used (logits).
    """

    candidate: str
    differences: tuple[str, ...]
    positions: int
    checked: int
    mismatched: int
    max_logit_diff: float | None
    tolerance: float

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        """One line: what was compared and what came out."""
        tokens = f"{self.checked}/{self.positions} answer tokens checked (margin > {self.tolerance:.3g})"
        if self.max_logit_diff is not None:
            tokens += f", largest logit difference {self.max_logit_diff:.3g}"
        verdict = "answers as the trained model does" if self.ok else f"{len(self.differences)} difference(s)"
        return f"parity: {verdict}; {tokens}, {self.mismatched} differing"

    def raise_if_different(self) -> None:
        """Raise :class:`ParityError` naming every difference; nothing when there is none."""
        if self.ok:
            return
        raise ParityError(f"{self.candidate} does not answer as the trained model does: {'; '.join(self.differences)}")


def _first_difference(expected: str, got: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    return f"at character {at}: trained {expected[at : at + 40]!r}, exported {got[at : at + 40]!r}"


def _token_names(tokenizer: Any, ids: Sequence[int] | frozenset[int]) -> str:
    return ", ".join(f"{token_id} {tokenizer.convert_ids_to_tokens(int(token_id))!r}" for token_id in sorted(ids))


def check(reference: Reference, candidate: Candidate, *, tolerance: float | None = None) -> ParityReport:
    """Hold ``candidate`` to ``reference`` (see the module docstring); never raises for a difference.

    ``tolerance`` (logits) defaults to :meth:`Reference.tolerance` for the candidate's precision.
    """
    import torch

    margin = reference.tolerance(candidate.precision) if tolerance is None else tolerance
    differences: list[str] = []
    tokenizer = candidate.tokenizer

    if candidate.stop_ids != reference.stop_ids:
        differences.append(
            f"generation config: stops at [{_token_names(tokenizer, candidate.stop_ids)}] where the trained model "
            f"stops at [{_token_names(reference.tokenizer, reference.stop_ids)}]"
        )
    if candidate.generation is not None:
        changed = [
            f"{key} {candidate.generation.get(key)!r} (trained: {reference.generation.get(key)!r})"
            for key in ANSWER_SETTINGS
            if candidate.generation.get(key) != reference.generation.get(key)
        ]
        if changed:
            differences.append(f"generation config: {', '.join(changed)}")
    changed = [
        f"{key} {candidate.settings.get(key)!r} (expected {value!r})"
        for key, value in candidate.expected_settings.items()
        if candidate.settings.get(key) != value
    ]
    if changed:
        differences.append(f"generation config: {', '.join(changed)}")

    checked = mismatched = 0
    largest: float | None = None
    # Per kind of difference in the prompts' texts, one line per prompt; the first is reported with a count.
    per_prompt: dict[str, list[str]] = {}
    for number, prompt in enumerate(reference.prompts, start=1):
        renderings = {
            "its chat template": lambda messages: rendered_prompt(tokenizer, messages, reference.enable_thinking)[0],
            **candidate.renderings,
        }
        rendered_alike = True
        for where, render in renderings.items():
            text = render(prompt.messages)
            if text != prompt.text:
                rendered_alike = False
                per_prompt.setdefault(f"template {where}", []).append(
                    f"chat template: prompt {number} renders differently through {where} "
                    f"{_first_difference(prompt.text, text)}"
                )
        if not rendered_alike:
            continue
        ids = tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
        if tuple(ids) != prompt.prompt_ids:
            per_prompt.setdefault("tokenize", []).append(
                f"tokenizer: prompt {number} becomes {len(ids)} tokens where the trained tokenizer makes "
                f"{len(prompt.prompt_ids)} ({_first_token_difference(tokenizer, prompt.prompt_ids, ids)})"
            )
            continue
        decoded = tokenizer.decode(list(prompt.tokens), skip_special_tokens=True)
        if decoded != prompt.answer:
            per_prompt.setdefault("decode", []).append(
                f"tokenizer: the answer to prompt {number} decodes differently "
                f"{_first_difference(prompt.answer, decoded)}"
            )
        if candidate.model is None:
            continue
        logits = answer_logits(candidate.model, prompt.prompt_ids, prompt.tokens, model_device(candidate.model))
        diff = float((logits - prompt.logits).abs().max())
        largest = diff if largest is None else max(largest, diff)
        predicted = logits.argmax(dim=-1).tolist()
        for position, (expected, got, lead) in enumerate(zip(prompt.tokens, predicted, prompt.margins, strict=True)):
            if lead <= margin:
                continue
            checked += 1
            if got != expected:
                mismatched += 1
                if mismatched == 1:
                    differences.append(
                        f"tokens: prompt {number}, answer token {position + 1}: the trained model says "
                        f"{tokenizer.convert_ids_to_tokens(expected)!r} by a margin of {lead:.3g} logits, the export "
                        f"{tokenizer.convert_ids_to_tokens(got)!r}"
                    )
        del logits
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for lines in per_prompt.values():
        more = f" (and {len(lines) - 1} more of the {len(reference.prompts)} prompts)" if len(lines) > 1 else ""
        differences.append(lines[0] + more)
    if mismatched > 1:
        differences.append(f"tokens: {mismatched} of {checked} checked answer tokens differ in all")
    if candidate.model is not None and not differences and checked < MIN_CHECKED_SHARE * reference.positions:
        differences.append(
            f"tokens: inconclusive: only {checked} of {reference.positions} answer tokens lead by more than the "
            f"tolerance ({margin:.3g} logits), too few to tell this export from a different model"
        )
    return ParityReport(
        candidate=candidate.description,
        differences=tuple(differences),
        positions=reference.positions,
        checked=checked,
        mismatched=mismatched,
        max_logit_diff=largest,
        tolerance=margin,
    )


def _first_token_difference(tokenizer: Any, expected: Sequence[int], got: Sequence[int]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    trained = tokenizer.convert_ids_to_tokens(list(expected[at : at + 3]))
    exported = tokenizer.convert_ids_to_tokens(list(got[at : at + 3]))
    return f"first difference at token {at}: trained {trained}, exported {exported}"


def check_texts(
    reference: Reference, answers: Sequence[str], *, precision: str = "bfloat16", tolerance: float | None = None
) -> ParityReport:
    """Hold answers given as text (one per reference prompt, greedy, from a server) to ``reference``.

    Free-running answers part ways for good at the first near-tie, so each answer must equal the
    reference's text up to (not including) its first token whose margin is at or below the
    tolerance (``tolerance`` in logits, else :meth:`Reference.tolerance` for the ``precision`` the
    server computes in), or the whole reference answer when it has none. The comparison is on
    text, so the tokenizer and the stop tokens only show through what they produce.
    """
    tolerance = reference.tolerance(precision) if tolerance is None else tolerance
    differences: list[str] = []
    checked = mismatched = 0
    if len(answers) != len(reference.prompts):
        raise ValueError(f"{len(answers)} answers for {len(reference.prompts)} prompts")
    for number, (prompt, answer) in enumerate(zip(reference.prompts, answers, strict=True), start=1):
        firm = next((i for i, lead in enumerate(prompt.margins) if lead <= tolerance), len(prompt.tokens))
        checked += firm
        expected = _prefix_text(reference, prompt, firm)
        if not answer.startswith(expected) or (firm == len(prompt.tokens) and answer != prompt.answer):
            mismatched += 1
            differences.append(f"tokens: answer {number} {_first_difference(expected or prompt.answer, answer)}")
    return ParityReport(
        candidate="the server",
        differences=tuple(differences),
        positions=reference.positions,
        checked=checked,
        mismatched=mismatched,
        max_logit_diff=None,
        tolerance=tolerance,
    )


def _prefix_text(reference: Reference, prompt: PromptReference, count: int) -> str:
    """The answer's first ``count`` tokens as text; a character cut in half at the end is dropped."""
    if count == len(prompt.tokens):
        return prompt.answer
    return reference.tokenizer.decode(list(prompt.tokens[:count]), skip_special_tokens=True).rstrip("\ufffd")
