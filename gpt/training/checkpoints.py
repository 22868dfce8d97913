"""Checkpoints and the result of a run: ``best.ckpt`` and ``last.ckpt`` (``Checkpoints``), written whole
(``AtomicCheckpointIO``), a validation and a checkpoint at the last step (``FinalValidation``), and ``result.json``
(``RunResult``)."""

import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gpt import RunStopped, UserError
from gpt.metrics import METRICS, MODES, declarations, metric_named, remove_result, write_result
from gpt.training.checkpoint import save_checkpoint_file


def monitor_mode(monitor: str) -> str:
    """The declared direction of ``monitor``; a UserError for a metric nobody declared."""
    metric = metric_named(monitor)
    if metric is None:
        raise UserError(f"callbacks.checkpoints.monitor={monitor} is not a declared metric ({', '.join(METRICS)}); "
                        "declare it beside the code that logs it (gpt.metrics.declare), or give "
                        "callbacks.checkpoints.mode=min|max")
    return metric.mode


def validates_now(trainer) -> bool:
    """Whether a validation follows the optimizer step just done: every ``trainer.val_check_interval`` micro-batches
    (train.py sets it from ``trainer.val_every_n_steps``) and at the last step (``FinalValidation``)."""
    every = trainer.val_check_interval // trainer.accumulate_grad_batches
    return trainer.global_step % every == 0 or trainer.global_step >= trainer.max_steps


class Checkpoints(Checkpoint):
    """``best.ckpt`` whenever ``monitor`` improves (``val/loss`` by default; which way is better is the metric's
    declared direction, ``gpt.metrics``, unless ``mode`` says it), and ``last.ckpt`` to resume from: at every
    validation and every ``every_n_train_steps`` optimizer steps. When the last is also the best, ``last.ckpt`` is a link to
    ``best.ckpt``, so that one step is stored once. A fast dev run (``debug=fdr``) writes none.

    The periodic checkpoint of a step that validates is written after the validation: a run killed while
    validating resumes from an earlier checkpoint and validates that step again.

    Not Lightning's ``ModelCheckpoint(save_top_k=1, save_last="link")``: after a validation that does not improve,
    it leaves ``last.ckpt`` linked to the older best checkpoint instead of saving the current step (tried: with the
    best at step 4 and worse validations at 6 and 8, last.ckpt still held step 4), so a resume would go back."""

    def __init__(self, dirpath: str, monitor: str = "val/loss", mode: str | None = None,
                 every_n_train_steps: int | None = 500):
        if mode not in (None, *MODES):
            raise UserError(f"callbacks.checkpoints.mode={mode!r}: min (a loss) or max (an accuracy)")
        self.dirpath, self.monitor, self.given_mode = Path(dirpath), monitor, mode
        self.every_n_train_steps = every_n_train_steps
        self.best_score, self.best_step, self.saved_step = None, None, None
        self.best_model_path, self.last_model_path = "", ""

    @property
    def mode(self) -> str:
        """``min`` or ``max``: as given, or the monitor's declared direction."""
        return self.given_mode or monitor_mode(self.monitor)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.mode  # an undeclared monitor without a mode is refused before training

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if (self.every_n_train_steps and step % self.every_n_train_steps == 0 and step != self.saved_step
                and not trainer.fast_dev_run and not validates_now(trainer)):
            self.save_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        score = trainer.callback_metrics.get(self.monitor)
        improved = self.improves(score)
        if improved:
            self.best_score, self.best_step = float(score), trainer.global_step
            self.best_model_path = str(self.dirpath / "best.ckpt")
            trainer.save_checkpoint(self.best_model_path)
        if improved or self.saved_step != trainer.global_step:
            self.save_last(trainer, link_to_best=improved)

    def improves(self, score: torch.Tensor | None) -> bool:
        """Whether ``score`` of the monitor beats the best so far."""
        if score is None or math.isnan(float(score)):
            return False
        if self.best_score is None:
            return True
        return float(score) < self.best_score if self.mode == "min" else float(score) > self.best_score

    def save_last(self, trainer, link_to_best: bool = False) -> None:
        self.last_model_path = str(self.dirpath / "last.ckpt")
        last = Path(self.last_model_path)
        if trainer.is_global_zero and (link_to_best or last.is_symlink()):
            last.unlink(missing_ok=True)  # a link is replaced, never written through (into best.ckpt)
            if link_to_best:
                last.symlink_to("best.ckpt")
        trainer.strategy.barrier()
        if not link_to_best:
            trainer.save_checkpoint(self.last_model_path)
        self.saved_step = trainer.global_step
        for logger in trainer.loggers:  # the logs are never behind a checkpoint that a resume starts from
            logger.save()

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_step": self.best_step, "best_model_path": self.best_model_path}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score, self.best_step = state_dict["best_score"], state_dict["best_step"]
        self.best_model_path = state_dict["best_model_path"]
        self.last_model_path = str(self.dirpath / "last.ckpt")


def checkpoints_of(trainer) -> Checkpoints | None:
    return next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, Checkpoints)), None)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint through a temporary file beside it. Lightning's own ``TorchCheckpointIO`` moves a
    temporary file from the system's temp directory instead, which across file systems is a copy that a kill can
    cut short, and it holds the whole checkpoint in memory first."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_checkpoint_file(checkpoint, path)


class FinalValidation(L.Callback):
    """Validates (and so checkpoints) at the last step too, whatever ``trainer.max_steps`` and
    ``trainer.val_check_interval`` are: asking Lightning to stop is what makes it validate there."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class RunResult(L.Callback):
    """When fitting ends, writes the run's result to ``<output_dir>/result.json``: the declared metrics of the best
    checkpoint's step by their keys (``val_loss``; ``exact_match`` and ``digit_acc`` for checkable answers,
    ``mlm_acc`` for a masked LM), the ``monitor`` of the checkpoints with its ``mode``, ``best`` value, ``best_step``
    and ``best_checkpoint``, the ``steps`` trained, the ``parameters``, the ``wall_s`` seconds and the ``metrics``'
    declarations; W&B gets them in its summary. A run stopped by
    a signal writes what it has, with ``stopped`` naming the signal. An older result is removed when fitting starts.

    Rank 0 of the processes that trained writes it, so the result reaches the caller even from the workers of
    ``ddp_spawn``."""

    def __init__(self, output_dir: str | Path):
        self.output_dir, self.started, self.at_best = output_dir, time.perf_counter(), {}

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()
        if trainer.is_global_zero and not trainer.fast_dev_run:
            remove_result(self.output_dir)

    def on_validation_end(self, trainer, pl_module) -> None:
        """Keep the metrics of a validation that the checkpoints are about to keep as the best (Lightning runs
        the checkpoint callbacks after this one)."""
        checkpoints = checkpoints_of(trainer)
        if trainer.sanity_checking or checkpoints is None:
            return
        if checkpoints.improves(trainer.callback_metrics.get(checkpoints.monitor)):
            self.at_best = {metric.key: float(trainer.callback_metrics[name]) for name, metric in METRICS.items()
                            if name in trainer.callback_metrics}

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, RunStopped):
            self.write(trainer, pl_module, stopped=exception.signal)

    def write(self, trainer, pl_module, **extra) -> None:
        checkpoints = checkpoints_of(trainer)
        if not trainer.is_global_zero or checkpoints is None or checkpoints.best_step is None:
            return
        monitor = checkpoints.monitor
        monitored = METRICS[monitor].key if monitor in METRICS else monitor
        logged = [name for name, metric in METRICS.items() if metric.key in self.at_best] + [monitor]
        result = {**self.at_best, monitored: checkpoints.best_score, "monitor": monitor, "mode": checkpoints.mode,
                  "best": checkpoints.best_score, "best_step": checkpoints.best_step, "steps": trainer.global_step,
                  "parameters": pl_module.model.count_parameters(),
                  "wall_s": round(time.perf_counter() - self.started, 1),
                  "best_checkpoint": checkpoints.best_model_path, "metrics": declarations(logged), **extra}
        write_result(self.output_dir, result)
        at_best = {f"best_{metric.key}": result[metric.key] for metric in METRICS.values() if metric.key in result}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # the runs table of the project page, and the run's end, show these
                logger.experiment.summary.update(at_best | {key: result[key] for key in (
                    "parameters", "best_step", "steps", "wall_s", "stopped") if key in result})

    def state_dict(self) -> dict:
        return {"at_best": self.at_best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.at_best = state_dict.get("at_best", {})
