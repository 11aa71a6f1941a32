"""How much GPU memory each stage of a run needs, and what to change when a card is too small.

``octrain memory +recipe=NAME [key=value ...] [--card GB ...] [--detail]`` (or a run directory)
prints the report; :func:`memory_report` is the same as a function. The room, by topic:

* :mod:`~octrain.memory.shapes`: model shapes and parameter counts (config.json, or a built-in table);
* :mod:`~octrain.memory.needs`: what a stage needs (:class:`Need`), the cards, and fits / tight / no;
* :mod:`~octrain.memory.engines`: a vLLM engine's (or transformers' generate's) weights, runtime and KV;
* :mod:`~octrain.memory.training`: LoRA DPO and SFT with TRL, with calibrated activation figures;
* :mod:`~octrain.memory.advice`: the overrides that make a stage fit, each checked with the same estimate;
* :mod:`~octrain.memory.planner`: every model each stage loads, judged on each card (:func:`plan`);
* :mod:`~octrain.memory.report`: the Markdown report, from a recipe or a run directory.

Everything here is an estimate to plan with; the smoke runs (``smoke=large``) are the real test.
"""

from __future__ import annotations

from octrain.memory.engines import engine_need
from octrain.memory.lora_training import activation_bytes_per_layer_token
from octrain.memory.needs import CARDS, Need, Verdict, card_gib
from octrain.memory.planner import Row, plan
from octrain.memory.report import config_from_target, describe, load_run_config, markdown_table, memory_report
from octrain.memory.shapes import KNOWN_ARCHITECTURES, Architecture, architecture_from_config, architecture_of
from octrain.memory.training import measure_saved_activations, training_need

__all__ = [
    "CARDS",
    "KNOWN_ARCHITECTURES",
    "Architecture",
    "Need",
    "Row",
    "Verdict",
    "activation_bytes_per_layer_token",
    "architecture_from_config",
    "architecture_of",
    "card_gib",
    "config_from_target",
    "describe",
    "engine_need",
    "load_run_config",
    "markdown_table",
    "measure_saved_activations",
    "memory_report",
    "plan",
    "training_need",
]
