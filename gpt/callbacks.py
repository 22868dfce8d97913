"""Lightning callbacks."""

import time

import lightning as L
import torch

from gpt.model import GPT, count_parameters

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
