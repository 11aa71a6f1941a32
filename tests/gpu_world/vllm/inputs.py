"""``vllm.inputs``: a prompt given as token ids is a dict with ``prompt_token_ids``."""

from __future__ import annotations

from typing import Any


# vLLM 0.31 declares it as a TypedDict: calling it builds the dict.
def TokensPrompt(prompt_token_ids: list[int], **extra: Any) -> dict[str, Any]:
    return {"prompt_token_ids": prompt_token_ids, **extra}
