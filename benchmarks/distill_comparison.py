"""Stage 1 by DPO against on-policy self-distillation (SDFT), on the real CPU model, judged the same way.

    python benchmarks/distill_comparison.py [--out runs/distill_comparison]
        [--variants dpo,sdft_7e-4,...] [--no-capability]

Needs the real model (``make model``). Every variant is a whole run of ``+recipe=pirate_smollm2``
(stage 1, introspection, SFT, the ``shift`` evaluation) in its own folder under ``--out``. The first
variant (DPO, the recipe as shipped) makes the prompts and pairs; every other one starts from a copy
of its ``prompts/`` and ``pairs/``: so each method trains on the same prompts, the evaluation asks the
same 40 held-out prompts with the same seeds, and its classifier is trained on the same pairs. Only
``distill.*`` / ``dpo.*`` differ between variants. After the run, ``octrain eval capability`` scores
the final model against the base on the shipped four-way questions (``octrain_basics``, 5-shot).

What is compared, per variant (from the runs' own files, nothing re-measured here):

* compute: stage 1's wall time (``dpo/done.json``), optimizer steps, tokens trained (TRL's
  ``num_tokens``) and tokens sampled for stage 1 (DPO: the pairs' teacher and student answers;
  SDFT: the student's own answers during training, which it samples instead of reading the pairs');
* in character (the classifier, Wilson 95% interval) for the stage-1 model and the final one, with the
  paired difference from the base;
* toward the teacher: the log-prob per token of the teacher's in-character answer minus the base
  model's plain one, and its paired change from the base (bootstrap interval);
* on topic (the relevance instrument) for the final model;
* the capability change, final minus base, with its paired interval.

Figures land in ``--out/comparison.json`` and a Markdown table on stdout, the one in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECIPE = "pirate_smollm2"
# SDFT at the demo's DPO budget (batch 8, one epoch, LoRA r16), at DPO's learning rate and above it:
# DPO's rate was itself chosen by a sweep (BENCHMARKS.md), so SDFT gets one over the same knob.
SDFT_BUDGET = [
    "distill.method=sdft",
    "distill.sdft.batch_size=8",
    "distill.sdft.epochs=1",
    "distill.sdft.lora.rank=16",
    "distill.sdft.lora.alpha=32",
]
VARIANTS: dict[str, list[str]] = {
    "dpo": [],  # the recipe as shipped: lr 7e-4, batch 8, one epoch, r16
    "sdft_7e-4": [*SDFT_BUDGET, "distill.sdft.learning_rate=7e-4"],
    "sdft_2e-3": [*SDFT_BUDGET, "distill.sdft.learning_rate=2e-3"],
    "sdft_5e-3": [*SDFT_BUDGET, "distill.sdft.learning_rate=5e-3"],
}
REUSED_STAGES = ("prompts", "pairs")
FIRST = "dpo"


def prepare(source: Path, run_dir: Path) -> None:
    """A new run folder holding the source run's finished prompts and pairs (and nothing else)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if source == run_dir:
        return
    for stage in REUSED_STAGES:
        if not (run_dir / stage).exists():
            shutil.copytree(source / stage, run_dir / stage)


def run_variant(name: str, overrides: list[str], out: Path, source: Path) -> float:
    """Run the recipe for one variant (resuming whatever it finished before); its wall time."""
    prepare(source, out / name)
    command = [sys.executable, "-m", "octrain", f"+recipe={RECIPE}", f"run_root={out}", f"name={name}", *overrides]
    print("$", " ".join(command), flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, check=True)
    return time.monotonic() - started


def capability(name: str, out: Path) -> dict[str, Any]:
    """``octrain eval capability`` on the variant's final model, base beside it (cached in the folder)."""
    target = out / name / "capability"
    if not (target / "capability.json").is_file():
        command = [sys.executable, "-m", "octrain", "eval", "capability", str(out / name)]
        command += ["--tasks", "octrain_basics:5", "--out", str(target)]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=REPO, check=True)
    return json.loads((target / "capability.json").read_text(encoding="utf-8"))


def last_metrics(path: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    steps = [row for row in rows if "loss" in row and "step" in row]
    return {"steps": len(steps), "last": steps[-1] if steps else {}, "rows": steps}


def sampled_tokens(run_dir: Path, method: str, metrics: dict[str, Any]) -> int:
    """Tokens sampled to train stage 1: the pairs' answers for DPO, the student's own answers for SDFT."""
    if method == "dpo":
        report = json.loads((run_dir / "pairs" / "report.json").read_text(encoding="utf-8"))
        return int(report["teacher_tokens"] + report["student_tokens"])
    total = 0.0
    for row in metrics["rows"]:
        # TRL logs the mean answer length of the step's batch; the batch size is the recipe's 8.
        length = row.get("completions/mean_length")
        if length is not None:
            total += float(length) * 8
    return round(total)


def collect(name: str, overrides: list[str], out: Path, wall: float | None, cap: dict[str, Any] | None) -> dict:
    run_dir = out / name
    method = "sdft" if "distill.method=sdft" in overrides else "dpo"
    done = json.loads((run_dir / "dpo" / "done.json").read_text(encoding="utf-8"))
    metrics = last_metrics(run_dir / "dpo" / "metrics.jsonl")
    results = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    in_char = results["in_character"]
    toward = results["toward_teacher"]
    row: dict[str, Any] = {
        "variant": name,
        "overrides": overrides,
        "stage1_seconds": done["seconds"],
        "run_seconds": wall,
        "stage1_steps": metrics["steps"],
        "tokens_trained": metrics["last"].get("num_tokens"),
        "tokens_sampled": sampled_tokens(run_dir, method, metrics),
        "classifier_accuracy": in_char["instrument"]["heldout_accuracy"],
        "classifier_passes": in_char["instrument"]["passes_check"] and in_char["instrument"]["controls_pass"],
        "in_character": in_char["rates"],
        "in_character_vs_base": in_char["vs_base"],
        "toward_teacher_margin": toward["margin"],
        "toward_teacher_vs_base": toward["vs_base"],
        "prefers_teacher": toward["prefers_teacher"],
        "on_topic": results["answers_question"]["rates"],
    }
    if cap is not None:
        row["capability"] = cap
    return row


def pct(rate: dict[str, Any]) -> str:
    low, high = rate["ci"]
    return f"{rate['rate'] * 100:.0f}% [{low * 100:.0f}, {high * 100:.0f}]"


def points(change: dict[str, Any]) -> str:
    low, high = change["ci"]
    return f"{change['mean'] * 100:+.0f} [{low * 100:+.0f}, {high * 100:+.0f}]"


def nats(change: dict[str, Any]) -> str:
    low, high = change["ci"]
    return f"{change['mean']:+.2f} [{low:+.2f}, {high:+.2f}]"


def _count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def capability_cell(cap: dict[str, Any] | None) -> str:
    if not cap:
        return "not run"
    for task in cap.get("tasks", []):
        change = task.get("change")
        if change:
            return f"{change['mean']:+.3f} [{change['ci'][0]:+.3f}, {change['ci'][1]:+.3f}]"
    return "n/a"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| variant | stage 1 time | steps | tokens trained / sampled | in character, stage 1 | in character, final "
        "| final minus base (pts) | toward teacher, stage 1 (nats/token) | on topic, final | capability change |"
    )
    lines = [head, "|" + " --- |" * 10]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['stage1_seconds']:.0f} s | {row['stage1_steps']} "
            f"| {_count(row['tokens_trained'])} / {row['tokens_sampled']} "
            f"| {pct(row['in_character']['dpo-only'])} | {pct(row['in_character']['final'])} "
            f"| {points(row['in_character_vs_base']['final'])} "
            f"| {nats(row['toward_teacher_vs_base']['dpo-only'])} "
            f"| {pct(row['on_topic']['final'])} | {capability_cell(row.get('capability'))} |"
        )
    base = rows[0]
    lines.append(
        f"\nBase model: in character {pct(base['in_character']['base'])}, on topic {pct(base['on_topic']['base'])}; "
        f"teacher in character {pct(base['in_character']['teacher'])}."
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "distill_comparison")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-capability", action="store_true")
    args = parser.parse_args()
    names = [name for name in args.variants.split(",") if name]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    rows = []
    source = args.out / FIRST  # makes the prompts and pairs the others reuse
    for name in [FIRST, *(name for name in names if name != FIRST)]:
        wall = run_variant(name, VARIANTS[name], args.out, source)
        cap = None if args.no_capability else capability(name, args.out)
        rows.append(collect(name, VARIANTS[name], args.out, wall, cap))
        (args.out / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
