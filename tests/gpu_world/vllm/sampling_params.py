"""``vllm.sampling_params``: the request settings octrain sends."""

from __future__ import annotations

import enum
from typing import Any


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingParams:
    def __init__(self, n: int = 1, max_tokens: int | None = 16, seed: int | None = None, **options: Any) -> None:
        self.n, self.max_tokens, self.seed = n, max_tokens, seed
        self.options = options
        self.output_kind = RequestOutputKind.CUMULATIVE
