"""Lightning callbacks and the checkpoint plugin: training metrics, text samples, divergence and checkpoints (named
in conf/callbacks), and what train.py adds itself: the progress bar, the final validation, stopping on a signal and
the run's result."""

import logging
import math
import os
import signal
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from gpt import IGNORE_INDEX, RunStopped, TrainingDiverged, UserError
from gpt.checkpoint import save_checkpoint_file
from gpt.generate import fill_masks
from gpt.result import METRICS, remove_result, write_result

log = logging.getLogger(__name__)

# Dense bf16 peak of each GPU in TFLOP/s, matched against torch.cuda.get_device_name(); first match wins. Not
# Lightning's get_available_flops: it finds no entry for "NVIDIA H200" (a warning, then None), and its H200 and
# H100 NVL figures are the sparse ones, twice the dense peak that MFU is measured against.
PEAK_TFLOPS = [("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("GH200", 989),
               ("B200", 2250), ("A100", 312), ("A10G", 70), ("A10", 125), ("L40S", 362), ("L4", 121),
               ("4090", 165), ("3090", 71), ("V100", 125), ("T4", 65)]


def gpu_peak_flops(device_name: str) -> float | None:
    return next((tflops * 1e12 for name, tflops in PEAK_TFLOPS if name in device_name), None)


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    return batch["input_ids"].numel()


class TrainingMetrics(L.Callback):
    """Every ``log_every_n_steps`` optimizer steps, writes the training metrics to the loggers: ``train/loss`` (of
    the step's last micro-batch), ``lr``, ``train/pad_frac`` (padded batches), ``perf/tokens_per_sec`` (all
    devices), ``perf/step_ms`` and ``perf/mfu`` (model FLOPs utilisation against the peak of the GPU in use, or
    ``peak_tflops``). Time spent in validation is left out.

    Between logging steps nothing is read from the device. The metrics go to the loggers directly: Lightning's
    ``self.log`` costs about a millisecond a call on a small CPU, more than a small model's whole step. Not
    Lightning's ``ThroughputMonitor``: it waits for the GPU (``torch.cuda.synchronize``) after every batch. Not its
    ``LearningRateMonitor``: it logs at the start of a batch under the step before (9, 19, ... where these metrics
    are at 10, 20, ...), a second row in metrics.csv for every logging step."""

    def __init__(self, log_every_n_steps: int = 10, peak_tflops: float | None = None):
        self.log_every_n_steps, self.peak_tflops = log_every_n_steps, peak_tflops

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flops_per_token = pl_module.model.flops_per_token()
        device = trainer.strategy.root_device
        self.peak = (self.peak_tflops * 1e12 if self.peak_tflops else
                     gpu_peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None)
        self._restart(trainer)

    def _restart(self, trainer: L.Trainer) -> None:
        self.tokens, self.start_step, self.start = 0, trainer.global_step, time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restart(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        self.tokens += batch_tokens(batch) * trainer.world_size
        step, steps = trainer.global_step, trainer.global_step - self.start_step
        if steps == 0 or step % self.log_every_n_steps:  # steps == 0: a micro-batch before the step is done
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.start
        tokens_per_sec = self.tokens / seconds
        metrics = {"train/loss": float(outputs["train_loss"]), "lr": trainer.optimizers[0].param_groups[0]["lr"],
                   "perf/tokens_per_sec": tokens_per_sec, "perf/step_ms": 1000 * seconds / steps}
        if "attention_mask" in batch:  # padded examples: the share of the batch that is padding
            metrics["train/pad_frac"] = 1 - float(batch["attention_mask"].float().mean())
        if self.peak:
            metrics["perf/mfu"] = self.flops_per_token * tokens_per_sec / trainer.world_size / self.peak
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()  # as Lightning does after its own logging: metrics.csv is current while the run goes
        self._restart(trainer)


class TextSamples(L.Callback):
    """At the end of each validation, shows what the model does with text: a causal LM continues ``prompt`` (by
    default a new line, or the first held-out prompt of data with answers); a masked LM fills the masks of a fixed
    validation example. Each sample goes to the log, and a table of every
    sample so far (one row per validation) to each logger that takes text tables (W&B).

    Sampling uses its own seed, so it neither disturbs the training's random stream nor varies between runs."""

    def __init__(self, prompt: str | None = None, max_new_tokens: int = 64, temperature: float = 0.8,
                 top_k: int | None = 50, seed: int = 1337):
        if prompt == "":
            raise UserError('callbacks.text_samples.prompt is empty; give a starting text such as "\\n"')
        self.prompt, self.max_new_tokens, self.temperature, self.top_k = prompt, max_new_tokens, temperature, top_k
        self.seed = seed
        self.rows: list[list] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        datamodule = trainer.datamodule
        self.tokenizer = datamodule.tokenizer
        self.masked_example = datamodule.val_example() if datamodule.masks_tokens else None
        if self.prompt is None:  # the first held-out prompt of data with answers, else a new line
            answers = datamodule.held_out_answers()
            self.prompt = answers[0][0] if answers else "\n"
        try:
            self.prompt_ids = self.tokenizer.encode(self.prompt)
        except UserError as e:
            raise UserError(f"callbacks.text_samples.prompt: {e}") from None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or diverged(trainer):
            return
        step = trainer.global_step
        if self.masked_example is None:
            columns, row = ["step", "prompt", "sample"], [step, self.prompt, self.generate(pl_module)]
            log.info("sample at step %d: %r", step, self.prompt + row[2])
        else:
            columns, row = ["step", "text", "masked", "filled"], [step, *self.fill(pl_module)]
            log.info("masks filled at step %d: %r -> %r (the text: %r)", step, row[2], row[3], row[1])
        self.rows.append(row)
        for logger in trainer.loggers:
            if hasattr(logger, "log_text"):
                logger.log_text("samples", columns=columns, data=self.rows, step=step)

    def generate(self, pl_module) -> str:
        cuda_devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(self.seed)
            ids = pl_module.model.generate([self.prompt_ids], self.max_new_tokens, temperature=self.temperature,
                                           top_k=self.top_k, eot_id=self.tokenizer.eot_id,
                                           suppress_ids=self.tokenizer.special_ids - {self.tokenizer.eot_id})[0]
        return self.tokenizer.decode(ids[len(self.prompt_ids):])

    def fill(self, pl_module) -> tuple[str, str, str]:
        """(the text, with [MASK] at each position validation predicts, with each [MASK] filled by the model's
        best guess). Validation replaces some of those positions by random or unchanged tokens, as in training;
        here every one of them is shown as [MASK]."""
        tok, example = self.tokenizer, self.masked_example
        real = example["attention_mask"][0]  # the example without its padding
        labels, input_ids = example["labels"][0][real], example["input_ids"][0][real]
        chosen = labels != IGNORE_INDEX
        text = torch.where(chosen, labels, input_ids)
        masked = torch.where(chosen, tok.mask_id, text)
        filled, _ = fill_masks(pl_module.model, masked.tolist(), tok.mask_id, tok.special_ids, top_k=1)
        return tok.decode(text.tolist()), tok.decode(masked.tolist()), tok.decode(filled)


class FailOnDivergence(L.Callback):
    """Ends a run whose validation loss is NaN or infinite with ``TrainingDiverged``, instead of training on.

    In a sweep the job is then recorded as failed and the next one starts."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and diverged(trainer):
            raise TrainingDiverged(f"val/loss is {trainer.callback_metrics['val/loss'].item()} at step "
                                   f"{trainer.global_step}: training diverged; lower optim.lr or raise "
                                   "scheduler.warmup_steps")


def diverged(trainer) -> bool:
    """Whether the last validation loss is NaN or infinite (a model with such weights has nothing to sample)."""
    loss = trainer.callback_metrics.get("val/loss")
    return loss is not None and not math.isfinite(loss.item())


def default_signals_in_child() -> None:
    """A forked process (a data preparation or DataLoader worker) takes the default action on the signals that the
    parent handles: a Python handler there may never run while the worker waits in a lock, and the parent would then
    wait for it forever."""
    for signum in StopOnSignal.SIGNALS:
        if isinstance(getattr(signal.getsignal(signum), "__self__", None), StopOnSignal):
            signal.signal(signum, signal.SIG_DFL)


os.register_at_fork(after_in_child=default_signals_in_child)


def validates_now(trainer) -> bool:
    """Whether a validation follows the optimizer step just done: every ``trainer.val_check_interval`` micro-batches
    (train.py sets it from ``trainer.val_every_n_steps``) and at the last step (``FinalValidation``)."""
    every = trainer.val_check_interval // trainer.accumulate_grad_batches
    return trainer.global_step % every == 0 or trainer.global_step >= trainer.max_steps


class Checkpoints(Checkpoint):
    """``best.ckpt`` whenever ``monitor`` improves (``val/loss``, lower is better; ``mode=max`` for an accuracy such
    as ``val/exact_match``), and ``last.ckpt`` to resume from: at every validation and
    every ``every_n_train_steps`` optimizer steps. When the last is also the best, ``last.ckpt`` is a link to
    ``best.ckpt``, so that one step is stored once. A fast dev run (``debug=fdr``) writes none.

    The periodic checkpoint of a step that validates is written after the validation: a run killed while
    validating resumes from an earlier checkpoint and validates that step again.

    Not Lightning's ``ModelCheckpoint(save_top_k=1, save_last="link")``: after a validation that does not improve,
    it leaves ``last.ckpt`` linked to the older best checkpoint instead of saving the current step (tried: with the
    best at step 4 and worse validations at 6 and 8, last.ckpt still held step 4), so a resume would go back."""

    def __init__(self, dirpath: str, monitor: str = "val/loss", mode: str = "min",
                 every_n_train_steps: int | None = 500):
        if mode not in ("min", "max"):
            raise UserError(f"callbacks.checkpoints.mode={mode!r}: min (a loss) or max (an accuracy)")
        self.dirpath, self.monitor, self.mode = Path(dirpath), monitor, mode
        self.every_n_train_steps = every_n_train_steps
        self.best_score, self.best_step, self.saved_step = math.inf if mode == "min" else -math.inf, None, None
        self.best_model_path, self.last_model_path = "", ""

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
        if score is None:
            return False
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


class StopOnSignal(L.Callback):
    """A stop is a stop: SIGTERM (what SLURM and Kubernetes send before they kill), SIGUSR1 (SLURM's warning, unless
    Lightning handles it to requeue the job) and Ctrl-C end the run at the next step boundary: ``last.ckpt`` is
    saved at that step, the logs and ``result.json`` are written, and ``RunStopped`` carries the signal to
    train.py, which says how to resume and exits with 128 + the signal's number. A second Ctrl-C stops at once,
    without saving (unless the step is saved already); signals that come while the stop saves and ends are
    ignored. A signal before training starts (while data is prepared) stops at once: nothing is lost.

    Under DDP every rank stops at the same step: the ranks agree every ``trainer.log_every_n_steps`` steps."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

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


class StepProgress(ProgressBar):
    """One line for the run: the optimizer step out of ``max_steps``, the losses, tokens/s and the time left,
    refreshed every ``refresh_steps`` steps (reading the loss waits for the device)."""

    def __init__(self, refresh_steps: int = 10):
        super().__init__()
        self.refresh_steps, self.enabled, self.bar, self.redirect = refresh_steps, True, None, ExitStack()
        self.train_loss, self.tokens, self.since = None, 0, time.perf_counter()

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        if self.enabled:
            self.redirect.enter_context(logging_redirect_tqdm())  # log lines print above the bar
            self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, unit="step", desc="train",
                            dynamic_ncols=True, smoothing=0.1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.bar is None:
            return
        self.tokens += batch_tokens(batch) * trainer.world_size
        if trainer.global_step - self.bar.n >= self.refresh_steps or trainer.global_step >= trainer.max_steps:
            self.train_loss = float(outputs["train_loss"])
            self.refresh(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.bar is not None and not trainer.sanity_checking:
            self.bar.set_description("validating")

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.bar is not None and not trainer.sanity_checking:
            self.bar.set_description("train")
            self.refresh(trainer)  # tokens/s from here on leaves the validation out

    def refresh(self, trainer) -> None:
        metrics = {"train/loss": self.train_loss, **trainer.progress_bar_metrics}
        names = ("train/loss", "val/loss", "val/mlm_acc", "val/exact_match")
        shown = [f"{name} {metrics[name]:.4f}" for name in names if metrics.get(name) is not None]
        if self.tokens:
            shown.append(f"{self.tokens / (time.perf_counter() - self.since):,.0f} tok/s")
        self.bar.set_postfix_str(", ".join(shown), refresh=False)
        if trainer.global_step > self.bar.n:
            self.bar.update(trainer.global_step - self.bar.n)
        else:
            self.bar.refresh()  # after a validation at this step: show its val/loss now
        self.tokens, self.since = 0, time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.redirect.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    def print(self, *args, **kwargs) -> None:
        tqdm.write(" ".join(map(str, args)))


class RunResult(L.Callback):
    """When fitting ends, writes the run's result to ``<output_dir>/result.json``: the validation metrics of the
    best checkpoint's step (``val_loss``; ``exact_match`` and ``digit_acc`` for checkable answers, ``mlm_acc`` for a
    masked LM), the ``monitor`` of the checkpoints with its ``best`` value, ``best_step`` and ``best_checkpoint``, the
    ``steps`` trained, the ``parameters`` and the ``wall_s`` seconds; W&B gets them in its summary. A run stopped by
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
            self.at_best = {key: float(trainer.callback_metrics[metric]) for metric, (key, _) in METRICS.items()
                            if metric in trainer.callback_metrics}

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, RunStopped):
            self.write(trainer, pl_module, stopped=exception.signal)

    def write(self, trainer, pl_module, **extra) -> None:
        checkpoints = checkpoints_of(trainer)
        if not trainer.is_global_zero or checkpoints is None or checkpoints.best_step is None:
            return
        monitored = METRICS[checkpoints.monitor][0] if checkpoints.monitor in METRICS else checkpoints.monitor
        result = {**self.at_best, monitored: checkpoints.best_score, "monitor": checkpoints.monitor,
                  "best": checkpoints.best_score, "best_step": checkpoints.best_step, "steps": trainer.global_step,
                  "parameters": pl_module.model.count_parameters(),
                  "wall_s": round(time.perf_counter() - self.started, 1),
                  "best_checkpoint": checkpoints.best_model_path, **extra}
        write_result(self.output_dir, result)
        at_best = {f"best_{key}": result[key] for key, _ in METRICS.values() if key in result}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # the runs table of the project page, and the run's end, show these
                logger.experiment.summary.update(at_best | {key: result[key] for key in (
                    "parameters", "best_step", "steps", "wall_s", "stopped") if key in result})

    def state_dict(self) -> dict:
        return {"at_best": self.at_best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.at_best = state_dict.get("at_best", {})
