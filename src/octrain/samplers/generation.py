"""Resumable batch generation: work is committed to disk in chunks, exactly once.

A generation stage can run for hours on a GPU. Its work is split into fixed chunks (fixed
by position, so a rerun cuts the same chunks); each chunk's results are written to
``chunk-NNNNN.jsonl`` atomically once the whole chunk is done. Kill the process at any
moment and rerun: committed chunks are read back, the rest are produced, and every item is
done exactly once. Each item is sampled with its own seed, derived from the run seed and the
item's stable id (:func:`octrain.core.seeding.derive_seed`): repeats of one prompt draw different
answers, and a resumed run gives the same answers as an uninterrupted one on a deterministic
backend. The model is loaded only if some chunk is still missing.

The chunk is the unit of commit, not of sampling. :func:`run_streaming` hands the sampler every
missing item at once, as a :class:`~octrain.samplers.streams.ChatStream`, and commits each chunk
the moment its last item comes back, in whatever order items finish: vLLM keeps its batch full
across chunk boundaries instead of waiting on the longest answer of each chunk. A kill loses only
the items of chunks not yet whole; a backend that can only answer batches is given one chunk per
call, as before (:class:`~octrain.samplers.streams.WaveStream`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from octrain.core.errors import StageError
from octrain.core.files import iter_jsonl, write_jsonl
from octrain.core.records import Message
from octrain.core.seeding import derive_seed
from octrain.samplers.base import Completion, Sampler, SamplingParams
from octrain.samplers.streams import Request, open_stream

logger = logging.getLogger(__name__)


def item_seeds(params: SamplingParams, ids: Sequence[str]) -> list[int] | None:
    """The seed each item draws with: the run seed and the item's stable id (None: no seed set).

    The one rule every generation stage samples by, so that anything previewing a stage's work
    (the studio's data preview) draws what the stage would.
    """
    if params.seed is None:
        return None
    return [derive_seed(params.seed, item) for item in ids]


class ChunkLedger:
    """Which chunks of a list of items are committed in ``chunk_dir``, and committing more."""

    def __init__(self, chunk_dir: Path, ids: Sequence[str], chunk_size: int) -> None:
        if len(set(ids)) != len(ids):
            raise ValueError("chunked work needs distinct ids")
        self.chunk_dir, self.ids, self.chunk_size = chunk_dir, list(ids), chunk_size
        self.count = math.ceil(len(self.ids) / chunk_size)
        chunk_dir.mkdir(parents=True, exist_ok=True)

    def path(self, chunk: int) -> Path:
        return self.chunk_dir / f"chunk-{chunk:05d}.jsonl"

    def bounds(self, chunk: int) -> tuple[int, int]:
        return chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, len(self.ids))

    def load(self) -> tuple[dict[str, dict[str, Any]], list[int]]:
        """Rows of the committed chunks by id, and the indexes of the chunks still missing."""
        rows: dict[str, dict[str, Any]] = {}
        missing = []
        for chunk in range(self.count):
            path = self.path(chunk)
            if not path.is_file():
                missing.append(chunk)
                continue
            committed = [row for _, row in iter_jsonl(path)]
            start, stop = self.bounds(chunk)
            if [row.get("id") for row in committed] != self.ids[start:stop]:
                raise StageError(
                    f"{path}: holds results for other items than this run asks for; the inputs changed "
                    f"without the settings fingerprint noticing. Delete {self.chunk_dir} to start afresh"
                )
            rows.update((row["id"], row) for row in committed)
        return rows, missing

    def commit(self, chunk: int, rows: list[dict[str, Any]]) -> None:
        start, stop = self.bounds(chunk)
        if [row["id"] for row in rows] != self.ids[start:stop]:
            raise ValueError(f"chunk {chunk}: rows do not match the chunk's ids")
        write_jsonl(self.path(chunk), rows)


def run_streaming(
    ledger: ChunkLedger,
    produce: Callable[[list[int]], Iterator[tuple[int, dict[str, Any]]]],
    *,
    desc: str,
    unit: str,
    setup: Callable[[], Any] | None = None,
    teardown: Callable[[Any], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Produce every item of the missing chunks, commit each chunk once it is whole; return all rows.

    ``produce(indexes)`` gets the positions of every item still to do (whole chunks, in order) and
    yields ``(index, row)`` for each as it finishes, in any order. A chunk is committed as soon as
    its last row arrives, so a kill at any moment leaves only whole chunks on disk. ``setup`` (for
    example loading a model) runs once, only if a chunk is missing; its result is passed to
    ``teardown`` at the end. A progress bar counts items with rate and ETA.

    Raises:
        StageError: ``produce`` stopped before every item was done.
        ValueError: ``produce`` yielded an item twice, or one it was not asked for.
    """
    from tqdm.auto import tqdm

    rows, missing = ledger.load()
    if ledger.count and len(missing) < ledger.count:
        logger.info(
            "%s: resuming: %d of %d chunks already committed in %s",
            desc,
            ledger.count - len(missing),
            ledger.count,
            ledger.chunk_dir,
        )
    if not missing:
        return rows
    chunk_of = {index: chunk for chunk in missing for index in range(*ledger.bounds(chunk))}
    waiting: dict[int, dict[int, dict[str, Any]]] = {chunk: {} for chunk in missing}  # chunk -> rows so far
    resource = setup() if setup else None
    bar = tqdm(total=len(chunk_of), desc=desc, unit=unit)
    items = produce(list(chunk_of))
    try:
        for index, row in items:
            chunk = chunk_of.get(index)
            if chunk is None or chunk not in waiting or index in waiting[chunk]:
                raise ValueError(f"{desc}: item {index} was produced twice, or was not asked for")
            waiting[chunk][index] = row
            bar.update(1)
            start, stop = ledger.bounds(chunk)
            if len(waiting[chunk]) == stop - start:
                done = waiting.pop(chunk)
                produced = [done[i] for i in range(start, stop)]
                ledger.commit(chunk, produced)
                rows.update((row["id"], row) for row in produced)
        if waiting:
            left = sum(stop - start for start, stop in map(ledger.bounds, waiting)) - sum(map(len, waiting.values()))
            raise StageError(f"{desc}: the sampler stopped with {left} item(s) unanswered; run again to resume")
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # a generator's cleanup (its stream drops the requests still running) runs now, not at gc
        bar.close()
        if teardown is not None and resource is not None:
            teardown(resource)
    return rows


def run_chunked(
    ledger: ChunkLedger,
    produce: Callable[[int, int, int], list[dict[str, Any]]],
    *,
    desc: str,
    unit: str,
    setup: Callable[[], Any] | None = None,
    teardown: Callable[[Any], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Produce every missing chunk with ``produce(chunk, start, stop)`` and commit it; return all rows.

    For work that is made a whole chunk at a time; :func:`run_streaming` with its guarantees.
    """

    def by_chunk(indexes: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        for chunk in sorted({index // ledger.chunk_size for index in indexes}):
            start, stop = ledger.bounds(chunk)
            yield from enumerate(produce(chunk, start, stop), start)

    return run_streaming(ledger, by_chunk, desc=desc, unit=unit, setup=setup, teardown=teardown)


def duplicate_count(texts: Sequence[str]) -> int:
    """How many of ``texts`` repeat an earlier one exactly: 0 when every sample is distinct.

    Reported by the generation stages, because a backend that reuses one random stream for
    several requests writes the same answer again and again, and nothing else would show it.
    """
    return len(texts) - len(set(texts))


def completions_to_json(completions: list[Completion]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(c) for c in completions]


def completions_from_json(rows: list[dict[str, Any]]) -> list[Completion]:
    return [Completion(**row) for row in rows]


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
    """Answer every conversation once, resuming from the chunks committed in ``chunk_dir``.

    Args:
        load_sampler: called at most once, and only if a chunk is missing.
        ids: one stable id per conversation; a committed chunk must hold exactly its ids.
        params: sampling settings; item ``id`` is sampled with ``derive_seed(params.seed, id)``
            (unseeded when ``params.seed`` is None).
    """
    if len(conversations) != len(ids):
        raise ValueError("generate_in_chunks needs one id per conversation")
    holder: dict[str, Sampler] = {}

    def setup() -> Sampler:
        holder["sampler"] = load_sampler()
        return holder["sampler"]

    def produce(indexes: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        # The whole remaining work at once: a streaming backend (vLLM) starts every request as it has
        # room; a batch-only one is given a chunk per call (each request's order is its chunk).
        stream = open_stream(holder["sampler"], wave=chunk_size)
        try:
            seeds: Sequence[int | None] = item_seeds(params, [ids[i] for i in indexes]) or [None] * len(indexes)
            for index, seed in zip(indexes, seeds, strict=True):
                stream.submit(Request(index, conversations[index], params, seed, order=index // chunk_size))
            for key, completions in stream.answers():
                index = cast(int, key)  # the key each request was submitted with
                yield index, {"id": ids[index], "completions": completions_to_json(completions)}
        finally:
            stream.close()

    rows = run_streaming(
        ChunkLedger(chunk_dir, ids, chunk_size),
        produce,
        desc=desc,
        unit="conv",
        setup=setup,
        teardown=lambda sampler: sampler.close(),
    )
    return {i: completions_from_json(rows[i]["completions"]) for i in ids}


class CommittedCalls:
    """A :class:`Sampler` that commits the result of each ``chat`` call, for work made of a few big calls.

    Stages whose later calls depend on earlier answers (the prompts stage asks again only for the
    traits still short after each round) cannot be cut into fixed chunks up front. Instead call
    ``k`` of a run is committed to ``directory/call-KK.jsonl`` together with a digest of its
    requests; a rerun that makes the same call ``k`` gets the committed answers back without a
    model, and since the answers decide the next requests, the rerun retraces the first run exactly
    and loads the model (``load``, at most once) only for the first call that is not committed.
    A committed call whose requests differ (the inputs changed) is made afresh and replaced.
    """

    def __init__(self, load: Callable[[], Sampler], directory: Path, name: str = "committed") -> None:
        self.load, self.directory, self.name = load, directory, name
        self.sampler: Sampler | None = None
        self.calls = 0
        self.replayed = 0
        directory.mkdir(parents=True, exist_ok=True)

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> list[list[Completion]]:
        import hashlib
        import json

        path = self.directory / f"call-{self.calls:02d}.jsonl"
        self.calls += 1
        request = {
            "conversations": [list(c) for c in conversations],
            "params": dataclasses.asdict(params),
            "seeds": None if seeds is None else list(seeds),
        }
        key = hashlib.sha256(json.dumps(request, sort_keys=True).encode("utf-8")).hexdigest()
        if path.is_file():
            rows = [row for _, row in iter_jsonl(path)]
            if rows and rows[0].get("request") == key and len(rows) == len(conversations) + 1:
                self.replayed += 1
                return [completions_from_json(row["completions"]) for row in rows[1:]]
            logger.info("%s: %s was made for other requests: making it afresh", self.name, path)
        if self.sampler is None:
            self.sampler = self.load()
        results = self.sampler.chat(conversations, params, seeds=seeds, desc=desc, progress=progress)
        write_jsonl(path, [{"request": key}, *({"completions": completions_to_json(c)} for c in results)])
        return results

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None
