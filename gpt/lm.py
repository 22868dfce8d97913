"""LightningModules: the training objective around a plain model."""

import math
from collections.abc import Callable

import logging

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR

from gpt import TrainingDiverged
from gpt.model import Block

log = logging.getLogger(__name__)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_lr: float) -> LambdaLR:
    """Linear warmup to the optimizer's lr, then cosine decay to ``min_lr`` at ``max_steps``."""
    base_lr = optimizer.param_groups[0]["lr"]

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        lr = min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (base_lr - min_lr)
        return lr / base_lr

    return LambdaLR(optimizer, lr_factor)


def fsdp_strategy(activation_checkpointing: bool = False, **kwargs) -> FSDPStrategy:
    """FSDP that shards the model block by block (a transformer block is the unit of wrapping)."""
    blocks = {Block}
    return FSDPStrategy(auto_wrap_policy=blocks, activation_checkpointing_policy=blocks if activation_checkpointing
                        else None, **kwargs)


class CausalLM(L.LightningModule):
    """Next-token prediction. ``metadata`` (resolved config, tokenizer) is stored in every checkpoint."""

    def __init__(self, model_config, optimizer: Callable, scheduler: Callable | None = None,
                 metadata: dict | None = None, max_nonfinite_skips: int | None = 3, compile: bool | str = "auto"):
        super().__init__()
        self.model = model_config.build()
        self.compile = compile
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.metadata = metadata or {}
        self.max_nonfinite_skips, self.nonfinite_skips = max_nonfinite_skips, 0

    def configure_model(self) -> None:
        """torch.compile the model in place (state dict keys unchanged); ``auto``: on CUDA only."""
        on_gpu = self.trainer.strategy.root_device.type == "cuda"
        if self.compile is True or (self.compile == "auto" and on_gpu):
            torch._dynamo.config.suppress_errors = True  # a platform that cannot compile runs eagerly, with a warning
            self.model.compile()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        logits = self.model(inputs)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        loss = self.loss(batch)
        if self.max_nonfinite_skips is not None and not torch.isfinite(loss):  # one host sync per step
            return self.skip_nonfinite(loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def skip_nonfinite(self, loss: torch.Tensor) -> None:
        """Skip a batch whose loss is NaN or infinite (no update); stop once too many were skipped."""
        self.nonfinite_skips += 1
        if self.nonfinite_skips > self.max_nonfinite_skips:
            kept = [cb.last_model_path for cb in self.trainer.checkpoint_callbacks if cb.last_model_path]
            raise TrainingDiverged(f"the loss is {loss.item()} at step {self.global_step} ({self.nonfinite_skips} bad batches); "
                            f"stopped, the last good checkpoint is {kept[0] if kept else 'none yet'}; "
                            "lower optim.lr or check the data")
        log.warning("loss is %s at step %d: batch skipped (%d of %d allowed)",
                    loss.item(), self.global_step, self.nonfinite_skips, self.max_nonfinite_skips)
        return None

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self.loss(batch), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [  # weight decay on matrices only, not on biases, norms and gains
            {"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        extra = {"fused": True} if self.device.type == "cuda" else {}
        optimizer = self.optimizer_factory(groups, **extra)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gpt"] = self.metadata
        # dropout's random numbers, so that a resumed run continues exactly
        checkpoint["rng"] = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # weights saved from a torch.compile'd model carry an "_orig_mod." prefix
        checkpoint["state_dict"] = {k.replace("_orig_mod.", ""): v for k, v in checkpoint["state_dict"].items()}
        self._rng_to_restore = checkpoint.get("rng")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # restored here rather than on load: creating the data iterators in between draws random numbers
        rng, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
