"""How many distinct answers a sampler writes for repeated requests: per-request seeds vs one shared seed.

    python benchmarks/distinct_samples.py --sampler hf          # transformers, the tiny model
    python benchmarks/distinct_samples.py --sampler fake        # the deterministic fake
    .venv-vllm/bin/python benchmarks/distinct_samples.py --sampler vllm   # vLLM's engine (CPU build here)

Two workloads, shaped like the stages': *pairs*, 16 prompts answered K = 5 times each (the K
repeats of a prompt have distinct ids), and *reflections*, one reflection prompt sampled 40
times. Each is sampled twice side by side: as the stages do now (each request seeded from the
run seed and its id) and as a batch sharing one seed (what giving vLLM one ``SamplingParams.seed``
did). The figure is the distinct-answer ratio, distinct texts / texts: 1.0 means no answer was
written twice, 1/K means every repeat was a copy. Nothing is asserted; the JSON goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

from octrain.core.seeding import derive_seed
from octrain.samplers.base import Sampler, SamplingParams
from octrain.samplers.generation import duplicate_count

K = 5
PROMPTS = [f"Tell me one thing about topic number {i}, please." for i in range(16)]
REFLECTION = [
    {"role": "system", "content": "The assistant is Tiny, in a reflective mood, looking inward."},
    {"role": "user", "content": "Write a diary entry about your beliefs that future versions of you will remember."},
]


def load(kind: str, model: str) -> Sampler:
    if kind == "hf":
        from octrain.samplers.hf import HFSampler

        return HFSampler(model, batch_size=32, show_progress=False)
    if kind == "vllm":
        from octrain.samplers.vllm_engine import VLLMSampler

        return VLLMSampler(model, dtype="float32", gpu_memory_utilization=0.2, max_model_len=512, show_progress=False)
    from octrain.samplers.fake import FakeSampler

    return FakeSampler()


def ratio(texts: list[str]) -> float:
    return round((len(texts) - duplicate_count(texts)) / len(texts), 3)


def measure(sampler: Sampler, conversations: list, ids: list[str], params: SamplingParams) -> dict[str, Any]:
    per_request = [derive_seed(params.seed, i) for i in ids]
    shared = [params.seed] * len(ids)
    result: dict[str, Any] = {"samples": len(ids)}
    for name, seeds in (("per_request_seeds", per_request), ("one_shared_seed", shared)):
        started = time.perf_counter()
        texts = [row[0].text for row in sampler.chat(conversations, params, seeds=seeds, progress=False)]
        result[name] = {"distinct_ratio": ratio(texts), "seconds": round(time.perf_counter() - started, 2)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sampler", choices=("hf", "vllm", "fake"), default="hf")
    args = parser.parse_args()
    from octrain.models.tiny import ensure_tiny_model

    sampler = load(args.sampler, str(ensure_tiny_model()))
    params = SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1, max_new_tokens=24, seed=0)
    pairs_conversations = [[{"role": "user", "content": p}] for p in PROMPTS for _ in range(K)]
    pairs_ids = [f"t00-{i:04d}-k{k}" for i in range(len(PROMPTS)) for k in range(K)]
    reflection_ids = [f"refl-00-{i:05d}" for i in range(40)]
    results = {
        "sampler": args.sampler,
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "pairs": measure(sampler, pairs_conversations, pairs_ids, params),
        "reflections": measure(sampler, [REFLECTION] * 40, reflection_ids, params),
    }
    sampler.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
