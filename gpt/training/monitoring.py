"""Lightning callbacks that watch a run: its training metrics (``TrainingMetrics``), text samples at each validation
(``TextSamples``) and the progress line (``StepProgress``). They are named in conf/callbacks, but the progress line,
which train.py adds itself."""

import logging
import math
import sys
import time
from contextlib import ExitStack

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from gpt import IGNORE_INDEX, UserError
from gpt.metrics import METRICS
from gpt.models.generate import GenerationSettings, fill_masks
from gpt.training.checkpoints import validates_now

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
    """Every ``log_every_n_steps`` optimizer steps, writes the training metrics to the loggers: ``train/loss`` (the
    mean over the step's micro-batches and every process, so that one process and several with the same global batch
    log the same curve), ``lr``, ``train/pad_frac`` (padded batches), ``perf/tokens_per_sec`` (all devices),
    ``perf/step_ms`` and ``perf/mfu`` (model FLOPs utilisation against the peak of the GPU in use, or
    ``peak_tflops``). Time spent in validation is left out. ``train/loss`` is also in ``trainer.callback_metrics``
    for the progress line.

    Between logging steps nothing is read from the device and no process waits for another: the step's losses are
    summed on the device and reduced across processes at logging steps only. The metrics go to the loggers
    directly: Lightning's ``self.log`` costs about a millisecond a call on a small CPU, more than a small model's
    whole step. Not Lightning's ``ThroughputMonitor``: it waits for the GPU (``torch.cuda.synchronize``) after every
    batch. Not its ``LearningRateMonitor``: it logs at the start of a batch under the step before (9, 19, ... where
    these metrics are at 10, 20, ...), a second row in metrics.csv for every logging step."""

    def __init__(self, log_every_n_steps: int = 10, peak_tflops: float | None = None):
        self.log_every_n_steps, self.peak_tflops = log_every_n_steps, peak_tflops
        self.step_loss, self.micro_batches = None, 0  # the losses of the step's micro-batches so far, summed

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
        loss = outputs["train_loss"]
        self.step_loss = loss if self.step_loss is None else self.step_loss + loss
        self.micro_batches += 1
        if (batch_idx + 1) % trainer.accumulate_grad_batches:  # the step is not done
            return
        step_loss, self.step_loss, micro_batches, self.micro_batches = self.step_loss, None, self.micro_batches, 0
        step, steps = trainer.global_step, trainer.global_step - self.start_step
        if steps == 0 or step % self.log_every_n_steps:
            return
        mean_loss = trainer.strategy.reduce(step_loss / micro_batches, reduce_op="mean")  # over the processes
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.start
        tokens_per_sec = self.tokens / seconds
        metrics = {"train/loss": float(mean_loss), "lr": trainer.optimizers[0].param_groups[0]["lr"],
                   "perf/tokens_per_sec": tokens_per_sec, "perf/step_ms": 1000 * seconds / steps}
        trainer.callback_metrics["train/loss"] = mean_loss.detach()
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
        self.prompt, self.seed = prompt, seed
        self.options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k}
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
        self.settings = GenerationSettings.for_tokenizer(self.tokenizer, **self.options)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or diverged(trainer) or not pl_module.generates:
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
            ids = pl_module.model.generate([self.prompt_ids], self.settings)[0]
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


def diverged(trainer) -> bool:
    """Whether the last validation loss is NaN or infinite (a model with such weights has nothing to sample)."""
    loss = trainer.callback_metrics.get("val/loss")
    return loss is not None and not math.isfinite(loss.item())


class StepProgress(ProgressBar):
    """The run's progress: the optimizer step out of ``max_steps``, ``train/loss`` and the metrics whose declaration
    puts them on the progress line (``gpt.metrics``), tokens/s and the time left. On a terminal it is one line,
    redrawn every ``refresh_steps`` steps; written to a file or a pipe (SLURM's log, CI) it is a plain line every
    twentieth of the run (a multiple of ``refresh_steps``) and after each validation."""

    def __init__(self, refresh_steps: int = 10, interactive: bool | None = None):
        super().__init__()
        self.refresh_steps, self.enabled, self.bar, self.redirect = refresh_steps, True, None, ExitStack()
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.tokens, self.since, self.started, self.first_step, self.last_shown = 0, 0.0, 0.0, 0, 0

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        self.since = self.started = time.perf_counter()
        self.first_step = self.last_shown = trainer.global_step
        every = max(self.refresh_steps, -(-trainer.max_steps // 20))
        self.plain_every = -(-every // self.refresh_steps) * self.refresh_steps
        if self.interactive:
            self.redirect.enter_context(logging_redirect_tqdm())  # log lines print above the bar
            self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, unit="step", desc="train",
                            dynamic_ncols=True, smoothing=0.1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.enabled:
            return
        self.tokens += batch_tokens(batch) * trainer.world_size
        step, last = trainer.global_step, trainer.global_step >= trainer.max_steps
        if self.interactive and (step - self.bar.n >= self.refresh_steps or last):
            self.refresh(trainer)
        elif (not self.interactive and step != self.last_shown and (step % self.plain_every == 0 or last)
              and not validates_now(trainer)):  # a step that validates is shown after its validation
            self.refresh(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.bar is not None and not trainer.sanity_checking:
            self.bar.set_description("validating")

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.enabled and not trainer.sanity_checking:
            if self.bar is not None:
                self.bar.set_description("train")
            self.refresh(trainer)  # tokens/s from here on leaves the validation out

    def shown(self, trainer) -> str:
        """The losses and metrics of the progress line, and tokens/s since it was last refreshed."""
        values = trainer.callback_metrics
        names = ["train/loss", *(metric.name for metric in METRICS.values() if metric.progress_bar)]
        shown = [f"{name} {METRICS[name].format(float(values[name])) if name in METRICS else f'{float(values[name]):.4f}'}"
                 for name in names if name in values]
        if self.tokens:
            shown.append(f"{self.tokens / (time.perf_counter() - self.since):,.0f} tok/s")
        return ", ".join(shown)

    def refresh(self, trainer) -> None:
        step = trainer.global_step
        if self.interactive:
            self.bar.set_postfix_str(self.shown(trainer), refresh=False)
            if step > self.bar.n:
                self.bar.update(step - self.bar.n)
            else:
                self.bar.refresh()  # after a validation at this step: show its val/loss now
        else:
            elapsed = time.perf_counter() - self.started
            left = elapsed / max(step - self.first_step, 1) * (trainer.max_steps - step)
            print(f"step {step}/{trainer.max_steps}: {self.shown(trainer)}, {tqdm.format_interval(left)} left",
                  file=sys.stderr, flush=True)
        self.tokens, self.since, self.last_shown = 0, time.perf_counter(), step

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.redirect.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    def print(self, *args, **kwargs) -> None:
        tqdm.write(" ".join(map(str, args)))
