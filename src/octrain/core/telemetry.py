"""Turn off the usage telemetry of the libraries octrain drives.

TRL, the Hugging Face Hub client and vLLM each report usage by default. A local-first
tool should not phone home unasked, so importing :mod:`octrain` sets their opt-out
variables. ``setdefault`` keeps any value the user exported: setting
``HF_HUB_DISABLE_TELEMETRY=0`` before starting octrain opts back in.

This must run before ``huggingface_hub`` is imported, because the Hub client reads the
variables once, at import time.
"""

from __future__ import annotations

import os

OPT_OUT_VARIABLES: dict[str, str] = {
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub, and TRL's trainer ping that goes through it
    "DO_NOT_TRACK": "1",  # the cross-tool convention; the Hub client and vLLM honour it
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",  # trackio's UI, when report_to=trackio
}


def disable_telemetry() -> None:
    """Set each opt-out variable unless the user has already chosen a value."""
    for name, value in OPT_OUT_VARIABLES.items():
        os.environ.setdefault(name, value)
