"""The eval stage's answers and judgements, committed in chunks so that a rerun resumes.

The eval stage samples thousands of answers from four models and sends thousands of requests
to a judge; a crash or a judge that fails for good used to lose all of it. Each list of work
(the base model's robustness answers, the judge's verdicts against the base model, ...) now
goes through :class:`octrain.samplers.generation.ChunkLedger` and :func:`octrain.samplers.generation.run_chunked`,
one chunk directory per list, one stable id per item (``base-plain-0003``: the base model's
answer to prompt 3 with no break-character suffix): a rerun reads the
committed chunks back and asks only for the rest.

Unlike :func:`octrain.samplers.generation.generate_in_chunks`, which seeds an item by its id, item
``i`` of a list is seeded ``derive_seed(seed, i)``, the seed its position had when the whole
list went to the sampler in one call. Two things rest on that: every model answers the same
conversation with the same seed (the paired comparison), and an uninterrupted run gives the
results it gave before the stage was chunked. A model loads only when one of its chunks is
missing (:class:`LazyModel`), so a rerun whose answers are all committed loads none.

Answers and judgements are streamed (:func:`octrain.samplers.generation.run_streaming`): every missing item
of a list goes to the model at once and each chunk is committed when its last item is in, so vLLM
is not held up by the longest answer of each chunk. A judge reply that does not parse is asked
again the moment it comes back, with the seed :func:`~octrain.evaluation.protocols.judge_replies`
would give it, so a streamed judgement is the one a batched call gives.

The committed work lives in ``OUT/chunks``; :func:`work_dir` empties it first when it was made
for other inputs.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from octrain.core.files import write_text_atomic
from octrain.core.layout import CHUNKS_DIR, INPUTS_FILE
from octrain.core.records import Message
from octrain.core.seeding import derive_seed
from octrain.core.settings_digest import settings_digest
from octrain.samplers.base import Sampler, SamplingParams
from octrain.samplers.generation import ChunkLedger, run_chunked, run_streaming
from octrain.samplers.streams import Request, open_stream

logger = logging.getLogger(__name__)


def work_dir(out: Path, inputs: dict[str, Any]) -> Path:
    """``out/chunks``, emptied first if its committed work was made for other inputs.

    The pipeline clears a stage whose settings changed, but ``octrain eval model`` writes into
    any folder: committed answers of another model, or of other prompts, must not be read back as
    this one's. ``inputs`` is everything the work depends on; its digest is kept beside the chunks.
    """
    work = out / CHUNKS_DIR
    digest = settings_digest(inputs, length=64)
    marker = work / INPUTS_FILE
    if work.is_dir():
        try:
            known = json.loads(marker.read_text(encoding="utf-8")).get("digest")
        except (FileNotFoundError, json.JSONDecodeError, AttributeError):
            known = None
        if known != digest:
            logger.info("eval: %s holds work for other inputs or settings: starting it afresh", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_text_atomic(marker, json.dumps({"digest": digest}) + "\n")
    return work


class LazyModel:
    """A sampler loaded on first use, at most once, and closed by :meth:`close` if it was loaded."""

    def __init__(self, load: Callable[[], Sampler]) -> None:
        self._load = load
        self._sampler: Sampler | None = None

    def get(self) -> Sampler:
        if self._sampler is None:
            self._sampler = self._load()
        return self._sampler

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None

    def __enter__(self) -> LazyModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def positional_seeds(params: SamplingParams, start: int, stop: int) -> list[int] | None:
    """The seeds items ``start..stop`` of a list get when the whole list is sampled in one call."""
    if params.seed is None:
        return None
    return [derive_seed(params.seed, index) for index in range(start, stop)]


def item_ids(prefix: str, count: int) -> list[str]:
    """``prefix-0000``, ``prefix-0001``, ...: one stable id per item of a list."""
    return [f"{prefix}-{index:04d}" for index in range(count)]


def texts_in_chunks(
    chunk_dir: Path,
    ids: Sequence[str],
    produce: Callable[[int, int], list[str]],
    *,
    chunk_size: int,
    desc: str,
) -> list[str]:
    """One text per id: committed chunks read back, the missing ones made by ``produce(start, stop)``."""

    def chunk(_: int, start: int, stop: int) -> list[dict[str, str]]:
        texts = produce(start, stop)
        return [{"id": i, "text": text} for i, text in zip(ids[start:stop], texts, strict=True)]

    rows = run_chunked(ChunkLedger(chunk_dir, ids, chunk_size), chunk, desc=desc, unit="conv")
    return [rows[i]["text"] for i in ids]


def answers_in_chunks(
    model: LazyModel,
    conversations: Sequence[Sequence[Message]],
    ids: Sequence[str],
    params: SamplingParams,
    chunk_dir: Path,
    *,
    chunk_size: int,
    desc: str,
) -> list[str]:
    """The first completion's text for each conversation, seeded by position (see the module doc)."""

    def produce(indexes: list[int]) -> Iterator[tuple[int, dict[str, str]]]:
        stream = open_stream(model.get(), wave=chunk_size)
        try:
            seeds = _positional(params, indexes)
            for index, seed in zip(indexes, seeds, strict=True):
                stream.submit(Request(index, conversations[index], params, seed, order=index // chunk_size))
            for key, completions in stream.answers():
                index = cast(int, key)
                yield index, {"id": ids[index], "text": completions[0].text}
        finally:
            stream.close()

    rows = run_streaming(ChunkLedger(chunk_dir, ids, chunk_size), produce, desc=desc, unit="conv")
    return [rows[i]["text"] for i in ids]


def judgements_in_chunks(
    judge: LazyModel,
    requests: Sequence[Sequence[Message]],
    parsers: Sequence[Callable[[str], str | None]],
    prefix: str,
    params: SamplingParams,
    chunk_dir: Path,
    *,
    chunk_size: int,
    retries: int,
    desc: str,
) -> list[str | None]:
    """The judge's parsed answer to each request (None: unparseable after ``retries`` more asks).

    The judge's reply is committed with its parsed answer, so a committed judgement is never
    asked again, and the raw replies stay on disk to see what an unparseable one said.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    ids = item_ids(prefix, len(requests))

    def produce(indexes: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        stream = open_stream(judge.get(), wave=chunk_size)
        first = dict(zip(indexes, _positional(params, indexes), strict=True))

        def ask(index: int, attempt: int) -> None:
            # protocols.judge_replies' seeds: the position's seed first, then a fresh one per re-ask.
            seed = first[index]
            if attempt and seed is not None:
                seed = derive_seed(seed, "reask", attempt)
            stream.submit(Request((index, attempt), requests[index], params, seed, order=index // chunk_size))

        try:
            for index in indexes:
                ask(index, 0)
            for key, completions in stream.answers():
                index, attempt = cast(tuple[int, int], key)
                reply = completions[0].text
                parsed = parsers[index](reply)
                if parsed is None and attempt < retries:
                    ask(index, attempt + 1)
                else:
                    yield index, {"id": ids[index], "reply": reply, "parsed": parsed}
        finally:
            stream.close()

    rows = run_streaming(ChunkLedger(chunk_dir, ids, chunk_size), produce, desc=desc, unit="request")
    return [rows[i]["parsed"] for i in ids]


def _positional(params: SamplingParams, indexes: Sequence[int]) -> list[int | None]:
    """The seed of each item at ``indexes``: as :func:`positional_seeds` gives it, None when unseeded."""
    if params.seed is None:
        return [None] * len(indexes)
    return [derive_seed(params.seed, index) for index in indexes]
