"""The accelerate config that the training stages launch with when ``trainer.num_processes`` is above 1.

Preflight checks it before any model loads, and the runner that launches a training stage
(:class:`octrain.run.workers.AccelerateRunner`) checks it again and logs its notes, so both read
the same file with the same settings from here.
"""

from __future__ import annotations

from octrain.core.config import TrainerConfig
from octrain.trainers.accelerate_configs import AccelerateSetup, check_accelerate_config, find_accelerate_config
from octrain.trainers.trl_common import gradient_checkpointing

# trainer.num_processes without trainer.accelerate_config: plain data parallelism, the setup that
# needs nothing beyond the GPUs.
DEFAULT_ACCELERATE_CONFIG = "ddp"


def checked_accelerate_setup(trainer: TrainerConfig) -> AccelerateSetup:
    """The config file ``trainer.accelerate_config`` names (else ``ddp``), checked for this trainer.

    Raises:
        ConfigError: the file is missing, or does not fit ``trainer.num_processes`` and the TRL options.
    """
    return check_accelerate_config(
        find_accelerate_config(trainer.accelerate_config or DEFAULT_ACCELERATE_CONFIG),
        trainer.num_processes,
        gradient_checkpointing=gradient_checkpointing(trainer.trl)[0],
        load_in_4bit=trainer.trl.load_in_4bit,
    )
