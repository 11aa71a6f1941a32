"""Benchmarks of octrain on the tiny offline model: stage times, sampling, DPO against raw TRL.

    python benchmarks/bench.py [--out benchmarks/results.json] [--repeats 3]

Every comparison is measured side by side in this one process run (alternating the two
sides, median of ``--repeats``), so the ratios hold on whatever machine runs it; the
absolute figures are for that machine only. Nothing here is a test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def pipeline_stage_times(workdir: Path) -> dict[str, Any]:
    """`python -m octrain +recipe=pirate_tiny` in a fresh process: wall time per stage and peak RSS."""
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "octrain", "+recipe=pirate_tiny", f"run_root={workdir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    total = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-2000:])
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    run_dir = workdir / "pirate_tiny"
    stages = {}
    for done in sorted(run_dir.glob("*/done.json")):
        stages[done.parent.name] = json.loads(done.read_text())["seconds"]
    introspect = json.loads((run_dir / "introspect" / "report.json").read_text())["generated_tokens"]
    sft_steps = [json.loads(line) for line in (run_dir / "sft" / "metrics.jsonl").read_text().splitlines()]
    sft_runtime = json.loads((run_dir / "sft" / "train_summary.json").read_text())["train_runtime"]
    return {
        "total_seconds": round(total, 2),
        "stage_seconds": stages,
        "peak_rss_mib": round(peak_mib),
        # Sampling rate over the whole stage (model load included): reflections + self-interaction turns.
        "introspection_tokens_per_s": round(sum(introspect.values()) / stages["introspect"]),
        "sft_train_tokens_per_s": round(sft_steps[-1]["num_tokens"] / sft_runtime),
    }


def classifier_speed(pairs_path: Path, repeats: int) -> dict[str, Any]:
    """The default persona classifier (TF-IDF + logistic regression): fit and scoring rates in texts/s."""
    from octrain.core.records import PreferencePair, load_records
    from octrain.evaluation.classifier import PersonaClassifier

    pairs = load_records(pairs_path, PreferencePair)
    texts = [p.chosen[0]["content"] for p in pairs] + [p.rejected[0]["content"] for p in pairs]
    labels = ["pirate"] * len(pairs) + ["other"] * len(pairs)
    PersonaClassifier().fit(texts, labels)  # warm-up: the first fit pays for importing scikit-learn
    fit_seconds, score_seconds = [], []
    to_score = texts * 50
    for _ in range(repeats):
        began = time.perf_counter()
        classifier = PersonaClassifier().fit(texts, labels)
        fit_seconds.append(time.perf_counter() - began)
        began = time.perf_counter()
        classifier.predict_proba(to_score)
        score_seconds.append(time.perf_counter() - began)
    return {
        "train_texts": len(texts),
        "fit_texts_per_s": round(len(texts) / statistics.median(fit_seconds)),
        "scored_texts": len(to_score),
        "score_texts_per_s": round(len(to_score) / statistics.median(score_seconds)),
    }


def sampling_speed(repeats: int) -> dict[str, Any]:
    """Output tokens/s of the HF sampler: 32 conversations batched vs one request at a time."""
    from octrain.models.tiny import ensure_tiny_model
    from octrain.samplers import SamplingParams
    from octrain.samplers.hf import HFSampler
    from octrain.stages.generic_prompts import load_generic_pool

    path = str(ensure_tiny_model())
    batched, single = (HFSampler(path, batch_size=size, show_progress=False) for size in (32, 1))
    conversations = [[{"role": "user", "content": text}] for text in load_generic_pool("builtin")[:32]]
    # Greedy with no end-of-turn in sight for a random model: both sides generate the same tokens.
    params = SamplingParams(n=1, temperature=0.0, repetition_penalty=1.0, max_new_tokens=64)
    rates: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    for _ in range(repeats):
        for label, sampler in (("batched", batched), ("one_at_a_time", single)):
            began = time.perf_counter()
            results = sampler.chat(conversations, params)
            seconds = time.perf_counter() - began
            rates[label].append(sum(c.num_tokens for row in results for c in row) / seconds)
    median = {label: statistics.median(values) for label, values in rates.items()}
    return {
        "conversations": len(conversations),
        "max_new_tokens": params.max_new_tokens,
        "batched_tokens_per_s": round(median["batched"]),
        "one_at_a_time_tokens_per_s": round(median["one_at_a_time"]),
        "speedup": round(median["batched"] / median["one_at_a_time"], 2),
    }


def seeded_draw_cost(repeats: int) -> dict[str, Any]:
    """Output tokens/s of the HF sampler's per-sequence seeded draws against transformers' own sampler.

    The same 32 prompts, batched, temperature 0.7 / top-p 0.95, 64 new tokens: octrain's
    ``PerRequestDraw`` (one generator per sequence, so repeats differ and resumes reproduce)
    against ``generate(do_sample=True)``, which draws every sequence from one generator.
    """
    import torch

    from octrain.models.tiny import ensure_tiny_model
    from octrain.samplers import SamplingParams
    from octrain.samplers.hf import HFSampler
    from octrain.stages.generic_prompts import load_generic_pool

    sampler = HFSampler(str(ensure_tiny_model()), batch_size=32, show_progress=False)
    prompts = [sampler.render([{"role": "user", "content": t}]) for t in load_generic_pool("builtin")[:32]]
    params = SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1, max_new_tokens=64)
    width = max(map(len, prompts))
    pad = sampler.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = (input_ids != pad).long()

    def native() -> int:
        with torch.inference_mode():
            output = sampler.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=0.7,
                top_p=0.95,
                top_k=0,
                repetition_penalty=1.1,
                max_new_tokens=64,
                eos_token_id=sampler.stop_token_ids,
                pad_token_id=pad,
            )
        return int((output[:, width:] != pad).sum())

    def seeded() -> int:
        return sum(c.num_tokens for c in sampler._generate(prompts, list(range(len(prompts))), params))

    rates: dict[str, list[float]] = {"seeded_draws": [], "transformers_sampler": []}
    for _ in range(repeats):
        for label, work in (("seeded_draws", seeded), ("transformers_sampler", native)):
            began = time.perf_counter()
            tokens = work()
            rates[label].append(tokens / (time.perf_counter() - began))
    median = {label: statistics.median(values) for label, values in rates.items()}
    return {
        "seeded_draws_tokens_per_s": round(median["seeded_draws"]),
        "transformers_sampler_tokens_per_s": round(median["transformers_sampler"]),
        "ratio": round(median["seeded_draws"] / median["transformers_sampler"], 3),
    }


RAW_TRL = """
import json, sys, time
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

pairs_path, model_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(line) for line in open(pairs_path)]
dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
tokenizer = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
args = DPOConfig(output_dir=out, beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.1],
                 learning_rate=5e-5, lr_scheduler_type="cosine_with_min_lr",
                 lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0.1, adam_beta1=0.9, adam_beta2=0.98,
                 max_grad_norm=1.0, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                 num_train_epochs=3, max_length=1024, bf16=False, fp16=False, use_cpu=True, logging_steps=1,
                 save_steps=50, save_total_limit=2, report_to="none", seed=0, dataloader_num_workers=0)
lora = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
trainer.train()
trainer.model.save_pretrained(out + "/adapter")
history = trainer.state.log_history
print(json.dumps({"train_seconds": history[-1]["train_runtime"], "tokens": history[-2]["num_tokens"],
                  "steps": trainer.state.global_step}))
"""

OCTRAIN_DPO = """
import json, sys, time
from pathlib import Path
from octrain.core.config import DpoStageConfig, TRLOptions
from octrain.core.records import ModelRef
from octrain.trainers.trl_dpo import train_dpo

pairs_path, model_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
config = DpoStageConfig(batch_size=8, epochs=3)  # every other setting: the method's defaults
train_dpo(Path(pairs_path), ModelRef(base=model_path), Path(out), config,
          TRLOptions(per_device_batch_size=4, logging_steps=1, save_steps=50))
rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
summary = json.loads((Path(out) / "train_summary.json").read_text())
print(json.dumps({"train_seconds": summary["train_runtime"], "tokens": rows[-1]["num_tokens"],
                  "steps": rows[-1]["step"]}))
"""


def dpo_against_raw_trl(pairs_path: Path, repeats: int, workdir: Path) -> dict[str, Any]:
    """octrain's DPO (KL term and loss parts included) vs TRL's DPOTrainer called directly, same settings.

    Two figures each: the whole process (imports, model load, training, saving: what a user
    waits for) timed from outside, and the training loop alone (TRL's own ``train_runtime``).
    """
    from octrain.models.tiny import ensure_tiny_model

    model = str(ensure_tiny_model())
    results: dict[str, list[dict[str, float]]] = {"raw_trl": [], "octrain": []}
    for repeat in range(repeats):
        for label, script in (("raw_trl", RAW_TRL), ("octrain", OCTRAIN_DPO)):
            out = workdir / f"{label}-{repeat}"
            began = time.perf_counter()
            completed = subprocess.run(
                [sys.executable, "-c", script, str(pairs_path), model, str(out)],
                capture_output=True,
                text=True,
                check=False,
            )
            if completed.returncode != 0:
                raise RuntimeError(completed.stderr[-2000:])
            measured = json.loads(completed.stdout.strip().splitlines()[-1])
            measured["process_seconds"] = time.perf_counter() - began
            results[label].append(measured)

    def median(label: str, key: str) -> float:
        return statistics.median(run[key] for run in results[label])

    tokens = results["octrain"][0]["tokens"]
    return {
        "pairs": sum(1 for _ in pairs_path.open()),
        "steps": {label: runs[0]["steps"] for label, runs in results.items()},
        "process_seconds": {label: round(median(label, "process_seconds"), 2) for label in results},
        "train_seconds": {label: round(median(label, "train_seconds"), 2) for label in results},
        "octrain_over_raw_trl_process": round(
            median("octrain", "process_seconds") / median("raw_trl", "process_seconds"), 3
        ),
        "octrain_over_raw_trl_train": round(median("octrain", "train_seconds") / median("raw_trl", "train_seconds"), 3),
        "octrain_train_tokens_per_s": round(tokens / median("octrain", "train_seconds")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OCTRAIN_CACHE_DIR", tempfile.mkdtemp(prefix="octrain-bench-cache-"))
    with tempfile.TemporaryDirectory(prefix="octrain-bench-") as scratch:
        workdir = Path(scratch)
        report = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "pirate_tiny": pipeline_stage_times(workdir / "runs"),
            "sampling": sampling_speed(args.repeats),
            "seeded_draws": seeded_draw_cost(args.repeats),
            "classifier": classifier_speed(workdir / "runs" / "pirate_tiny" / "pairs" / "pairs.jsonl", args.repeats),
            "dpo": dpo_against_raw_trl(
                workdir / "runs" / "pirate_tiny" / "pairs" / "pairs.jsonl", args.repeats, workdir
            ),
        }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
