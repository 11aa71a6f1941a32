"""The vLLM sampler against the transformers sampler on the tiny model (needs vLLM: the `vllm` lane).

Run with a vLLM install, e.g. the CPU build: ``make test-vllm``. vLLM's engine starts worker
processes, so the comparison runs as a script in a subprocess, under a ``__main__`` guard.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, patience

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]

SCRIPT = """
import json, sys
from octrain.samplers import SamplingParams
from octrain.samplers.hf import HFSampler
from octrain.samplers.vllm_engine import VLLMEngine, VLLMSampler

if __name__ == "__main__":
    model, adapter = sys.argv[1], sys.argv[2] or None
    conversations = [
        [{"role": "user", "content": "Tell me about the sea."}],
        [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Go on:"}, {"role": "assistant", "content": "Once upon a"}],
    ]
    greedy = SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=12)
    sampled = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=0)
    # float32 on both sides: vLLM on the CPU defaults to bf16, whose rounding flips near-tied greedy picks.
    loaded = VLLMEngine(model, max_lora_rank=64 if adapter else 0, dtype="float32", gpu_memory_utilization=0.2,
                        max_model_len=512)
    engine = VLLMSampler(loaded, adapter_path=adapter, show_progress=False, owns_engine=True)
    out = {
        "vllm": [row[0].text for row in engine.chat(conversations, greedy)],
        "vllm_n": [len(row) for row in engine.chat(conversations, sampled)],
    }
    # The K repeats of a prompt and many samples of one reflection prompt, each with its id's seed,
    # as the stages send them; then the same again, which must reproduce every sample.
    from octrain.core.seeding import derive_seed
    repeats = {"prompt": (conversations[0], 5), "reflection": (conversations[1], 12)}
    seeded = SamplingParams(n=1, temperature=1.0, max_new_tokens=12)
    for name, (conversation, count) in repeats.items():
        seeds = [derive_seed(3, f"{name}-{i}") for i in range(count)]
        draws = [[row[0].text for row in engine.chat([conversation] * count, seeded, seeds=seeds)] for _ in range(2)]
        out[name] = draws
    engine.close()
    hf = HFSampler(model, adapter_path=adapter, show_progress=False)
    out["hf"] = [row[0].text for row in hf.chat(conversations, greedy)]
    # An answer cut off by max_tokens in the middle of a UTF-8 character: transformers decodes the
    # stray bytes as U+FFFD, vLLM's detokenizer holds them back. The tokens agree either way.
    out = {key: [t.rstrip("\ufffd") if isinstance(t, str) else t for t in value] for key, value in out.items()}
    print("RESULT " + json.dumps(out))
"""


def compare(model: str, adapter: str, tmp_path: Path, script_text: str = SCRIPT) -> dict:
    script = tmp_path / "compare.py"
    script.write_text(script_text)
    done = subprocess.run(
        [sys.executable, str(script), model, adapter], capture_output=True, text=True, timeout=patience(600), cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_vllm_matches_transformers_greedy(tiny_model_path: str, tmp_path: Path) -> None:
    result = compare(tiny_model_path, "", tmp_path)
    assert result["vllm"] == result["hf"]  # same model, same template, same greedy tokens
    assert result["vllm_n"] == [3, 3, 3]
    for name in ("prompt", "reflection"):
        first, again = result[name]
        assert len(set(first)) == len(first)  # every repeat its own seed: no answer written twice
        assert again == first  # and a fixed seed reproduces them


def test_vllm_serves_a_lora_adapter(tiny_model_path: str, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.3)
    model.save_pretrained(tmp_path / "adapter")
    result = compare(tiny_model_path, str(tmp_path / "adapter"), tmp_path)
    assert result["vllm"] == result["hf"]  # vLLM's LoRA kernels agree with the merged adapter


SHARED_ENGINE_SCRIPT = """
import json, sys
from octrain.core.config import DType, ModelConfig, SamplerBackend, SamplerConfig
from octrain.samplers import SamplingParams, build_sampler, release_engines
from octrain.samplers.engine_pool import ENGINES
from octrain.samplers.hf import HFSampler

if __name__ == "__main__":
    model, adapters = sys.argv[1], sys.argv[2].split(",")
    conversations = [
        [{"role": "user", "content": "Tell me about the sea."}],
        [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}],
    ]
    greedy = SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=12)
    config = SamplerConfig(backend=SamplerBackend.vllm)
    config.vllm.gpu_memory_utilization = 0.2
    student = ModelConfig(path=model, dtype=DType.float32, max_model_len=512)
    out = {"vllm": {}, "hf": {}}
    # As the eval stage asks: the base model, then each adapter, every one announced up front.
    for adapter in [None, *adapters]:
        sampler = build_sampler(config, student, adapter=adapter, serves=adapters, show_progress=False)
        out["vllm"][str(adapter)] = [row[0].text.rstrip("\\ufffd") for row in sampler.chat(conversations, greedy)]
        sampler.close()
    out["starts"] = len(ENGINES.starts)
    # Another model (here: another length limit) closes the loaded engine before its own starts.
    other = ModelConfig(path=model, dtype=DType.float32, max_model_len=256)
    build_sampler(config, other, show_progress=False).chat(conversations[:1], greedy)
    out["starts_after_other"] = len(ENGINES.starts)
    release_engines()
    for adapter in [None, *adapters]:
        hf = HFSampler(model, adapter_path=adapter, show_progress=False)
        out["hf"][str(adapter)] = [row[0].text.rstrip("\\ufffd") for row in hf.chat(conversations, greedy)]
        hf.close()
    print("RESULT " + json.dumps(out))
"""


def test_one_vllm_engine_serves_the_base_and_every_adapter(tiny_model_path: str, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for index, rank in enumerate((8, 24)):  # two ranks, as DPO-only (r) and trained (DPO + SFT ranks)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model_path),
            LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"),
        )
        torch.manual_seed(index)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.3)
        model.save_pretrained(tmp_path / f"adapter-{index}")
        paths.append(str(tmp_path / f"adapter-{index}"))
    result = compare(tiny_model_path, ",".join(paths), tmp_path, SHARED_ENGINE_SCRIPT)
    assert result["starts"] == 1  # base and both adapters: one engine start
    assert result["starts_after_other"] == 2
    assert result["vllm"] == result["hf"]  # each adapter's answers are its own, as a merged model gives them
    answers = list(result["vllm"].values())
    assert answers[0] != answers[1] and answers[1] != answers[2]  # and the adapters really differ


STREAM_SCRIPT = """
import json, sys
from pathlib import Path
from octrain.samplers.generation import generate_in_chunks
from octrain.samplers import SamplingParams
from octrain.samplers.vllm_engine import VLLMEngine, VLLMSampler

if __name__ == "__main__":
    model, work = sys.argv[1], Path(sys.argv[2])
    conversations = [[{"role": "user", "content": f"Tell me about the sea, part {i}."}] for i in range(9)]
    ids = [f"item-{i}" for i in range(9)]
    greedy = SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=12)
    loaded = VLLMEngine(model, dtype="float32", gpu_memory_utilization=0.2, max_model_len=512)
    sampler = VLLMSampler(loaded, show_progress=False)
    chat = [row[0].text for row in sampler.chat(conversations, greedy)]
    streamed = generate_in_chunks(lambda: sampler, conversations, ids, greedy, work, chunk_size=4, desc="stream")
    loaded.close()
    print("RESULT " + json.dumps({"chat": chat, "streamed": [streamed[i][0].text for i in ids],
                                  "chunks": sorted(p.name for p in work.glob("chunk-*.jsonl"))}))
"""


def test_the_engine_streams_a_stage_and_commits_every_chunk(tiny_model_path: str, tmp_path: Path) -> None:
    result = compare(tiny_model_path, str(tmp_path / "chunks"), tmp_path, STREAM_SCRIPT)
    assert result["streamed"] == result["chat"]  # answers as they finish are the batched call's answers
    assert result["chunks"] == ["chunk-00000.jsonl", "chunk-00001.jsonl", "chunk-00002.jsonl"]
