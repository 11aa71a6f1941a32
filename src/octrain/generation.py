"""Resumable batch generation: answers are committed to disk in chunks, exactly once.

A generation stage can run for hours on a GPU. Its work is split into fixed chunks of
conversations (fixed by position, so a rerun cuts the same chunks); each chunk's answers
are written to ``chunk-NNNNN.jsonl`` atomically once the whole chunk is done. Kill the
process at any moment and rerun: committed chunks are read back, the rest are generated,
and every conversation is answered exactly once. Each chunk samples with its own seed
(``seed + chunk index``), so a resumed run gives the same answers as an uninterrupted one
on a deterministic backend.

The model is loaded only if some chunk is still missing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from octrain.errors import StageError
from octrain.jsonl import read_jsonl, write_jsonl
from octrain.records import Message
from octrain.samplers.base import Completion, Sampler, SamplingParams

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Answer:
    """One conversation's completions, as committed to a chunk file."""

    id: str
    completions: list[Completion]

    def to_json(self) -> dict:
        return {"id": self.id, "completions": [dataclasses.asdict(c) for c in self.completions]}

    @classmethod
    def from_json(cls, obj: dict) -> Answer:
        return cls(id=obj["id"], completions=[Completion(**c) for c in obj["completions"]])


def generate_in_chunks(
    load_sampler: Callable[[], Sampler],
    conversations: Sequence[Sequence[Message]],
    ids: Sequence[str],
    params: SamplingParams,
    chunk_dir: Path,
    *,
    chunk_size: int,
    desc: str,
) -> dict[str, list[Completion]]:
    """Answer every conversation, resuming from the chunks already committed in ``chunk_dir``.

    Args:
        load_sampler: called at most once, and only if a chunk is missing.
        ids: one stable id per conversation; a committed chunk must hold exactly its ids.
        params: sampling settings; each chunk uses ``params.seed + chunk index`` as its seed.

    Returns:
        The completions of each conversation, by id.
    """
    if len(conversations) != len(ids) or len(set(ids)) != len(ids):
        raise ValueError("generate_in_chunks needs one distinct id per conversation")
    chunk_dir.mkdir(parents=True, exist_ok=True)
    chunk_count = math.ceil(len(ids) / chunk_size)
    answers: dict[str, list[Completion]] = {}
    missing: list[int] = []
    for chunk in range(chunk_count):
        path = chunk_dir / f"chunk-{chunk:05d}.jsonl"
        expected = list(ids[chunk * chunk_size : (chunk + 1) * chunk_size])
        if not path.is_file():
            missing.append(chunk)
            continue
        committed = read_jsonl(path, Answer.from_json)
        if [a.id for a in committed] != expected:
            raise StageError(
                f"{path}: holds answers for other prompts than this run asks for; the inputs changed "
                f"without the settings fingerprint noticing. Delete {chunk_dir} to start afresh"
            )
        answers.update((a.id, a.completions) for a in committed)
    if chunk_count and len(missing) < chunk_count:
        logger.info(
            "%s: resuming: %d of %d chunks already committed in %s",
            desc,
            chunk_count - len(missing),
            chunk_count,
            chunk_dir,
        )
    if not missing:
        return answers
    from tqdm.auto import tqdm

    sampler = load_sampler()
    todo = sum(len(ids[c * chunk_size : (c + 1) * chunk_size]) for c in missing)
    bar = tqdm(total=todo, desc=desc, unit="conv")
    generated = 0
    try:
        for chunk in missing:
            start, stop = chunk * chunk_size, (chunk + 1) * chunk_size
            seed = None if params.seed is None else params.seed + chunk
            results = sampler.chat(conversations[start:stop], dataclasses.replace(params, seed=seed), progress=False)
            chunk_answers = [Answer(i, c) for i, c in zip(ids[start:stop], results, strict=True)]
            write_jsonl(chunk_dir / f"chunk-{chunk:05d}.jsonl", (a.to_json() for a in chunk_answers))
            answers.update((a.id, a.completions) for a in chunk_answers)
            generated += sum(c.num_tokens for a in chunk_answers for c in a.completions)
            bar.update(len(chunk_answers))
            bar.set_postfix_str(f"{generated / max(bar.format_dict['elapsed'], 1e-9):.0f} tok/s")
    finally:
        bar.close()
        sampler.close()
    return answers
