"""Start the recorder of ``cuda_calls`` in every process that has this directory on ``PYTHONPATH``."""

import os

if os.environ.get("OCTRAIN_CUDA_LOG_DIR"):
    import cuda_calls

    cuda_calls.install()
    # One process pretends; the ones it starts (stage workers, engine cores) run on the real CPU.
    card = os.environ.pop("OCTRAIN_PRETEND_GPU", "")
    if card:
        cuda_calls.pretend(card)
