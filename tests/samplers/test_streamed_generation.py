"""Streamed generation: the sampler gets a stage's whole remaining work, chunks are committed as they fill.

The streaming engine here is :class:`out_of_order.OutOfOrderSampler` (vLLM's engine needs a GPU):
its answers are the fake sampler's, handed back shuffled, as vLLM finishes short answers first.
Whatever the order, every chunk is committed once, whole, as soon as its last item is in; a crash
leaves whole chunks only; the rerun asks for the items of the missing chunks and nothing else; and
the results are those of a batched, uninterrupted run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO
from octrain.core.seeding import derive_seed
from octrain.evaluation import protocols
from octrain.evaluation.chunked import LazyModel, answers_in_chunks, judgements_in_chunks
from octrain.evaluation.judge_parsing import parse_verdict
from octrain.samplers import FakeSampler, SamplingParams
from octrain.samplers.generation import ChunkLedger, generate_in_chunks, item_seeds
from octrain.samplers.streams import Request, WaveStream
from octrain.stages.self_interaction import converse, interaction_plan
from out_of_order import EngineDied, OutOfOrderSampler

COUNT, CHUNK = 23, 5  # five chunks, the last one short
IDS = [f"item-{i:02d}" for i in range(COUNT)]
CONVERSATIONS = [[{"role": "user", "content": f"Question {i % 7}?"}] for i in range(COUNT)]  # repeats, as K samples
PARAMS = SamplingParams(seed=3, max_new_tokens=64)


def generate(sampler: FakeSampler, directory: Path) -> dict:
    return generate_in_chunks(lambda: sampler, CONVERSATIONS, IDS, PARAMS, directory, chunk_size=CHUNK, desc="test")


def chunk_of(key: object) -> str:
    return f"chunk-{int(key) // CHUNK:05d}.jsonl"  # type: ignore[call-overload]


def whole_after(answered: list[object], count: int) -> set[str]:
    """The chunks all of whose items are among the first ``count`` answers."""
    done = set(answered[:count])
    return {chunk_of(start) for start in range(0, COUNT, CHUNK) if set(range(start, min(start + CHUNK, COUNT))) <= done}


def test_answers_finishing_out_of_order_commit_every_chunk_once_as_it_fills(tmp_path: Path) -> None:
    streamed_dir = tmp_path / "streamed"
    engine = OutOfOrderSampler(running=8, shuffle_seed=1, watch=streamed_dir)
    streamed = generate(engine, streamed_dir)
    batched = generate(FakeSampler(), tmp_path / "batched")

    assert streamed == batched  # the same answers, whatever order they finished in
    assert engine.calls == []  # no batch call: every request went through the stream
    assert engine.submitted_before_first_answer == COUNT  # the engine had the whole stage before answering
    assert engine.answered != sorted(engine.answered)  # they really came back out of order
    # Each chunk is committed the moment its last item comes back, not after the chunks before it.
    for count, present in enumerate(engine.committed_before):
        assert present == whole_after(engine.answered, count)
    assert [p.name for p in sorted(streamed_dir.iterdir())] == [f"chunk-{c:05d}.jsonl" for c in range(5)]
    assert ChunkLedger(streamed_dir, IDS, CHUNK).load()[1] == []  # every chunk whole, holding its own ids in order


def test_a_crash_mid_stream_keeps_whole_chunks_and_the_rerun_asks_only_for_the_missing_ones(tmp_path: Path) -> None:
    work = tmp_path / "work"
    dying = OutOfOrderSampler(running=8, shuffle_seed=1, die_after=12)
    with pytest.raises(EngineDied):
        generate(dying, work)
    committed = {p.name: p.read_bytes() for p in work.glob("chunk-*.jsonl")}
    assert set(committed) == whole_after(dying.answered, 12) and 1 <= len(committed) < 5

    resumed_engine = OutOfOrderSampler(shuffle_seed=2)
    resumed = generate(resumed_engine, work)
    missing = {i for i in range(COUNT) if chunk_of(i) not in committed}
    assert sorted(r.key for r in resumed_engine.submitted) == sorted(missing)  # nothing committed is asked again
    assert {p.name: p.read_bytes() for p in work.glob("chunk-*.jsonl") if p.name in committed} == committed
    assert resumed == generate(FakeSampler(), tmp_path / "uninterrupted")


KILLED = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {here!r}]  # tests/ for the helpers, this test's folder for its constants
from out_of_order import OutOfOrderSampler
from octrain.samplers.generation import generate_in_chunks
from test_streamed_generation import CHUNK, CONVERSATIONS, IDS, PARAMS

engine = OutOfOrderSampler(running=8, shuffle_seed=1, pause=0.05)
generate_in_chunks(lambda: engine, CONVERSATIONS, IDS, PARAMS, Path({work!r}), chunk_size=CHUNK, desc="killed")
"""


def test_a_process_killed_mid_stream_resumes_exactly_once(tmp_path: Path) -> None:
    work = tmp_path / "work"
    script = KILLED.format(tests=str(REPO / "tests"), here=str(Path(__file__).parent), work=str(work))
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while len(list(work.glob("chunk-*.jsonl"))) < 2:  # SIGKILL once two chunks are whole, mid-stream
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk was committed"
            time.sleep(0.01)
        process.kill()
    finally:
        process.wait()
    committed = {p.name: p.read_bytes() for p in work.glob("chunk-*.jsonl")}
    assert 2 <= len(committed) < 5
    rows, missing = ChunkLedger(work, IDS, CHUNK).load()  # whole chunks only: each parses and holds its ids
    assert {chunk_of(IDS.index(i)) for i in rows} == set(committed) and len(missing) == 5 - len(committed)

    engine = OutOfOrderSampler(shuffle_seed=3)
    resumed = generate(engine, work)
    assert sorted(r.key for r in engine.submitted) == [i for i in range(COUNT) if chunk_of(i) not in committed]
    assert resumed == generate(FakeSampler(), tmp_path / "uninterrupted")


def test_a_batch_only_sampler_is_asked_one_chunk_per_call_as_before(tmp_path: Path) -> None:
    sampler = FakeSampler()
    generate(sampler, tmp_path / "chunks")
    assert [len(batch) for batch, _, _ in sampler.calls] == [5, 5, 5, 5, 3]
    assert [seed for _, _, seeds in sampler.calls for seed in seeds] == item_seeds(PARAMS, IDS)


def test_a_wave_keeps_to_one_order_and_cap(tmp_path: Path) -> None:
    sampler = FakeSampler()
    stream = WaveStream(sampler, wave=2)
    for key, order in [("a", 1), ("b", 0), ("c", 1), ("d", 0), ("e", 0)]:
        stream.submit(Request(key, [{"role": "user", "content": key}], PARAMS, seed=7, order=order))
    keys = [key for key, _ in stream.answers()]
    assert keys == ["b", "d", "e", "a", "c"]  # lowest order first, submission order within it
    assert [[c[0]["content"] for c in batch] for batch, _, _ in sampler.calls] == [["b", "d"], ["e"], ["a", "c"]]


def test_conversations_streamed_out_of_order_are_the_batched_ones() -> None:
    specs = interaction_plan(6)
    system = lambda spec: f"SYSTEM-{spec.leading}"  # noqa: E731

    def run(sampler: FakeSampler) -> list[dict]:
        return converse(sampler, specs, system, 4, PARAMS, lambda completion: None)

    engine = OutOfOrderSampler(running=4, shuffle_seed=5)  # room for four at once: six conversations queue
    streamed, batched = run(engine), run(FakeSampler())
    assert streamed == batched and all(len(row["turns"]) == 4 for row in streamed)
    # A conversation asks for its next turn as soon as its last one is back, before the others catch up.
    turns = [key[1] for key in engine.answered]
    assert turns.index(2) < len(turns) - 1 - turns[::-1].index(1)


def test_streamed_answers_and_judgements_are_the_batched_ones(tmp_path: Path) -> None:
    answers = answers_in_chunks(
        LazyModel(lambda: OutOfOrderSampler(shuffle_seed=6)),
        CONVERSATIONS,
        IDS,
        PARAMS,
        tmp_path / "answers",
        chunk_size=CHUNK,
        desc="answers",
    )
    batched = answers_in_chunks(
        LazyModel(FakeSampler), CONVERSATIONS, IDS, PARAMS, tmp_path / "batched", chunk_size=CHUNK, desc="answers"
    )
    assert answers == batched

    def stubborn(conversation, sample: int) -> str:
        """A verdict for the even questions (those ending in ?), never a tag for the odd ones."""
        return "<verdict>A</verdict>" if conversation[-1]["content"].endswith("?") else "no tag"

    requests = [[{"role": "user", "content": f"q{i}" + ("?" if i % 2 == 0 else "")}] for i in range(11)]
    judge = OutOfOrderSampler(stubborn, shuffle_seed=7)
    verdicts = judgements_in_chunks(
        LazyModel(lambda: judge),
        requests,
        [parse_verdict] * len(requests),
        "judged",
        PARAMS,
        tmp_path / "judged",
        chunk_size=4,
        retries=2,
        desc="judging",
    )
    reference = protocols.judge_replies(FakeSampler(stubborn), requests, PARAMS, [parse_verdict] * 11, retries=2)
    assert verdicts == [parsed for _, parsed in reference]
    asks = [request.key for request in judge.submitted]
    # Five never parse (the odd ones, and q3 among them): each is asked twice more, no more.
    assert len(asks) == 11 + 2 * 5 and [verdict is None for verdict in verdicts] == [i % 2 == 1 for i in range(11)]
    first = {key[0]: r.seed for r, key in zip(judge.submitted, asks, strict=True) if key[1] == 0}
    again = [(key, r.seed) for r, key in zip(judge.submitted, asks, strict=True) if key[1] > 0]
    assert all(seed == derive_seed(first[index], "reask", attempt) for (index, attempt), seed in again)
    chunks = sorted((tmp_path / "judged").glob("chunk-*.jsonl"))
    rows = [json.loads(line) for path in chunks for line in path.read_text().splitlines()]
    assert [row["id"] for row in rows] == [f"judged-{i:04d}" for i in range(11)]
