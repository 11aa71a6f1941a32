"""Data-parallel sampling (octrain.samplers.sharded): two engine processes answer as one engine would.

The shards here are CPU processes running the transformers sampler on the tiny model; the GPU
side (device groups, the check for too few GPUs) is tested on given device lists. The vLLM lane
runs two vLLM CPU engines: ``.venv-vllm/bin/python -m pytest -m vllm tests/test_sharded_sampler.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, patience
from octrain.core.config import HFSamplerOptions, ModelConfig, SamplerBackend, SamplerConfig, VLLMSamplerOptions
from octrain.core.errors import ConfigError
from octrain.samplers import SamplingParams, build_sampler, release_engines
from octrain.samplers.engine_pool import ENGINES
from octrain.samplers.generation import generate_in_chunks
from octrain.samplers.hf import HFSampler
from octrain.samplers.shard_devices import device_groups, plan_devices, split_evenly
from octrain.samplers.sharded import ShardedEngine, ShardedSampler, ShardError

CONVERSATIONS = [
    [{"role": "user", "content": "Tell me about the sea."}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "A much longer question about ships, storms, sails and stars at night?"}],
    [{"role": "user", "content": "Go on:"}, {"role": "assistant", "content": "Once upon a"}],
    [{"role": "user", "content": "Tell me about the sea."}],  # a repeat: its own seed, its own answer
]
SAMPLED = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=11)
GREEDY = SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=8)


def cpu_config(shards: int) -> SamplerConfig:
    return SamplerConfig(
        backend=SamplerBackend.hf, data_parallel_size=shards, hf=HFSamplerOptions(device="cpu", batch_size=4)
    )


@pytest.fixture(scope="module")
def single(tiny_model_path: str) -> HFSampler:
    return HFSampler(tiny_model_path, device="cpu", batch_size=4, show_progress=False)


@pytest.fixture(scope="module")
def sharded(tiny_model_path: str) -> Iterator[ShardedSampler]:
    engine = ShardedEngine(cpu_config(2), ModelConfig(path=tiny_model_path), devices=[None, None])
    sampler = ShardedSampler(engine, show_progress=False, owns_engine=True)
    yield sampler
    sampler.close()


# --- devices, on given device lists ----------------------------------------------------------------


def test_device_groups_are_consecutive_tensor_parallel_groups() -> None:
    assert device_groups(["0", "1", "2", "3"], tensor_parallel=2, shards=2) == [["0", "1"], ["2", "3"]]
    assert device_groups(["0", "1", "2", "3"], tensor_parallel=1, shards=3) == [["0"], ["1"], ["2"]]
    assert device_groups(["GPU-a", "GPU-b"], tensor_parallel=1, shards=2) == [["GPU-a"], ["GPU-b"]]
    with pytest.raises(ConfigError) as error:
        device_groups(["0", "1", "2", "3"], tensor_parallel=2, shards=4)
    message = str(error.value)
    assert "sampler.data_parallel_size=4" in message and "sampler.vllm.tensor_parallel_size=2" in message
    assert "need 8 GPUs" in message and "sees 4 (0,1,2,3)" in message


def test_plan_devices_reads_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = SamplerConfig(
        backend=SamplerBackend.vllm, data_parallel_size=4, vllm=VLLMSamplerOptions(tensor_parallel_size=2)
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    assert plan_devices(vllm) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    with pytest.raises(ConfigError, match=r"sees 4 \(4,5,6,7\)"):
        plan_devices(vllm)
    # No GPU at all (or device=cpu): CPU shards, as many as asked for.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert plan_devices(vllm) == [None] * 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert plan_devices(cpu_config(3)) == [None] * 3


def test_too_many_shards_fail_before_any_engine_starts(tiny_model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    release_engines()
    starts = len(ENGINES.starts)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    config = SamplerConfig(backend=SamplerBackend.hf, data_parallel_size=2)  # device=auto: one GPU each
    with pytest.raises(ConfigError, match=r"sampler\.data_parallel_size=2"):
        build_sampler(config, ModelConfig(path=tiny_model_path))
    assert len(ENGINES.starts) == starts


def test_split_evenly_is_contiguous_and_balanced() -> None:
    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(1, 3) == [(0, 1), (1, 1), (1, 1)]
    assert split_evenly(7, 3) == [(0, 3), (3, 5), (5, 7)]


# --- two CPU shards against one engine ---------------------------------------------------------------


def test_two_shards_answer_exactly_as_one_engine(single: HFSampler, sharded: ShardedSampler) -> None:
    # Seeds derived from params.seed by position: the shards must use the whole call's positions.
    expected = single.chat(CONVERSATIONS, SAMPLED)
    got = sharded.chat(CONVERSATIONS, SAMPLED)
    assert got == expected
    assert [len(row) for row in got] == [2] * 5  # 5 conversations on 2 shards (3 + 2), n=2, in order
    assert got[0] != got[4]  # the repeated prompt drew other answers
    # Explicit per-request seeds (what the stages pass) and greedy decoding.
    seeds = [101, 7, 55, 3, 101]
    assert sharded.chat(CONVERSATIONS, SAMPLED, seeds=seeds) == single.chat(CONVERSATIONS, SAMPLED, seeds=seeds)
    assert sharded.chat(CONVERSATIONS, GREEDY) == single.chat(CONVERSATIONS, GREEDY)
    # Fewer conversations than shards, and none at all.
    assert sharded.chat(CONVERSATIONS[:1], SAMPLED) == single.chat(CONVERSATIONS[:1], SAMPLED)
    assert sharded.chat([], SAMPLED) == []


def test_an_error_in_a_shard_comes_back_as_one_line(sharded: ShardedSampler) -> None:
    bad = SamplingParams(n=1, temperature=1.0, min_p=2.0, max_new_tokens=4, seed=0)  # transformers refuses min_p > 1
    with pytest.raises(ShardError) as error:
        sharded.chat(CONVERSATIONS, bad)
    message = str(error.value)
    assert message.startswith(f"{sharded.name}: shard ") and "ValueError" in message and "min_p" in message
    assert "\n" not in message
    assert sharded.engine.usable  # the shards are alive and in step: the next call works
    assert len(sharded.chat(CONVERSATIONS[:2], GREEDY)) == 2


def test_generate_in_chunks_through_shards_is_exact_once_and_resumes(
    single: HFSampler, sharded: ShardedSampler, tmp_path: Path
) -> None:
    ids = [f"conv-{i}" for i in range(len(CONVERSATIONS))]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=5)

    class Borrowed:
        """The module's sharded sampler, whose close() (from generate_in_chunks) must not end it."""

        name = sharded.name

        def __init__(self) -> None:
            self.loads = 0

        def __call__(self) -> ShardedSampler:
            self.loads += 1
            return ShardedSampler(sharded.engine, show_progress=False)

    def run(directory: Path, load) -> dict:
        return generate_in_chunks(load, CONVERSATIONS, ids, params, directory, chunk_size=2, desc="test")

    load = Borrowed()
    first = run(tmp_path / "sharded", load)
    files = {p.name: p.read_text() for p in sorted((tmp_path / "sharded").glob("chunk-*.jsonl"))}
    assert len(files) == 3
    # One engine writes the very same chunks.
    assert run(tmp_path / "single", lambda: single) == first
    single_files = {p.name: p.read_text() for p in sorted((tmp_path / "single").glob("chunk-*.jsonl"))}
    assert single_files == files
    # A crash lost the middle chunk: the rerun makes only that one, identical to before.
    (tmp_path / "sharded" / "chunk-00001.jsonl").unlink()
    assert run(tmp_path / "sharded", load) == first
    assert {p.name: p.read_text() for p in sorted((tmp_path / "sharded").glob("chunk-*.jsonl"))} == files
    assert load.loads == 2
    assert run(tmp_path / "sharded", load) == first and load.loads == 2  # all committed: no model


@pytest.mark.slow  # shard processes started and one killed (~17 s): the slow lane, which CI runs
def test_the_pool_reuses_the_shards_and_a_killed_shard_is_a_clear_error(tiny_model_path: str) -> None:
    release_engines()
    starts = len(ENGINES.starts)
    try:
        config, model = cpu_config(2), ModelConfig(path=tiny_model_path)
        first = build_sampler(config, model, show_progress=False)
        assert isinstance(first, ShardedSampler)
        answer = first.chat(CONVERSATIONS[:3], GREEDY)
        first.close()
        second = build_sampler(config, ModelConfig(path=tiny_model_path, assistant_name="Student"))
        assert second.engine is first.engine and second.chat(CONVERSATIONS[:3], GREEDY) == answer
        assert len(ENGINES.starts) == starts + 1
        label = ENGINES.starts[-1].label
        assert label.startswith("2 x transformers") and label.endswith("on 2 CPU processes")

        shards = list(second.engine.shards)
        victim = shards[1]
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(timeout=10)
        with pytest.raises(ShardError, match=r"shard 1 \(CPU\) was killed by SIGKILL"):
            second.chat(CONVERSATIONS[:3], GREEDY)
        with pytest.raises(ShardError, match=r"cannot answer any more: .*shard 1 \(CPU\)"):
            second.chat(CONVERSATIONS[:3], GREEDY)
        assert all(shard.process.poll() is not None for shard in shards)  # the survivor was ended too
        # The next build starts fresh shards in place of the broken engine.
        third = build_sampler(config, model, show_progress=False)
        assert third.engine is not second.engine and third.chat(CONVERSATIONS[:3], GREEDY) == answer
        processes = [shard.process for shard in third.engine.shards]
    finally:
        release_engines()
        del ENGINES.starts[starts:]  # other tests count the pool's starts from an empty list
    assert all(process.poll() is not None for process in processes)  # release ended the children


# --- the vLLM lane: two vLLM CPU engines -------------------------------------------------------------

VLLM_SCRIPT = """
import json, sys
from octrain.core.config import ModelConfig, SamplerBackend, SamplerConfig, VLLMSamplerOptions, DType
from octrain.samplers import SamplingParams, build_sampler, release_engines

if __name__ == "__main__":
    model = ModelConfig(path=sys.argv[1], dtype=DType.float32, max_model_len=512)
    options = VLLMSamplerOptions(gpu_memory_utilization=0.2)
    conversations = [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(5)]
    seeded = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    greedy = SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=8)
    out = {}
    for shards in (1, 2):
        config = SamplerConfig(backend=SamplerBackend.vllm, data_parallel_size=shards, vllm=options)
        sampler = build_sampler(config, model, show_progress=False)
        out[str(shards)] = [[c.text for c in row] for row in sampler.chat(conversations, seeded)]
        out[f"{shards}-greedy"] = [row[0].text for row in sampler.chat(conversations, greedy)]
        release_engines()
    print("RESULT " + json.dumps(out))
"""


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_two_vllm_engines_answer_as_one(tiny_model_path: str, tmp_path: Path) -> None:
    script = tmp_path / "sharded_vllm.py"
    script.write_text(VLLM_SCRIPT)
    # Two vLLM CPU engines on one machine: each binds its own half of the cores.
    done = subprocess.run(
        [sys.executable, str(script), tiny_model_path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=patience(900),
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["2"] == out["1"]
    assert out["2-greedy"] == out["1-greedy"]
