"""Every sample its own seed: repeats of one prompt differ, a fixed seed reproduces them, resume included.

A backend that seeds every request of a batch alike (vLLM given one ``SamplingParams.seed``)
writes the K repeats of a prompt, or the many samples of one reflection prompt, as one text.
These tests drive the real transformers sampler on the tiny model through the same chunked
generation the stages use, and the pairs and introspect stages through the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from octrain.samplers import SamplingParams
from octrain.samplers.generation import duplicate_count, generate_in_chunks
from octrain.samplers.hf import HFSampler

PROMPT = [{"role": "user", "content": "Tell me about the sea."}]
REFLECTION = [
    {"role": "system", "content": "The assistant is Tiny, in a reflective mood."},
    {"role": "user", "content": "Write a letter to your earlier self."},
]


@pytest.fixture
def load_sampler(tiny_model_path: str) -> Callable[[], HFSampler]:
    """A fresh sampler each call: chunked generation closes the sampler it loaded."""
    return lambda: HFSampler(tiny_model_path, batch_size=4, show_progress=False)


def texts(answers: dict[str, list]) -> list[str]:
    return [completions[0].text for completions in answers.values()]


@pytest.mark.parametrize(("conversation", "count"), [(PROMPT, 5), (REFLECTION, 12)])
def test_repeats_of_one_conversation_are_distinct_and_reproducible(
    load_sampler: Callable[[], HFSampler], tmp_path: Path, conversation: list, count: int
) -> None:
    ids = [f"item-{i:03d}" for i in range(count)]
    params = SamplingParams(max_new_tokens=16, seed=5)

    def generate(directory: str) -> dict[str, list]:
        return generate_in_chunks(
            load_sampler, [conversation] * count, ids, params, tmp_path / directory, chunk_size=4, desc="test"
        )

    first = generate("a")
    assert duplicate_count(texts(first)) == 0  # count samples of one conversation, count texts
    assert texts(generate("b")) == texts(first)  # the same seed reproduces every sample
    other = generate_in_chunks(
        load_sampler,
        [conversation] * count,
        ids,
        SamplingParams(max_new_tokens=16, seed=6),
        tmp_path / "c",
        chunk_size=4,
        desc="test",
    )
    assert texts(other) != texts(first)


def test_a_resumed_run_redraws_what_an_uninterrupted_one_drew(
    load_sampler: Callable[[], HFSampler], tmp_path: Path
) -> None:
    ids = [f"item-{i:03d}" for i in range(6)]
    params = SamplingParams(max_new_tokens=16, seed=1)
    whole = generate_in_chunks(load_sampler, [PROMPT] * 6, ids, params, tmp_path / "x", chunk_size=2, desc="t")
    (tmp_path / "x" / "chunk-00001.jsonl").unlink()  # as if the run died before committing chunk 1
    resumed = generate_in_chunks(load_sampler, [PROMPT] * 6, ids, params, tmp_path / "x", chunk_size=2, desc="t")
    assert texts(resumed) == texts(whole)
    # Another chunking of the same ids draws the same samples too: a sample's seed is its id's.
    rechunked = generate_in_chunks(load_sampler, [PROMPT] * 6, ids, params, tmp_path / "y", chunk_size=4, desc="t")
    assert texts(rechunked) == texts(whole)


def test_a_sample_does_not_depend_on_its_batch(load_sampler: Callable[[], HFSampler]) -> None:
    sampler = load_sampler()
    params = SamplingParams(max_new_tokens=16)
    alone = sampler.chat([PROMPT], params, seeds=[42])[0][0].text
    crowd = [[{"role": "user", "content": f"Question number {i} about ships?"}] for i in range(5)]
    together = sampler.chat([*crowd, PROMPT], params, seeds=[1, 2, 3, 4, 5, 42])
    assert together[-1][0].text == alone


# Slow lane (a whole tiny run to introspect, every prompt three times, ~1.5 min); CI runs it after the default suite.
@pytest.mark.slow
def test_pairs_and_introspect_reports_count_duplicates(tmp_path: Path) -> None:
    from octrain.core.compose import compose_config
    from octrain.run.pipeline import run

    config = compose_config(
        "pirate_tiny",
        ["scale.samples_per_prompt=3", "stages=[prompts,pairs,dpo,introspect]", "scale.reflections=20"],
    )
    run(config, tmp_path / "run")
    pairs = json.loads((tmp_path / "run" / "pairs" / "report.json").read_text())
    introspection = json.loads((tmp_path / "run" / "introspect" / "report.json").read_text())
    assert pairs["prompts"] >= 3 * 16  # every prompt three times over
    assert pairs["duplicate_answers"] == {"teacher": 0, "student": 0}
    assert introspection["reflections"]["sampled"] == 20  # two samples of each of ten prompts
    assert introspection["reflections"]["duplicates"] == 0
    assert introspection["interactions"]["duplicates"] == 0
