"""``vllm.platforms``: the platform vLLM was built for (its CUDA check goes through NVML)."""

from __future__ import annotations


class _Platform:
    device_type = "cuda"

    def is_cpu(self) -> bool:
        return False


current_platform = _Platform()
