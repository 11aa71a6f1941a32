"""TRL's moving-average teacher (``distill.sdft.teacher_model_kind=ema``), resumed from a checkpoint.

TRL keeps the average of the student's LoRA weights as a second adapter, ``teacher``, on the student
(``PEFTAdapterEMACallback``), so PEFT saves it with every checkpoint (``checkpoint-N/teacher/``) and
the Trainer loads it back on resume. TRL's callback then tried to add the adapter again when
training began, and a resumed run stopped with "Adapter with name 'teacher' already exists"
(transformers 5.24, TRL 1.16). The callback here runs just before TRL's: when the teacher adapter
is already on the model (a resume), it hands TRL's callback that adapter's weights as the running
average, so training goes on with the teacher it had at the checkpoint; on a fresh start it does
nothing and TRL starts the average at the base weights as before.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def _ema_callback(trainer: Any) -> Any | None:
    """TRL's EMA callback among the trainer's callbacks, or None (another teacher kind)."""
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "PEFTAdapterEMACallback":
            return callback
    return None


class ResumedEmaTeacher(TrainerCallback):
    """Adopts a checkpoint's EMA teacher adapter as TRL's running average (see the module docstring)."""

    def __init__(self, ema: Any) -> None:
        self.ema = ema

    @classmethod
    def attach(cls, trainer: Any) -> None:
        """Put the callback just before TRL's EMA callback (callbacks run in the order they were added)."""
        ema = _ema_callback(trainer)
        if ema is None:
            return
        trainer.pop_callback(ema)
        trainer.add_callback(cls(ema))
        trainer.add_callback(ema)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch
        from peft import get_peft_model_state_dict

        model = kwargs.get("model") or self.ema.model
        accelerator = self.ema.accelerator
        model = accelerator.unwrap_model(model) if accelerator is not None else model
        name = self.ema.teacher_adapter_name
        if name not in getattr(model, "peft_config", {}):
            return  # a fresh start: TRL adds the teacher adapter at the base weights
        with torch.no_grad():
            saved = get_peft_model_state_dict(model, adapter_name=name)
            self.ema.shadow_weights = {key: value.detach().clone() for key, value in saved.items()}
        self.ema.teacher_adapter_config = model.peft_config[name]
        # TRL's callback has no public way to take an average over; this flag is what its start-up checks.
        self.ema._initialized = True
        logger.info("dpo (sdft): the EMA teacher resumes from the checkpoint (step %d)", state.global_step)
