"""Lightning callbacks: throughput, text samples and divergence (named in conf/callbacks), and the run's result."""

import json
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch

from gpt import TrainingDiverged, UserError
from gpt.model import GPT, count_parameters

log = logging.getLogger(__name__)

# Dense bf16 peak of each GPU in TFLOP/s, matched against torch.cuda.get_device_name(); first match wins.
PEAK_TFLOPS = [("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("GH200", 989),
               ("B200", 2250), ("A100", 312), ("A10G", 70), ("A10", 125), ("L40S", 362), ("L4", 121),
               ("4090", 165), ("3090", 71), ("V100", 125), ("T4", 65)]


def gpu_peak_flops(device_name: str) -> float | None:
    return next((tflops * 1e12 for name, tflops in PEAK_TFLOPS if name in device_name), None)


def flops_per_token(model: torch.nn.Module) -> float:
    """Training FLOPs per token (forward and backward): 6 per weight, plus attention over the context."""
    n = count_parameters(model)
    if not isinstance(model, GPT):
        return 6 * n
    c = model.config
    if model.wpe is not None:
        n -= model.wpe.weight.numel()  # a lookup, not a matmul
    return 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * c.block_size


def batch_tokens(batch) -> int:
    inputs = batch["input_ids"] if isinstance(batch, dict) else batch[0]
    return inputs.numel()


class Throughput(L.Callback):
    """Logs ``perf/tokens_per_sec`` (all devices), ``perf/step_ms`` and ``perf/mfu`` (model FLOPs
    utilisation against the peak of the GPU in use, or ``peak_tflops``) every ``log_every_n_steps``
    optimizer steps. Time spent in validation is left out. The GPU is synchronised only when logging."""

    def __init__(self, log_every_n_steps: int = 10, peak_tflops: float | None = None):
        self.log_every_n_steps, self.peak_tflops = log_every_n_steps, peak_tflops

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flops_per_token = flops_per_token(pl_module.model)
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
        steps = trainer.global_step - self.start_step
        if steps < self.log_every_n_steps:
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.start
        tokens_per_sec = self.tokens / seconds
        metrics = {"perf/tokens_per_sec": tokens_per_sec, "perf/step_ms": 1000 * seconds / steps}
        if self.peak:
            metrics["perf/mfu"] = self.flops_per_token * tokens_per_sec / trainer.world_size / self.peak
        pl_module.log_dict(metrics, prog_bar=False)
        pl_module.log("tok/s", tokens_per_sec, prog_bar=True, logger=False)
        self._restart(trainer)


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
    """Writes the run's result, ``{"val_loss", "best_step", "steps", "parameters", "best_checkpoint"}``, to ``<output_dir>/result.json``
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
            best_step = torch.load(checkpoint.best_model_path, map_location="cpu", mmap=True,
                                   weights_only=True)["global_step"]
            result = {"val_loss": checkpoint.best_model_score.item(), "best_step": best_step,
                      "steps": trainer.global_step, "parameters": count_parameters(pl_module.model),
                      "best_checkpoint": checkpoint.best_model_path}
            self.path.write_text(json.dumps(result, indent=1) + "\n")


def read_result(output_dir: str | Path) -> dict:
    """What ``RunResult`` wrote in ``output_dir``; empty if the run did not finish."""
    path = Path(output_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
