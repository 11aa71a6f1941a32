"""Self-interaction for stage ``introspect``: two copies of the trained model talking to each other.

Each copy sees the conversation from its own side (its turns as assistant, the other's as user,
:func:`view`). Half the conversations open with plain greetings under the *free* guidance line,
half with greetings that admit to talking to oneself under the *leading* one
(:func:`interaction_plan`). Every conversation asks for its next turn the moment its last one comes
back (:func:`converse_in_stream`), so on vLLM conversations at different turns share the engine's
batch; a conversation ends at its first unusable turn. :func:`interaction_records` turns each
transcript into two training conversations, one from each copy's side, under a trait-free prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

from octrain.constitution.persona_prompts import PLAIN_GREETINGS, SELF_AWARE_GREETINGS, plain_system_prompt
from octrain.core.records import Conversation, Message
from octrain.core.seeding import derive_seed
from octrain.samplers.base import Completion, Sampler, SamplingParams
from octrain.samplers.streams import ChatStream, Request, open_stream


@dataclasses.dataclass(frozen=True)
class InteractionSpec:
    id: str
    leading: bool
    greeting: str


def interaction_plan(count: int) -> list[InteractionSpec]:
    """Half free (plain greetings), half leading (self-aware greetings), interleaved."""
    plan = []
    for index in range(count):
        leading = index % 2 == 1
        greetings = SELF_AWARE_GREETINGS if leading else PLAIN_GREETINGS
        kind = "leading" if leading else "free"
        plan.append(InteractionSpec(f"chat-{index:05d}-{kind}", leading, greetings[(index // 2) % len(greetings)]))
    return plan


def view(system: str, utterances: Sequence[str], speaker: int) -> list[Message]:
    """The conversation as copy ``speaker`` sees it: its own turns as assistant, the other's as user.

    Utterance 0 (the greeting) belongs to copy 1, utterance 1 to copy 0, and so on alternately;
    a conversation that would open with the speaker's own greeting drops it, so every view
    starts with a user turn.
    """
    messages: list[Message] = [{"role": "system", "content": system}]
    for index, text in enumerate(utterances):
        author = 1 if index % 2 == 0 else 0
        role = "assistant" if author == speaker else "user"
        if len(messages) == 1 and role == "assistant":
            continue
        messages.append({"role": role, "content": text})
    return messages


def converse(
    sampler: Sampler,
    specs: Sequence[InteractionSpec],
    system_for: Callable[[InteractionSpec], str],
    turns: int,
    params: SamplingParams,
    problem_of: Callable[[Completion], str | None],
    tidy: Callable[[Completion], Completion] = lambda completion: completion,
) -> list[dict[str, Any]]:
    """Hold every conversation of ``specs`` to its end (:func:`converse_in_stream` on ``sampler``).

    A batch-only sampler answers one turn of all the conversations still going per call.

    Returns one row per conversation, in the order of ``specs``: its generated turns (the greeting
    excluded), and the reason it stopped early, if it did.
    """
    stream = open_stream(sampler)
    try:
        rows = dict(converse_in_stream(stream, dict(enumerate(specs)), system_for, turns, params, problem_of, tidy))
    finally:
        stream.close()
    return [rows[position] for position in range(len(specs))]


def converse_in_stream(
    stream: ChatStream,
    specs: Mapping[int, InteractionSpec],
    system_for: Callable[[InteractionSpec], str],
    turns: int,
    params: SamplingParams,
    problem_of: Callable[[Completion], str | None],
    tidy: Callable[[Completion], Completion] = lambda completion: completion,
    order: Callable[[int], int] = lambda position: 0,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Run the conversations ``specs`` (by position) on ``stream``; yield ``(position, row)`` as each ends.

    A conversation asks for its next turn the moment its last one comes back, so conversations at
    different turns share the backend's batch. ``tidy`` turns each raw turn into the one judged and
    kept (:func:`trim_completion`, or as it is). ``order`` is the wave of a batch-only backend that
    a conversation's turns belong to (its chunk).
    """
    one = dataclasses.replace(params, n=1)
    utterances = {position: [spec.greeting] for position, spec in specs.items()}
    stopped: dict[int, str | None] = dict.fromkeys(specs)
    tokens = dict.fromkeys(specs, 0)

    def row(position: int) -> dict[str, Any]:
        spec = specs[position]
        return {
            "id": spec.id,
            "leading": spec.leading,
            "greeting": spec.greeting,
            "turns": utterances[position][1:],
            "stopped": stopped[position],
            "tokens": tokens[position],
        }

    def ask(position: int, turn: int) -> None:
        spec = specs[position]
        speaker = 0 if turn % 2 == 1 else 1
        # Each turn of each conversation its own seed: the conversations open with a handful of
        # greetings, and one shared seed would make those with the same greeting say the same.
        seed = None if params.seed is None else derive_seed(params.seed, spec.id, turn)
        conversation = view(system_for(spec), utterances[position], speaker)
        stream.submit(Request((position, turn), conversation, one, seed, order(position)))

    for position in specs:
        if turns >= 1:
            ask(position, 1)
        else:
            yield position, row(position)
    for key, [raw] in stream.answers():
        position, turn = cast(tuple[int, int], key)
        tokens[position] += raw.num_tokens
        completion = tidy(raw)
        problem = problem_of(completion)
        if problem:
            stopped[position] = problem
        else:
            utterances[position].append(completion.text)
        if problem or turn == turns:
            yield position, row(position)
        else:
            ask(position, turn + 1)


def interaction_records(rows: list[dict[str, Any]], name: str) -> list[Conversation]:
    """Training transcripts: each conversation from both copies' sides, ending on an assistant turn."""
    system = plain_system_prompt(name)
    records = []
    for row in rows:
        utterances = [row["greeting"], *row["turns"]]
        for speaker, side in ((0, "a"), (1, "b")):
            messages = view(system, utterances, speaker)
            while messages and messages[-1]["role"] != "assistant":
                messages.pop()
            if len(messages) < 3:  # system + user + at least one assistant turn
                continue
            records.append(
                Conversation(
                    id=f"{row['id']}-{side}",
                    messages=messages,
                    kind="interaction",
                    meta={"guidance": "leading" if row["leading"] else "free", "side": side},
                )
            )
    return records
