"""The precision a local training runs in, decided from the hardware: bf16 on a GPU that has it, else fp32.

Its own module because two sides need it: the TRL trainers (``TrainingArguments``' ``bf16``, the
student's dtype) and the accelerate launcher (:func:`octrain.trainers.accelerate_configs.launch_command`
passes the same choice as ``--mixed_precision``), and the trainers also import the launcher's module.
"""

from __future__ import annotations

from octrain.core.devices import bf16_supported, gpu_usable


def precision() -> tuple[bool, bool]:
    """(use CUDA, use bf16): bf16 on a GPU that supports it, fp32 on the CPU and older GPUs.

    Decided from NVML (:mod:`octrain.core.devices`), never from a CUDA context: the parent calls this in
    preflight and before ``accelerate launch``, and must not take half a GiB of GPU 0 for the answer.
    """
    use_cuda = gpu_usable()
    return use_cuda, use_cuda and bf16_supported()
