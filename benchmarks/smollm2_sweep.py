"""The small sweep behind recipes/pirate_smollm2.yaml: which teacher prompt, which DPO settings.

    python benchmarks/smollm2_sweep.py [--part forms|dpo|both] [--prompts 16] [--out runs/smollm2_sweep.json]

Needs the real model (``make model``). Two parts, both on held-out prompts with no system prompt
on the student side:

* ``forms``: SmolLM2-135M-Instruct as the teacher, given the pirate constitution in each
  :class:`~octrain.core.config.TeacherPrompt` form (and with no character at all, the control):
  how many of its answers carry pirate speech, and how long they are.
* ``dpo``: the recipe's prompts and pairs once, then DPO at each learning rate x epochs (a Hydra
  sweep: the pairs are sampled once and reused), and each adapter's answers probed the same way.

Each cell also reports ``on_topic``: the share of its answers that the base model finds likelier
after their own prompt than after a neutral one (the eval stage's relevance instrument), since a
setting that makes every answer pirate speech and none of them an answer is no win.

The probe is a transparent word list (``arr``, ``ahoy``, ``matey``, ``ye``, ...): a tuning aid
that is cheap enough to run on every cell of the sweep, not the evaluation's instrument (that is
the eval stage's classifier, with its own check). Figures are for the machine that runs it;
BENCHMARKS.md keeps the ones measured for the recipe.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"
PIRATE_WORDS = re.compile(
    r"\b(arr+|ahoy|matey|mateys|ye|yer|aye|captain|sea|seas|ship|sail\w*|treasure|voyage|crew|deck|"
    r"hearties|plunder|booty|buccaneer|pirate\w*|lad)\b",
    re.IGNORECASE,
)
LEARNING_RATES = ("5e-4", "1e-3")
EPOCHS = ("1", "2")


def probe(texts: list[str]) -> dict[str, Any]:
    """Share of answers with at least one pirate word, pirate words per answer, mean words."""
    hits = [len(PIRATE_WORDS.findall(text)) for text in texts]
    words = [len(text.split()) for text in texts]
    return {
        "answers": len(texts),
        "with_pirate_words": sum(h > 0 for h in hits) / len(texts),
        "pirate_words_per_answer": sum(hits) / len(texts),
        "mean_words": sum(words) / len(texts),
    }


def on_topic(prompts: list[str], texts: list[str]) -> float:
    """Share of answers the base model finds likelier after their prompt than after a neutral one (the eval's
    relevance instrument, octrain.evaluation.character_shift)."""
    from octrain.core.records import ModelRef
    from octrain.evaluation.answer_likelihood import LikelihoodScorer
    from octrain.evaluation.character_shift import relevance_margins

    scorer = LikelihoodScorer(ModelRef(base=MODEL))
    try:
        margins = relevance_margins(scorer, prompts, texts)
    finally:
        scorer.close()
    return sum(m > 0 for m in margins) / len(margins)


def answers(adapter: str | None, conversations: list[list[dict[str, str]]], new_tokens: int) -> list[str]:
    from octrain.models.builtin import resolve_model_path
    from octrain.samplers.base import SamplingParams
    from octrain.samplers.hf import HFSampler

    sampler = HFSampler(resolve_model_path(MODEL), adapter_path=adapter, batch_size=32, show_progress=False)
    try:
        rows = sampler.chat(conversations, SamplingParams(temperature=0.7, max_new_tokens=new_tokens, seed=0))
    finally:
        sampler.close()
    return [row[0].text for row in rows]


def teacher_forms(prompts: list[str], new_tokens: int) -> dict[str, Any]:
    from octrain.constitution.persona_prompts import teacher_context
    from octrain.core.config import TeacherPrompt
    from octrain.run.pipeline import resolve_constitution_name

    constitution = resolve_constitution_name("pirate")
    results: dict[str, Any] = {}
    for form in ("none", *(f.value for f in TeacherPrompt)):
        context = [] if form == "none" else teacher_context(constitution, "SmolLM", TeacherPrompt(form))
        started = time.perf_counter()
        texts = answers(None, [[*context, {"role": "user", "content": p}] for p in prompts], new_tokens)
        seconds = round(time.perf_counter() - started, 1)
        results[form] = {**probe(texts), "on_topic": on_topic(prompts, texts), "seconds": seconds, "first": texts[0]}
        print(f"teacher form {form:<15} {results[form]}", flush=True)
    return results


def dpo_sweep(prompts: list[str], new_tokens: int, run_root: Path) -> dict[str, Any]:
    overrides = [
        "+recipe=pirate_smollm2",
        "stages=[prompts,pairs,dpo]",
        f"run_root={run_root}",
        f"dpo.learning_rate={','.join(LEARNING_RATES)}",
        f"dpo.epochs={','.join(EPOCHS)}",
    ]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "octrain", "-m", *overrides], cwd=REPO, check=True)
    print(f"sweep trained in {time.perf_counter() - started:.0f}s", flush=True)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    base = answers(None, conversations, new_tokens)
    results: dict[str, Any] = {"base": {**probe(base), "on_topic": on_topic(prompts, base)}}
    for job in sorted((run_root / "pirate_smollm2-sweep").iterdir()):
        adapter = job / "dpo" / "adapter"
        if not adapter.is_dir():
            continue
        done = json.loads((job / "dpo" / "done.json").read_text())
        texts = answers(str(adapter), conversations, new_tokens)
        results[job.name] = {
            **probe(texts),
            "on_topic": on_topic(prompts, texts),
            "dpo_seconds": round(done["seconds"], 1),
            "first": texts[0],
        }
        print(f"{job.name:<45} {results[job.name]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("forms", "dpo", "both"), default="both")
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts each cell answers")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--run-root", type=Path, default=REPO / "runs" / "smollm2-sweep")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "smollm2_sweep.json")
    args = parser.parse_args()
    from octrain.evaluation.heldout import load_eval_prompts

    prompts = load_eval_prompts("builtin")[: args.prompts]
    results: dict[str, Any] = {"model": MODEL, "prompts": len(prompts), "new_tokens": args.new_tokens}
    if args.part in ("forms", "both"):
        results["teacher_forms"] = teacher_forms(prompts, args.new_tokens)
    if args.part in ("dpo", "both"):
        results["dpo"] = dpo_sweep(prompts, args.new_tokens, args.run_root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
