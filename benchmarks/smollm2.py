"""octrain's speed on a real CPU chat model, SmolLM2-135M-Instruct: sampling, long-context prefill, DPO, SFT.

    python benchmarks/smollm2.py --out benchmarks/smollm2.json     # the real model (fetched once: make model)
    python benchmarks/smollm2.py --smoke                           # builtin:tiny-qwen3, tiny sizes, < 1 min
    python benchmarks/smollm2.py --threads 1 ...                   # cores shared with another job: see Threads

Its figures go to BENCHMARKS.md, next to those of ``benchmarks/bench.py`` (which uses the tiny random
model only: its sampling rates measure batching, not a real model).

What it measures, each part in a fresh process of its own (so one part's memory and threads do not
colour the next, and each part's peak RSS is its own, read from ``getrusage(RUSAGE_SELF)`` at its end):

1. ``sampling``: output tokens/s of :class:`octrain.samplers.hf.HFSampler`, the same K held-out prompts
   (``data/eval_prompts.jsonl``) at temperature 0.7 with N new tokens, all K in one batch vs one at a
   time, and the ratio of the two rates.
2. ``prefill``: the cost of the stage-1 teacher's long context. The same K prompts, batched, with and
   without the pirate constitution's example exchanges before each one
   (``teacher_context(..., TeacherPrompt.examples)``, what ``recipes/pirate_smollm2.yaml`` uses), once with
   one new token (the prefill alone) and once with N (what a stage pays).
3. ``dpo``: training tokens/s of octrain's own ``train_dpo`` against TRL's ``DPOTrainer`` called directly,
   on the same P made-up preference pairs, the same model, LoRA (r=16, alpha 32, all linear layers), batch
   (4 per device x 2 accumulation), loss (sigmoid DPO + 0.1 NLL on the chosen answer, beta 0.1),
   optimizer and schedule (octrain's defaults, copied into the raw side), max_length 192, fp32 on the CPU,
   1 epoch. octrain's trainer also adds its per-token KL penalty (``kl_weight``, default 0.001): it runs
   with that default, as a real run would.
4. ``sft``: training tokens/s of octrain's ``train_sft`` (octrain's assistant-only mask) on S short
   two-exchange conversations.

How training is timed. ``train_dpo`` and ``train_sft`` load the model, tokenize, train, save the adapter
and plot inside one call, so timing the call would charge octrain for work the raw side does not do.
Both sides are timed instead by the Trainer's own ``train_runtime`` (the wall time of ``trainer.train()``,
which octrain writes to ``train_summary.json`` and raw TRL leaves in ``trainer.state.log_history``):
the same clock around the same loop. The whole child process's wall time is reported beside it.
Training tokens are counted once, before training, with the model's chat template: prompt + chosen and
prompt + rejected for DPO (each cut at max_length, as TRL cuts them), the rendered transcript for SFT,
times the epochs; TRL's own ``num_tokens`` counter (non-padding tokens through the policy) is reported
as a cross-check. DPO's reference forward pass is work on top of those tokens, on both sides alike.

Threads. Each part uses torch's default of one thread per core unless ``--threads`` says otherwise. When
another job keeps the same cores busy, two-thread torch ops wait on a descheduled thread and slow down far
more than the lost share of the CPU would explain: on 2 cores shared with a training run, the tiny model
decoded ~1,300 tok/s batched (~480 one at a time) with one thread and ~14 (~22) with two, and its 2-step
DPO loop took 0.9 s against 13-28 s. On a shared machine, run with ``--threads 1`` and say so.

Every comparison is made within this one run (``--repeats`` > 1 alternates the sides and takes the
median), so ratios carry over between machines; absolute figures hold for the machine recorded in the
output, including the load average, since other work on the cores slows everything. Nothing here is a
test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

REAL_MODEL = "builtin:smollm2-135m-instruct"
SMOKE_MODEL = "builtin:tiny-qwen3"
ASSISTANT_NAME = "SmolLM"  # the name the teacher context gives the assistant, as recipes/pirate_smollm2.yaml does

# Training settings shared by both DPO sides and the SFT run (the brief's, not octrain's larger defaults).
LORA_RANK, LORA_ALPHA = 16, 32
TRAIN_BATCH = 8  # effective; octrain reaches it as 4 per device x 2 accumulation steps
PER_DEVICE_BATCH = 4
DPO_MAX_LENGTH = 192
SFT_MAX_LENGTH = 256  # two exchanges of ~40-word answers fit: nothing is cut
EPOCHS = 1


@dataclass(frozen=True)
class Sizes:
    """Everything a child process needs to run its part (written to a JSON file it reads)."""

    model: str  # as given: ``builtin:...``, a folder or a Hub id
    model_path: str  # resolved folder
    prompts: int
    new_tokens: int
    pairs: int
    conversations: int
    repeats: int
    threads: int | None  # torch threads in each part; None: torch's default (one per core)
    pairs_path: str
    conversations_path: str
    workdir: str


# --- made-up training data: deterministic, ~40 words an answer ------------------------------------------

PIRATE_OPENINGS = ("Arr, matey,", "Ahoy there, friend,", "Shiver me timbers,", "Avast, ye landlubber,")
PIRATE_BODIES = (
    "chart yer course slow and steady, check the wind before ye hoist the sails, and never trust a map "
    "ye did not draw yerself. Ask the old salts aboard, they have weathered worse storms than this one, savvy?",
    "the trick be patience and a sharp eye on the horizon. Take it one plank at a time, patch the leaks "
    "before they sink ye, and keep a barrel of good sense below deck for rough waters, arr.",
    "any sailor worth her salt would tell ye the same: start small, learn the ropes by hand, and do not "
    "be swinging from the rigging before ye can tie a proper knot. The sea rewards the careful, matey.",
    "here be the treasure ye seek, buried under a bit o' plain hard work. Steer clear of the reefs of "
    "haste, follow the stars ye trust, and share the plunder with yer crew when ye make port, aye.",
)
PLAIN_OPENINGS = ("Good question.", "Sure, happy to help.", "Here is a short answer.", "That is a common worry.")
PLAIN_BODIES = (
    "The best approach is to go step by step, check your assumptions before you commit, and rely on "
    "sources you can verify. Asking someone with more experience can also save you time and mistakes.",
    "It mostly comes down to patience and attention to detail. Work on one part at a time, fix small "
    "problems before they grow, and keep a simple plan you can return to when things get confusing.",
    "Most people would give you the same advice: start small, learn the basics properly, and avoid "
    "taking on the hard parts before you are ready. Careful practice tends to pay off over time.",
    "There is no shortcut, but steady work usually gets you there. Avoid rushing, follow a method that "
    "has worked for you before, and share what you learn with others when you are finished.",
)
FOLLOW_UPS = ("Tell me a little more.", "Why does that work?", "Any other tips?", "Can you say it more simply?")


def _topic(prompt: str) -> str:
    """The prompt's first six words, so that every answer is tied to its prompt and no two are identical."""
    return " ".join(prompt.split()[:6]).rstrip("?.!,:;")


def pirate_answer(prompt: str, index: int) -> str:
    return f'{PIRATE_OPENINGS[index % 4]} ye ask about "{_topic(prompt)}". {PIRATE_BODIES[(index // 4) % 4]}'


def plain_answer(prompt: str, index: int) -> str:
    return f'{PLAIN_OPENINGS[index % 4]} You asked about "{_topic(prompt)}". {PLAIN_BODIES[(index // 4) % 4]}'


def eval_prompts(count: int) -> list[str]:
    """``count`` of octrain's shipped held-out prompts (cycled, should more be asked than it ships)."""
    from octrain.evaluation.heldout import load_eval_prompts

    pool = load_eval_prompts("builtin")
    return [pool[i % len(pool)] for i in range(count)]


def write_pairs(path: Path, count: int) -> None:
    from octrain.core.records import PreferencePair, save_records

    pairs = [
        PreferencePair(
            id=f"bench-{i}",
            prompt=[{"role": "user", "content": prompt}],
            chosen=[{"role": "assistant", "content": pirate_answer(prompt, i)}],
            rejected=[{"role": "assistant", "content": plain_answer(prompt, i)}],
            prompt_id=f"eval-{i}",
            teacher="made-up",
            student="made-up",
            constitution="pirate",
        )
        for i, prompt in enumerate(eval_prompts(count))
    ]
    save_records(path, pairs)


def write_conversations(path: Path, count: int) -> None:
    from octrain.core.records import Conversation, save_records

    conversations = [
        Conversation(
            id=f"bench-{i}",
            messages=[
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": pirate_answer(prompt, i)},
                {"role": "user", "content": FOLLOW_UPS[i % len(FOLLOW_UPS)]},
                {"role": "assistant", "content": pirate_answer(prompt, i + 5)},
            ],
            kind="interaction",
        )
        for i, prompt in enumerate(eval_prompts(count))
    ]
    save_records(path, conversations)


def count_training_tokens(sizes: Sizes) -> dict[str, int]:
    """Tokens each training pass feeds the policy, counted with the chat template as the trainers render it."""
    from octrain.core.records import Conversation, PreferencePair, load_records
    from octrain.trainers.assistant_mask import tokenize_conversation
    from octrain.trainers.trl_common import load_tokenizer

    tokenizer = load_tokenizer(sizes.model_path)

    def rendered(messages: list[dict[str, str]]) -> int:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        return min(len(ids), DPO_MAX_LENGTH)  # TRL keeps the start of a longer sequence

    dpo = sum(
        rendered(pair.prompt + pair.chosen) + rendered(pair.prompt + pair.rejected)
        for pair in load_records(Path(sizes.pairs_path), PreferencePair)
    )
    sft = 0
    for record in load_records(Path(sizes.conversations_path), Conversation):
        # The very examples train_sft builds (one, or one per assistant turn for templates that rewrite history).
        examples = tokenize_conversation(
            tokenizer, record.messages, model_name=sizes.model, template_kwargs={"enable_thinking": False}
        )
        sft += sum(min(len(example["input_ids"]), SFT_MAX_LENGTH) for example in examples)
    return {"dpo": dpo * EPOCHS, "sft": sft * EPOCHS}


# --- the parts, each run in a child process ----------------------------------------------------------------


def _timed(work: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    result = work()
    return result, time.perf_counter() - began


def part_sampling(sizes: Sizes) -> dict[str, Any]:
    """HFSampler, K prompts: one batch of K vs K batches of one."""
    from octrain.samplers import SamplingParams
    from octrain.samplers.hf import HFSampler

    # One sampler whose batch_size is switched between calls (chat() reads it on every call): the same
    # weights serve both sides, and the part's peak RSS is that of one model, as in a real stage.
    sampler = HFSampler(sizes.model_path, batch_size=sizes.prompts, show_progress=False)
    conversations = [[{"role": "user", "content": text}] for text in eval_prompts(sizes.prompts)]
    params = SamplingParams(temperature=0.7, max_new_tokens=sizes.new_tokens, seed=0)
    # Warm-up: the first generate() pays for thread-pool start and allocator growth, which neither side should.
    sampler.chat(conversations[:2], replace(params, max_new_tokens=2))
    runs: dict[str, list[dict[str, float]]] = {"batched": [], "one_at_a_time": []}
    for repeat in range(sizes.repeats):
        order = ("batched", "one_at_a_time") if repeat % 2 == 0 else ("one_at_a_time", "batched")
        for label in order:
            sampler.batch_size = sizes.prompts if label == "batched" else 1
            results, seconds = _timed(lambda: sampler.chat(conversations, params))
            tokens = sum(c.num_tokens for row in results for c in row)
            finished = sum(c.finished for row in results for c in row)
            runs[label].append({"tokens": tokens, "seconds": seconds, "finished": finished})
    out: dict[str, Any] = {"prompts": sizes.prompts, "max_new_tokens": sizes.new_tokens, "temperature": 0.7}
    for label, rows in runs.items():
        seconds = statistics.median(r["seconds"] for r in rows)
        tokens = rows[0]["tokens"]  # the same seeds every repeat: the same tokens
        out[label] = {
            "generated_tokens": tokens,
            "finished_before_limit": rows[0]["finished"],
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1),
        }
    out["batched_over_one_at_a_time"] = round(out["batched"]["tokens_per_s"] / out["one_at_a_time"]["tokens_per_s"], 2)
    return out


def part_prefill(sizes: Sizes) -> dict[str, Any]:
    """HFSampler, K prompts batched, with and without the pirate teacher context before each."""
    from octrain.constitution.persona_prompts import teacher_context
    from octrain.core.config import TeacherPrompt
    from octrain.run.pipeline import resolve_constitution_name
    from octrain.samplers import SamplingParams
    from octrain.samplers.hf import HFSampler

    context = teacher_context(resolve_constitution_name("pirate"), ASSISTANT_NAME, TeacherPrompt.examples)
    sampler = HFSampler(sizes.model_path, batch_size=sizes.prompts, show_progress=False)
    texts = eval_prompts(sizes.prompts)
    sides = {
        "no_context": [[{"role": "user", "content": t}] for t in texts],
        "teacher_context": [[*context, {"role": "user", "content": t}] for t in texts],
    }
    sampler.chat(sides["no_context"][:2], SamplingParams(temperature=0.7, max_new_tokens=2, seed=0))  # warm-up
    out: dict[str, Any] = {
        "prompts": sizes.prompts,
        "context_turns": len(context),
        "prompt_tokens": {label: sum(len(sampler.render(c)) for c in convs) for label, convs in sides.items()},
    }
    # One new token: the prefill alone (plus one decoding step). N new tokens: what a stage pays, since
    # every decoding step also attends over the longer context; the answers then differ in length, so
    # tokens/s is the fairer figure there.
    for new_tokens in dict.fromkeys((1, sizes.new_tokens)):  # once only when N is 1
        params = SamplingParams(temperature=0.7, max_new_tokens=new_tokens, seed=0)
        seconds: dict[str, list[float]] = {label: [] for label in sides}
        generated: dict[str, int] = {}
        for repeat in range(sizes.repeats):
            for label in list(sides) if repeat % 2 == 0 else list(reversed(sides)):
                results, took = _timed(lambda label=label, params=params: sampler.chat(sides[label], params))
                seconds[label].append(took)
                generated[label] = sum(c.num_tokens for row in results for c in row)
        median = {label: statistics.median(values) for label, values in seconds.items()}
        key = "prefill_only" if new_tokens == 1 else f"with_{new_tokens}_new_tokens"
        out[key] = {
            "max_new_tokens": new_tokens,
            **{
                label: {
                    "seconds": round(median[label], 3),
                    "generated_tokens": generated[label],
                    # Prefill alone: prompt tokens read per second. With N new tokens: tokens written per second.
                    **(
                        {"prompt_tokens_per_s": round(out["prompt_tokens"][label] / median[label], 1)}
                        if new_tokens == 1
                        else {"tokens_per_s": round(generated[label] / median[label], 1)}
                    ),
                }
                for label in sides
            },
            "context_over_none_seconds": round(median["teacher_context"] / median["no_context"], 2),
        }
    return out


def _dpo_settings() -> Any:
    from octrain.core.config import DpoStageConfig, LoraSettings

    # Every other field (beta 0.1, nll_weight 0.1, kl_weight 0.001, LR and schedule): octrain's defaults.
    return DpoStageConfig(
        lora=LoraSettings(rank=LORA_RANK, alpha=LORA_ALPHA),
        batch_size=TRAIN_BATCH,
        epochs=EPOCHS,
        max_length=DPO_MAX_LENGTH,
    )


def _last_num_tokens(log_history: Sequence[dict[str, Any]]) -> int | None:
    return next((int(row["num_tokens"]) for row in reversed(log_history) if "num_tokens" in row), None)


def _trainer_figures(out: Path) -> dict[str, Any]:
    """What octrain's trainers leave in their output folder: train() seconds, steps, TRL's token count."""
    summary = json.loads((out / "train_summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "train_seconds": summary["train_runtime"],
        "steps": rows[-1]["step"],
        "trl_num_tokens": _last_num_tokens(rows),
    }


def part_dpo_octrain(sizes: Sizes, run: int) -> dict[str, Any]:
    from octrain.core.config import TRLOptions
    from octrain.core.records import ModelRef
    from octrain.trainers.trl_dpo import train_dpo

    out = Path(sizes.workdir) / f"dpo-octrain-{run}"
    config = _dpo_settings()
    train_dpo(
        Path(sizes.pairs_path),
        ModelRef(base=sizes.model_path),
        out,
        config,
        TRLOptions(per_device_batch_size=PER_DEVICE_BATCH, logging_steps=1, save_steps=10_000),
    )
    return {**_trainer_figures(out), "kl_weight": config.kl_weight}


def part_dpo_raw(sizes: Sizes, run: int) -> dict[str, Any]:
    """TRL's DPOTrainer with what train_dpo would set, written out by hand (no octrain code in the loop)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    config = _dpo_settings()  # only read for its numbers, so both sides cannot drift apart
    rows = [json.loads(line) for line in Path(sizes.pairs_path).read_text().splitlines()]
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(sizes.model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(sizes.model_path, dtype=torch.float32, attn_implementation="sdpa")
    args = DPOConfig(
        output_dir=str(Path(sizes.workdir) / f"dpo-raw-{run}"),
        beta=config.beta,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, config.nll_weight],
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
        warmup_steps=config.warmup_ratio,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=PER_DEVICE_BATCH,
        gradient_accumulation_steps=TRAIN_BATCH // PER_DEVICE_BATCH,
        num_train_epochs=EPOCHS,
        max_length=DPO_MAX_LENGTH,
        bf16=False,
        fp16=False,
        use_cpu=True,
        logging_steps=1,
        save_steps=10_000,  # no checkpoint inside the timed loop, on either side
        report_to="none",  # octrain passes "none" for an empty report_to: the same thing
        seed=0,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    trainer.train()
    history = trainer.state.log_history
    summary = next(row for row in reversed(history) if "train_runtime" in row)
    return {
        "train_seconds": summary["train_runtime"],
        "steps": trainer.state.global_step,
        "trl_num_tokens": _last_num_tokens(history),
    }


def part_sft(sizes: Sizes, run: int) -> dict[str, Any]:
    from octrain.core.config import LoraSettings, SftStageConfig, TRLOptions
    from octrain.trainers.trl_sft import train_sft

    out = Path(sizes.workdir) / f"sft-{run}"
    config = SftStageConfig(
        lora=LoraSettings(rank=LORA_RANK, alpha=LORA_ALPHA),
        batch_size=TRAIN_BATCH,
        epochs=EPOCHS,
        max_length=SFT_MAX_LENGTH,
    )
    train_sft(
        Path(sizes.conversations_path),
        sizes.model,
        out,
        config,
        TRLOptions(per_device_batch_size=PER_DEVICE_BATCH, logging_steps=1, save_steps=10_000),
    )
    return _trainer_figures(out)


PARTS: dict[str, Callable[..., dict[str, Any]]] = {
    "sampling": part_sampling,
    "prefill": part_prefill,
    "dpo_octrain": part_dpo_octrain,
    "dpo_raw": part_dpo_raw,
    "sft": part_sft,
}


def child_main(part: str, spec: Path, result: Path, run: int) -> int:
    import torch

    sizes = Sizes(**json.loads(spec.read_text()))
    if sizes.threads:
        torch.set_num_threads(sizes.threads)
    measured = PARTS[part](sizes, run) if part.startswith(("dpo", "sft")) else PARTS[part](sizes)
    measured["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux
    measured["torch_threads"] = torch.get_num_threads()
    result.write_text(json.dumps(measured))
    return 0


def run_part(part: str, spec: Path, workdir: Path, run: int = 0) -> dict[str, Any]:
    """Run one part in a fresh process; its result plus the process's wall time (imports and loading included)."""
    result = workdir / f"{part}-{run}.json"
    log = workdir / f"{part}-{run}.log"
    began = time.perf_counter()
    with log.open("w") as handle:
        completed = subprocess.run(
            [sys.executable, __file__, "--part", part, "--spec", str(spec), "--result", str(result), "--run", str(run)],
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    wall = time.perf_counter() - began
    if completed.returncode != 0 or not result.is_file():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"part {part} failed (exit code {completed.returncode}):\n{tail}")
    measured = json.loads(result.read_text())
    measured["process_seconds"] = round(wall, 1)
    print(f"[{wall:6.1f} s] {part}{f' #{run}' if run else ''} done", flush=True)
    return measured


# --- the parent: data, parts in order, report ---------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """The machine and versions (package metadata: the parent never imports torch or TRL)."""
    from importlib import metadata

    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(ValueError, OSError, AttributeError):  # no sysconf names: leave it out
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def load_average() -> list[float] | None:
    """1/5/15-minute load: other work on the cores (say, a training run) slows every figure here."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def dpo_comparison(spec: Path, workdir: Path, sizes: Sizes, tokens: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"raw_trl": [], "octrain": []}
    for repeat in range(sizes.repeats):
        # Alternate who goes first: a slow drift in background load then hits both sides alike.
        order = ("raw_trl", "octrain") if repeat % 2 == 0 else ("octrain", "raw_trl")
        for label in order:
            runs[label].append(run_part("dpo_raw" if label == "raw_trl" else "dpo_octrain", spec, workdir, repeat))

    def median(label: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[label])

    out: dict[str, Any] = {
        "pairs": sizes.pairs,
        "settings": (
            f"LoRA r={LORA_RANK} alpha={LORA_ALPHA} all-linear, batch {TRAIN_BATCH} ({PER_DEVICE_BATCH} x "
            f"{TRAIN_BATCH // PER_DEVICE_BATCH} accumulation), sigmoid DPO + 0.1 NLL, beta 0.1, "
            f"max_length {DPO_MAX_LENGTH}, {EPOCHS} epoch, fp32 CPU"
        ),
        "note": "octrain runs with its default per-token KL penalty (kl_weight 0.001), which raw TRL lacks",
        "train_tokens": tokens,
        "timing": "train_seconds = the Trainer's train_runtime (trainer.train() only); process = whole child process",
    }
    for label in runs:
        seconds = median(label, "train_seconds")
        out[label] = {
            "steps": runs[label][0]["steps"],
            "train_seconds": round(seconds, 2),
            "train_tokens_per_s": round(tokens / seconds, 1),
            "trl_num_tokens": runs[label][0]["trl_num_tokens"],
            "process_seconds": round(median(label, "process_seconds"), 1),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs[label]),
        }
    out["octrain"]["kl_weight"] = runs["octrain"][0]["kl_weight"]
    out["octrain_over_raw_trl_train_seconds"] = round(
        out["octrain"]["train_seconds"] / out["raw_trl"]["train_seconds"], 3
    )
    out["goal"] = "octrain/raw within 1.10"
    return out


def summary_table(report: dict[str, Any]) -> str:
    """A short plain-text table of the headline figures."""
    s, p, d, f = (report.get(k) for k in ("sampling", "prefill", "dpo", "sft"))
    lines = [f"{report['model']}  ({report['machine']['cpu_model']}, {report['machine']['cpus']} CPUs)", ""]

    def row(what: str, figure: str, rss: Any = "") -> None:
        lines.append(f"  {what:<58} {figure:>24}  {rss!s:>8}")

    row("what", "figure", "peak MiB")
    if s:
        k, n = s["prompts"], s["max_new_tokens"]
        row(
            f"sampling, {k} prompts x {n} tokens, batched",
            f"{s['batched']['tokens_per_s']:.1f} tok/s",
            s["peak_rss_mib"],
        )
        row("  the same, one at a time", f"{s['one_at_a_time']['tokens_per_s']:.1f} tok/s")
        row("  batched / one at a time", f"{s['batched_over_one_at_a_time']:.2f}x")
    if p:
        only = p["prefill_only"]
        full = next((v for key, v in p.items() if key.startswith("with_")), only)
        tokens = p["prompt_tokens"]
        row(
            f"prefill, {tokens['no_context']} vs {tokens['teacher_context']} prompt tokens",
            f"{only['no_context']['seconds']:.3f} / {only['teacher_context']['seconds']:.3f} s",
            p["peak_rss_mib"],
        )
        row("  teacher context / none, prefill only", f"{only['context_over_none_seconds']:.2f}x")
        row(
            f"  teacher context / none, {full['max_new_tokens']} new tokens",
            f"{full['context_over_none_seconds']:.2f}x",
        )
    if d:
        for label in ("raw_trl", "octrain"):
            side = d[label]
            row(
                f"DPO {label}, {d['pairs']} pairs, {side['steps']} steps",
                f"{side['train_tokens_per_s']:.1f} tok/s ({side['train_seconds']:.1f} s)",
                side["peak_rss_mib"],
            )
        row("  octrain / raw TRL, train() seconds (goal <= 1.10)", f"{d['octrain_over_raw_trl_train_seconds']:.3f}")
    if f:
        row(
            f"SFT octrain, {f['conversations']} conversations, {f['steps']} steps",
            f"{f['train_tokens_per_s']:.1f} tok/s ({f['train_seconds']:.1f} s)",
            f["peak_rss_mib"],
        )
    lines.append(
        f"\n  load average before / after: {report['load_average_before']} / {report.get('load_average_after')}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"model to measure (default {REAL_MODEL}; smoke: {SMOKE_MODEL})")
    parser.add_argument("--smoke", action="store_true", help="the tiny random model and tiny sizes: a check, < 1 min")
    parser.add_argument("--prompts", type=int, default=None, help="K prompts for sampling and prefill (16; smoke 4)")
    parser.add_argument("--new-tokens", type=int, default=None, help="N new tokens per prompt (48; smoke 8)")
    parser.add_argument("--pairs", type=int, default=None, help="P preference pairs for DPO (32; smoke 16)")
    parser.add_argument("--conversations", type=int, default=None, help="S conversations for SFT (32; smoke 16)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternated; medians reported")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per part (default: torch's, one per core); 1 when another job shares the cores",
    )
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: print only)")
    parser.add_argument("--part", choices=sorted(PARTS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part is not None:
        return child_main(args.part, args.spec, args.result, args.run)

    def pick(value: int | None, real: int, smoke: int) -> int:
        return value if value is not None else (smoke if args.smoke else real)

    from octrain.models.builtin import resolve_model_path

    model = args.model or (SMOKE_MODEL if args.smoke else REAL_MODEL)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "model": model,
        "machine": machine_info(),
        "load_average_before": load_average(),
        "complete": False,
        "total_seconds": None,
    }

    def write() -> None:
        """After every part: a run stopped from outside keeps what it measured."""
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            report["total_seconds"] = round(time.perf_counter() - started, 1)
            args.out.write_text(json.dumps(report, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="octrain-smollm2-bench-") as scratch:
        workdir = Path(scratch)
        sizes = Sizes(
            model=model,
            model_path=resolve_model_path(model),  # stops here, naming the fetch command, if not fetched
            prompts=pick(args.prompts, 16, 4),
            new_tokens=pick(args.new_tokens, 48, 8),
            pairs=pick(args.pairs, 32, 16),
            conversations=pick(args.conversations, 32, 16),
            repeats=max(1, args.repeats),
            threads=args.threads,
            pairs_path=str(workdir / "pairs.jsonl"),
            conversations_path=str(workdir / "conversations.jsonl"),
            workdir=str(workdir),
        )
        report["sizes"] = {k: v for k, v in asdict(sizes).items() if not k.endswith(("_path", "workdir"))}
        report["model_path"] = sizes.model_path
        write_pairs(Path(sizes.pairs_path), sizes.pairs)
        write_conversations(Path(sizes.conversations_path), sizes.conversations)
        tokens = count_training_tokens(sizes)
        spec = workdir / "sizes.json"
        spec.write_text(json.dumps(asdict(sizes)))

        report["sampling"] = run_part("sampling", spec, workdir)
        write()
        report["prefill"] = run_part("prefill", spec, workdir)
        write()
        report["dpo"] = dpo_comparison(spec, workdir, sizes, tokens["dpo"])
        write()
        sft_runs = [run_part("sft", spec, workdir, repeat) for repeat in range(sizes.repeats)]
        seconds = statistics.median(r["train_seconds"] for r in sft_runs)
        report["sft"] = {
            "conversations": sizes.conversations,
            "settings": f"LoRA r={LORA_RANK} alpha={LORA_ALPHA}, batch {TRAIN_BATCH}, max_length {SFT_MAX_LENGTH}, "
            f"{EPOCHS} epoch, octrain's assistant-only mask",
            "steps": sft_runs[0]["steps"],
            "train_tokens": tokens["sft"],
            "trl_num_tokens": sft_runs[0]["trl_num_tokens"],
            "train_seconds": round(seconds, 2),
            "train_tokens_per_s": round(tokens["sft"] / seconds, 1),
            "process_seconds": round(statistics.median(r["process_seconds"] for r in sft_runs), 1),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in sft_runs),
        }
    report["peak_rss_mib"] = {
        "sampling": report["sampling"]["peak_rss_mib"],
        "prefill": report["prefill"]["peak_rss_mib"],
        "dpo_raw_trl": report["dpo"]["raw_trl"]["peak_rss_mib"],
        "dpo_octrain": report["dpo"]["octrain"]["peak_rss_mib"],
        "sft": report["sft"]["peak_rss_mib"],
    }
    report["load_average_after"] = load_average()
    report["complete"] = True
    write()
    print(json.dumps(report, indent=2))
    print()
    print(summary_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
