"""How a run stops: on a signal (``StopOnSignal``: the step saved, then ``RunStopped``), and on a validation loss
that is NaN or infinite (``FailOnDivergence``)."""

import os
import signal
from contextlib import contextmanager

import lightning as L

from gpt import RunStopped, TrainingDiverged
from gpt.signals import STOP_SIGNALS
from gpt.training.checkpoints import checkpoints_of, validates_now
from gpt.training.monitoring import diverged


class FailOnDivergence(L.Callback):
    """Ends a run whose validation loss is NaN or infinite with ``TrainingDiverged``, instead of training on.

    In a sweep the job is then recorded as failed and the next one starts."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and diverged(trainer):
            raise TrainingDiverged(f"val/loss is {trainer.callback_metrics['val/loss'].item()} at step "
                                   f"{trainer.global_step}: training diverged; lower optim.lr or raise "
                                   "scheduler.warmup_steps")


class StopOnSignal(L.Callback):
    """A stop is a stop: SIGTERM (what SLURM and Kubernetes send before they kill), SIGUSR1 (SLURM's warning, unless
    Lightning handles it to requeue the job) and Ctrl-C end the run at the next step boundary: ``last.ckpt`` is
    saved at that step, the logs and ``result.json`` are written, and ``RunStopped`` carries the signal to
    train.py, which says how to resume and exits with 128 + the signal's number. A second Ctrl-C stops at once,
    without saving (unless the step is saved already); signals that come while the stop saves and ends are
    ignored. A signal before training starts (while data is prepared) stops at once: nothing is lost.

    Under DDP every rank stops at the same step: the ranks agree every ``trainer.log_every_n_steps`` steps."""

    SIGNALS = STOP_SIGNALS

    def __init__(self):
        self.received: signal.Signals | None = None
        self.trainer, self.training, self.stopping, self.pid = None, False, False, os.getpid()
        self.previous: dict[signal.Signals, object] = {}

    @contextmanager
    def installed(self):
        """Handle the signals while the block runs (from the main thread), then restore the handlers before."""
        self.previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}
        self.take_signals(self.SIGNALS)
        try:
            yield self
        finally:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)

    def take_signals(self, signals) -> None:
        for signum in signals:
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:  # a forked child, signalled before default_signals_in_child ran: end it
            os._exit(128 + signum)
        signum = signal.Signals(signum)
        if self.stopping:  # the stop is under way, its checkpoint saved: let it end
            return
        if self.trainer is None:  # while the data is prepared: nothing to save
            raise RunStopped(signum.name, saved=False)
        if not self.training or (signum == signal.SIGINT and self.received == signal.SIGINT):
            checkpoints = checkpoints_of(self.trainer)
            step = self.trainer.global_step
            raise RunStopped(signum.name, saved=checkpoints is not None and checkpoints.saved_step == step, step=step)
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning put its own SIGTERM handler in place after this callback's; SIGUSR1 stays Lightning's when it
        # handles it (SLURM's auto-requeue)
        lightning_requeues = signal.getsignal(signal.SIGUSR1) not in (self.handle, self.previous[signal.SIGUSR1])
        self.take_signals(s for s in self.SIGNALS if not (s == signal.SIGUSR1 and lightning_requeues))
        self.trainer, self.training = trainer, True

    def on_train_end(self, trainer, pl_module) -> None:
        self.training = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """After an optimizer step; a step that validates stops after its validation and its checkpoint."""
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 and not validates_now(trainer):
            self.stop_if_requested(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.stop_if_requested(trainer, validated=pl_module)

    def stop_if_requested(self, trainer, validated: L.LightningModule | None = None) -> None:
        if not self.requested(trainer):
            return
        checkpoints = checkpoints_of(trainer)
        saved = checkpoints is not None and not trainer.fast_dev_run
        if saved and validated:  # Lightning runs checkpoint callbacks after all others: save this validation's now
            checkpoints.on_validation_end(trainer, validated)
        if saved and checkpoints.saved_step != trainer.global_step:
            checkpoints.save_last(trainer)
        self.stopping = True
        raise RunStopped(self.received.name if self.received else "another process", saved=saved,
                         step=trainer.global_step)

    def requested(self, trainer) -> bool:
        if trainer.world_size == 1:
            return self.received is not None
        if trainer.global_step % trainer.log_every_n_steps:
            return False
        return trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)


