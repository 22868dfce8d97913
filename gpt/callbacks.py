"""Lightning callbacks: throughput, text samples and divergence (named in conf/callbacks), and the run's result."""

import json
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch

from gpt import UserError

log = logging.getLogger(__name__)


class TokensPerSecond(L.Callback):
    """Logs ``train/tokens_per_sec``: input tokens of all ranks per second of wall time, averaged over the last
    ``log_every_n_steps`` optimizer steps. Minimal on purpose: a fuller throughput monitor can take its place."""

    def __init__(self):
        self.window_start: float | None = None
        self.window_step = 0
        self.tokens = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.window_start is None:
            self.window_start, self.window_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += batch[0].numel() * trainer.world_size
        elapsed = time.perf_counter() - self.window_start
        pl_module.log("train/tokens_per_sec", self.tokens / elapsed, on_step=True, on_epoch=False)
        if trainer.global_step - self.window_step >= trainer.log_every_n_steps:
            self.window_start, self.window_step, self.tokens = time.perf_counter(), trainer.global_step, 0


class TextSamples(L.Callback):
    """At the end of each validation, continues ``prompt`` with the model and logs a table of every sample so
    far (step, prompt, sample) to each logger that takes text tables (W&B); each sample also goes to the log.

    Sampling uses its own seed, so it neither disturbs the training's random stream nor varies between runs."""

    def __init__(self, prompt: str = "\n", max_new_tokens: int = 64, temperature: float = 0.8,
                 top_k: int | None = 50, seed: int = 1337):
        if not prompt:
            raise UserError('callbacks.text_samples.prompt is empty; give a starting text such as "\\n"')
        self.prompt, self.max_new_tokens, self.temperature, self.top_k = prompt, max_new_tokens, temperature, top_k
        self.seed = seed
        self.rows: list[list] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.tokenizer = trainer.datamodule.tokenizer
        try:
            self.prompt_ids = self.tokenizer.encode(self.prompt)
        except UserError as e:
            raise UserError(f"callbacks.text_samples.prompt: {e}") from None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or diverged(trainer):
            return
        sample = self.generate(pl_module)
        step = trainer.global_step
        log.info("sample at step %d: %r", step, self.prompt + sample)
        self.rows.append([step, self.prompt, sample])
        for logger in trainer.loggers:
            if hasattr(logger, "log_text"):
                logger.log_text("samples", columns=["step", "prompt", "sample"], data=self.rows, step=step)

    def generate(self, pl_module) -> str:
        cuda_devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(self.seed)
            ids = pl_module.model.generate([self.prompt_ids], self.max_new_tokens, temperature=self.temperature,
                                           top_k=self.top_k, eot_id=self.tokenizer.eot_id)[0]
        return self.tokenizer.decode(ids[len(self.prompt_ids):])


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run failed (in a sweep, this trial), though the input was valid."""


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


RESULT_FILE = "result.json"


class RunResult(L.Callback):
    """Writes the run's result, ``{"val_loss", "steps", "best_checkpoint"}``, to ``<output_dir>/result.json``
    when fitting ends (and removes an older one when it starts).

    Rank 0 of the processes that trained writes it, so the result reaches the caller even from the workers of
    ``ddp_spawn``, which send back the best checkpoint's path but not its score."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / RESULT_FILE

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.unlink(missing_ok=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        checkpoint = trainer.checkpoint_callback
        if trainer.is_global_zero and checkpoint is not None and checkpoint.best_model_score is not None:
            result = {"val_loss": checkpoint.best_model_score.item(), "steps": trainer.global_step,
                      "best_checkpoint": checkpoint.best_model_path}
            self.path.write_text(json.dumps(result, indent=1) + "\n")


def read_result(output_dir: str | Path) -> dict:
    """What ``RunResult`` wrote in ``output_dir``; empty if the run did not finish."""
    path = Path(output_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
