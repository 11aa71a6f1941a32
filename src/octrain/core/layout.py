"""The layout of a run directory: every file and folder name octrain writes, in one place.

A run directory holds the run's resolved config, its log and summary, and one folder per stage
(``prompts/``, ``pairs/``, ``dpo/``, ``introspect/``, ``sft/``, ``eval/``), each marked started and
done. Stages, front ends and the registry find each other's files by these names and no other; a
stage's own working files (chunks, rounds, checkpoints) are named here too, so that what a reader
finds in docs/stages-and-outputs.md is all there is.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from octrain.core.config import OctrainConfig
from octrain.core.files import write_text_atomic

# The run directory
CONFIG_FILE = "config.yaml"  # the resolved config: what the run did, and what resuming reads
LOG_FILE = "octrain.log"
RUN_SUMMARY_FILE = "summary.txt"
LOCK_FILE = ".lock"  # one process per run directory (octrain.run.lock)
WORKER_RESULT_FILE = ".worker-result.json"  # a stage worker's outcome, read by its parent
RANK_SIGNAL_DIR = ".ranks"  # launched ranks wait here for rank 0's stages
SMOKE_DIR = "smoke"  # RUN_DIR/smoke/<kind>: two levels down, so no other run's reuse search finds them
STUDIO_JOB_FILE = "studio-job.json"
STUDIO_CONSOLE_FILE = "studio-console.log"

# Every stage directory
STARTED_FILE = "started.json"
DONE_FILE = "done.json"  # written last: a stage without it is unfinished, whatever else is there
REPORT_FILE = "report.json"  # the data stages' counts, filters and shortfalls

# Data stages
PROMPTS_FILE = "prompts.jsonl"
ROUNDS_DIR = "rounds"  # each prompt-expansion round's replies, committed as it ends (what a rerun resumes from)
PAIRS_FILE = "pairs.jsonl"
SFT_FILE = "sft.jsonl"  # introspect's transcripts

# Training stages
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"
MODEL_FILE = "model.json"  # how to load the trained model: base, adapters, backend
TRAIN_SUMMARY_FILE = "train_summary.json"
MERGED_DIR = "merged"
FOLDED_BASE_DIR = "folded_base"  # the student with earlier adapters folded in, for sequential training
REFERENCE_LOGPROBS_FILE = "reference_logprobs.jsonl"  # Tinker DPO: the reference model's scores, once
TINKER_PROGRESS_FILE = "tinker_progress.json"
DOWNLOADED_ADAPTER_DIR = "downloaded_adapter"  # a Tinker checkpoint as a PEFT adapter
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's names, inside an adapter folder
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"

# The eval stage
RESULTS_FILE = "results.json"
REPORT_MD_FILE = "report.md"
ANSWERS_FILE = "answers.jsonl"
MATCH_FILES = {"base": "matches.jsonl", "dpo-only": "matches_vs_dpo.jsonl"}
CHUNKS_DIR = "chunks"  # the committed answers and judgements, one folder per list of work
INPUTS_FILE = "inputs.json"
CLASSIFIER_DIR = "classifier"
REVEALED_FILE = "revealed_preferences.json"
TRIALS_FILE = "trials.jsonl"

# The run root
REGISTRY_FILE = "registry.sqlite"

# What octrain writes for a user outside runs (exports, deployments)
CARD_FILE = "README.md"
PLOTS_DIR = "plots"
MODAL_APP_FILE = "modal_app.py"
DEPLOYMENT_FILE = "deployment.json"


def save_config(config: OctrainConfig, path: Path) -> None:
    """Write the resolved config a run directory keeps (its ``config.yaml``)."""
    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.structured(config)))


def load_config(path: str | Path) -> OctrainConfig:
    """Reload a resolved ``config.yaml`` (from a run directory) into the typed config."""
    merged = OmegaConf.merge(OmegaConf.structured(OctrainConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
