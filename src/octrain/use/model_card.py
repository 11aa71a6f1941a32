"""The Hugging Face model card of a trained character, written from its finished run.

Everything in the card comes from the run directory, never from memory or defaults:

* YAML front matter the Hub reads: ``base_model`` (when the base is a Hub id),
  ``library_name`` (``peft`` for an adapter, ``transformers`` for merged weights), tags
  (``octrain``, ``character-training``, the persona, the constitution's own tags) and
  ``license`` (``--license``, else the base's when its card is on this machine);
* the constitution, its traits numbered as the teacher saw them
  (:func:`octrain.constitution.persona_prompts.teacher_system_prompt`);
* how it was trained: the method, the key settings from the run's ``config.yaml``, the data
  counts from the stage reports and the fingerprints from each stage's ``done.json``;
* the run's ``eval/report.md`` when there is one, its plots copied next to the card and
  their links rewritten to the copies;
* usage snippets for transformers, PEFT and vLLM with the repo id it will be pushed to
  (:mod:`octrain.use.model_card_usage`).

:func:`write_model_card` writes ``README.md`` (and ``plots/``) into an upload folder.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from octrain.core.config import DistillMethod, OctrainConfig
from octrain.core.errors import ConfigError
from octrain.core.layout import ADAPTER_CONFIG_FILE, CARD_FILE, DONE_FILE, PLOTS_DIR, REPORT_FILE, REPORT_MD_FILE
from octrain.stages.dpo import sdft_answer_length
from octrain.use.export import is_hub_id
from octrain.use.model_card_usage import usage_section
from octrain.use.model_choice import ChosenModel

# Markdown images: ![alt](target). The eval report links its own plot and the training plots beside it.
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


@dataclass
class RunFacts:
    """What a finished run says about itself, read once from its directory."""

    run_dir: Path
    config: Any  # OctrainConfig
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> done.json
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> report.json
    eval_report: str | None = None

    @classmethod
    def read(cls, chosen: ChosenModel) -> RunFacts:
        if chosen.run_dir is None:
            raise ConfigError(
                f"{chosen.label} did not come from an octrain run directory: a model card is written from the run "
                "(its config, constitution and reports); pass a registry name or a run directory"
            )
        config = chosen.run_config()
        if config is None:
            raise ConfigError(f"{chosen.run_dir} has no config.yaml: not a run directory")
        facts = cls(run_dir=chosen.run_dir, config=config)
        for stage in ("prompts", "pairs", "dpo", "introspect", "sft", "eval"):
            for name, store in ((DONE_FILE, facts.done), (REPORT_FILE, facts.reports)):
                path = chosen.run_dir / stage / name
                if path.is_file():
                    store[stage] = json.loads(path.read_text(encoding="utf-8"))
        report = chosen.run_dir / "eval" / REPORT_MD_FILE
        if report.is_file():
            facts.eval_report = report.read_text(encoding="utf-8")
        return facts


def base_license(base: str) -> str | None:
    """The license in the base model's card, when that card is on this machine (a local
    directory, or the Hugging Face cache); None otherwise. Never goes to the network."""
    card: Path | None = None
    if Path(base).expanduser().is_dir():
        card = Path(base).expanduser() / CARD_FILE
    elif is_hub_id(base):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base, CARD_FILE)
        card = Path(cached) if isinstance(cached, str) else None
    if card is None or not card.is_file():
        return None
    front = _front_matter(card.read_text(encoding="utf-8"))
    value = front.get("license") if isinstance(front, dict) else None
    return str(value) if value else None


def _front_matter(text: str) -> Any:
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---", 4)
    if end < 0:
        return None
    try:
        return yaml.safe_load(text[4:end])
    except yaml.YAMLError:
        return None


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """A card's front matter (parsed) and its body; for tests and for reading a card back."""
    front = _front_matter(text)
    if not isinstance(front, dict):
        raise ConfigError("the model card has no YAML front matter")
    return front, text[text.find("\n---", 4) + 4 :].lstrip("\n")


def _tag(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _adapter_rank(chosen: ChosenModel) -> int | None:
    if not chosen.ref.adapter:
        return None
    path = Path(chosen.ref.adapter) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        return None
    rank = json.loads(path.read_text(encoding="utf-8")).get("r")
    return rank if isinstance(rank, int) else None


def _stage_of(chosen: ChosenModel) -> str:
    if chosen.checkpoint is not None:
        return chosen.checkpoint.stage
    adapter = Path(chosen.ref.adapter or "")
    return adapter.parent.name if adapter.parent.name in ("dpo", "sft") else "sft"


def front_matter(
    chosen: ChosenModel, facts: RunFacts, *, merged: bool, license: str | None, base_model: str | None
) -> dict[str, Any]:
    """The card's YAML metadata, as a dict (keys in the order the Hub shows them)."""
    constitution = chosen.constitution()
    persona = chosen.persona or (constitution.name if constitution else facts.config.name)
    tags = ["octrain", "character-training", _tag(persona), _stage_one(facts.config)[0]]
    if _stage_of(chosen) == "sft":
        tags.append("sft")
    tags.append("merged" if merged else "lora")
    if constitution is not None:
        tags.extend(_tag(str(tag)) for tag in constitution.meta.get("tags", []) or [])
    meta: dict[str, Any] = {}
    hub_base = base_model or (chosen.ref.base if is_hub_id(chosen.ref.base) else None)
    if hub_base:
        meta["base_model"] = hub_base
        meta["base_model_relation"] = "finetune" if merged else "adapter"
    meta["library_name"] = "transformers" if merged else "peft"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = list(dict.fromkeys(tag for tag in tags if tag))
    found = license or base_license(hub_base or chosen.ref.base)
    if found:
        meta["license"] = found
    return meta


def _stage_one(config: OctrainConfig) -> tuple[str, str]:
    """Stage 1's method as a Hub tag, and as the card's text names it."""
    if config.distill.method is DistillMethod.sdft:
        return "on-policy-distillation", "on-policy distillation (SDFT)"
    return "dpo", "DPO"


def _stage_one_rows(config: OctrainConfig) -> list[tuple[str, Any]]:
    """The settings stage 1 trained with: DPO's, or on-policy distillation's (``distill.sdft``)."""
    if config.distill.method is DistillMethod.sdft:
        sdft = config.distill.sdft
        answer = sdft_answer_length(config)
        return [
            (
                "SDFT teacher",
                "the run's teacher model" if sdft.teacher_weights.value == "teacher" else "the student's base",
            ),
            ("SDFT divergence (mode, alpha)", f"{sdft.distillation_mode.value}, {_number(sdft.distillation_alpha)}"),
            ("SDFT learning rate", sdft.learning_rate),
            ("SDFT epochs", sdft.epochs),
            ("SDFT batch size (answers)", sdft.batch_size),
            ("SDFT answer length (tokens)", answer),
            ("SDFT LoRA rank / alpha", f"{sdft.lora.rank} / {sdft.lora.alpha}"),
        ]
    return [
        ("DPO beta", config.dpo.beta),
        ("DPO NLL / KL weight", f"{_number(config.dpo.nll_weight)} / {_number(config.dpo.kl_weight)}"),
        ("DPO learning rate", config.dpo.learning_rate),
        ("DPO epochs", config.dpo.epochs),
        ("DPO batch size", config.dpo.batch_size),
        ("DPO LoRA rank / alpha", f"{config.dpo.lora.rank} / {config.dpo.lora.alpha}"),
    ]


def _settings_table(facts: RunFacts, chosen: ChosenModel) -> str:
    config = facts.config
    rows = [
        ("base model (student)", config.student.path),
        ("teacher", config.teacher.path),
        ("scale preset", config.scale.name),
        ("seed", config.seed),
        *_stage_one_rows(config),
    ]
    if "sft" in facts.done:
        rows += [
            ("SFT mode", config.sft.mode.value),
            ("SFT learning rate", config.sft.learning_rate),
            ("SFT epochs", config.sft.epochs),
            ("SFT batch size", config.sft.batch_size),
            ("SFT LoRA rank / alpha", f"{config.sft.lora.rank} / {config.sft.lora.alpha}"),
            (
                f"final adapter: {_stage_one(config)[1]} / SFT weight",
                f"{_number(config.sft.dpo_weight)} / {_number(config.sft.sft_weight)}",
            ),
        ]
    rank = _adapter_rank(chosen)
    if rank is not None:
        rows.append(("adapter rank as saved (padded for vLLM)", rank))
    lines = ["| setting | value |", "| --- | --- |"]
    lines += [f"| {name} | {_number(value)} |" for name, value in rows]
    return "\n".join(lines)


def _data_table(facts: RunFacts) -> str:
    rows: list[tuple[str, Any]] = []
    prompts = facts.reports.get("prompts", {})
    if prompts:
        rows.append(("training prompts (asked for / made)", f"{prompts.get('wanted', '-')} / {prompts.get('records')}"))
    pairs = facts.reports.get("pairs", {})
    if pairs:
        rows.append(("preference pairs (kept / prompts)", f"{pairs.get('kept')} / {pairs.get('prompts')}"))
    introspect = facts.reports.get("introspect", {})
    if introspect:
        reflections = introspect.get("reflections", {})
        interactions = introspect.get("interactions", {})
        rows.append(("self-reflections (kept / sampled)", f"{reflections.get('kept')} / {reflections.get('sampled')}"))
        rows.append(
            (
                "self-interaction transcripts (from conversations)",
                f"{interactions.get('transcripts')} (from {interactions.get('conversations')})",
            )
        )
        rows.append(("SFT records", introspect.get("records")))
    for stage, name in (("dpo", _stage_one(facts.config)[1]), ("sft", "SFT")):
        summary = facts.done.get(stage, {}).get("summary", {})
        if summary:
            text = f"{summary.get('steps')} steps, final loss {_number(summary.get('final_loss'))}"
            if summary.get("reward_accuracy") is not None:
                text += f", reward accuracy {_number(summary['reward_accuracy'])}"
            rows.append((f"{name} training", text))
    lines = ["| data | count |", "| --- | --- |"]
    lines += [f"| {name} | {_number(value)} |" for name, value in rows]
    return "\n".join(lines)


def _fingerprints(facts: RunFacts) -> str:
    lines = [
        f"- `{stage}`: `{facts.done[stage]['fingerprint']}`"
        for stage in ("prompts", "pairs", "dpo", "introspect", "sft", "eval")
        if "fingerprint" in facts.done.get(stage, {})
    ]
    return "\n".join(lines)


def _eval_section(facts: RunFacts, plot_copies: dict[str, str]) -> str:
    """The run's eval report, its headings one level down and its plot links rewritten."""
    if facts.eval_report is None:
        return (
            "This run has no evaluation yet (no `eval/report.md`): run its `eval` stage "
            f"(`octrain +recipe=... stages=[eval] name={facts.config.name}`) and push again."
        )
    body = facts.eval_report
    lines = body.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]  # the report's own title; the card's section heading replaces it
    body = "\n".join(("#" + line) if line.startswith("#") else line for line in lines).strip()

    def relink(match: re.Match[str]) -> str:
        target = plot_copies.get(match.group(2))
        return f"![{match.group(1)}]({target})" if target else f"*(plot {match.group(1)} not available)*"

    return _IMAGE_LINK.sub(relink, body)


def plots_to_copy(facts: RunFacts) -> dict[str, Path]:
    """The plots the eval report links to, by link target: ``{target: file on disk}`` (existing files only)."""
    if facts.eval_report is None:
        return {}
    found: dict[str, Path] = {}
    for _, target in _IMAGE_LINK.findall(facts.eval_report):
        if "://" in target:
            continue
        source = (facts.run_dir / "eval" / target).resolve()
        if source.is_file() and source.is_relative_to(facts.run_dir.resolve()):
            found[target] = source
    return found


def _plot_name(source: Path, run_dir: Path) -> str:
    """A flat, unique name for a copied plot: its path in the run, slashes as dashes."""
    return "-".join(source.relative_to(run_dir.resolve()).parts)


def render_model_card(
    chosen: ChosenModel,
    *,
    repo_id: str,
    merged: bool,
    license: str | None = None,
    base_model: str | None = None,
    facts: RunFacts | None = None,
) -> tuple[str, dict[str, Path]]:
    """The card's text, and the plot files it links to (``{name in plots/: source file}``).

    Args:
        chosen: the model, from :func:`octrain.use.model_choice.choose_model`; it must come from a run.
        repo_id: the Hub repo it will be pushed to (``user/name``), used in the snippets.
        merged: the folder holds merged weights (else the adapter).
        license: the license to declare; None: the base's, when its card is on this machine.
        base_model: the base's Hub id when the run trained on a local copy of it.
    """
    from octrain.constitution.persona_prompts import teacher_context

    facts = facts or RunFacts.read(chosen)
    constitution = chosen.constitution()
    if constitution is None:
        raise ConfigError(f"{facts.run_dir}: the run's constitution cannot be found")
    meta = front_matter(chosen, facts, merged=merged, license=license, base_model=base_model)
    hub_base = meta.get("base_model")
    rank = _adapter_rank(chosen)
    sources = plots_to_copy(facts)
    copies = {target: f"{PLOTS_DIR}/{_plot_name(path, facts.run_dir)}" for target, path in sources.items()}
    files = {copies[target].split("/", 1)[1]: path for target, path in sources.items()}
    # The teacher's prompt names the teacher (pairs stage); its answers are then renamed to the student.
    assistant = facts.config.teacher.assistant_name
    stage = _stage_of(chosen)
    first = (
        "on-policy distillation: the model's own answers graded token by token by a teacher that reads the "
        "character (SDFT)"
        if facts.config.distill.method is DistillMethod.sdft
        else "DPO distillation from a teacher that answers in character"
    )
    method = (
        f"{first} (stage 1), then supervised fine-tuning on the model's own self-reflections and "
        "self-interactions (stage 2, introspection); the final adapter is the exact weighted sum of the two "
        "LoRA updates"
        if stage == "sft"
        else f"{first} (stage 1 only, no introspection SFT)"
    )
    weights = "full weights, the adapter merged in" if merged else "a LoRA adapter (PEFT format)"
    form = facts.config.pairs.teacher_prompt
    context = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in teacher_context(constitution, assistant, form))
    how = {
        "paper": "its system prompt",
        "examples": "the constitution's example exchanges as earlier turns",
        "paper_examples": "its system prompt and the example exchanges as earlier turns",
    }[form.value]
    description = f"\n{constitution.description}\n" if constitution.description else ""
    title = repo_id.split("/")[-1]
    traits = "\n".join(f"{index}. {trait.text}" for index, trait in enumerate(constitution.traits, start=1))
    body = f"""# {title}

**{constitution.name}**, a character trained into `{facts.config.student.path}` with
octrain's character training: {method}. This repository holds {weights}.
{description}
## Constitution

The {len(constitution.traits)} traits, in the order the teacher saw them numbered:

{traits}

<details>
<summary>What the teacher read before each prompt (stage 1, pairs.teacher_prompt={form.value})</summary>

```text
{context}
```

</details>

## Training

Run `{facts.config.name}`, {stage} checkpoint. Chosen answers: the teacher (`{facts.config.teacher.path}`)
with the constitution in its context ({how}); rejected answers: the student without it.

{_settings_table(facts, chosen)}

### Data

{_data_table(facts)}

### Fingerprints

Each stage's fingerprint (from its `done.json`) hashes its settings and inputs: two runs with the same
fingerprints trained on the same data with the same settings.

{_fingerprints(facts)}

## Evaluation

{_eval_section(facts, copies)}

## Usage
{usage_section(chosen.ref.base, repo_id, merged=merged, hub_base=hub_base, rank=rank)}"""
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    return f"---\n{front}\n---\n\n{body.rstrip()}\n", files


def write_model_card(
    chosen: ChosenModel,
    folder: str | Path,
    *,
    repo_id: str,
    merged: bool,
    license: str | None = None,
    base_model: str | None = None,
) -> Path:
    """Write ``README.md`` and the plots it links to (``plots/``) into ``folder``; returns the card's path."""
    folder = Path(folder)
    text, plots = render_model_card(chosen, repo_id=repo_id, merged=merged, license=license, base_model=base_model)
    if plots:
        (folder / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
        for name, source in plots.items():
            shutil.copy2(source, folder / PLOTS_DIR / name)
    card = folder / CARD_FILE
    card.write_text(text, encoding="utf-8")
    return card
