"""Faults injected into a real train.py process through a Hydra override (``+callbacks.fault._target_=...``), with
``tests/helpers`` on PYTHONPATH: the process is killed for real, at a moment a test cannot hit from outside."""

import os
import signal

import lightning as L


class KillWhileValidating(L.Callback):
    """SIGKILL the process once the validation of optimizer step ``step`` has started."""

    def __init__(self, step: int):
        self.step = step

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)
