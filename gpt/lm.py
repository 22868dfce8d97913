"""LightningModules: the training objective around a plain model."""

import logging
import math
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.optim.lr_scheduler import LambdaLR

from gpt import IGNORE_INDEX, TrainingDiverged, UserError
from gpt.checkpoint import uncompiled
from gpt.compat import skip_update_if
from gpt.model import Block, apply_lr_scales, cross_entropy, param_groups

log = logging.getLogger(__name__)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_lr: float) -> LambdaLR:
    """Linear warmup to the optimizer's lr, then cosine decay to ``min_lr`` at ``max_steps``; parameter groups
    with a scaled lr (μP) follow the same curve, scaled."""
    base_lr = optimizer.defaults["lr"]

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


def can_compile(device: torch.device) -> str | None:
    """None when ``torch.compile`` works on ``device``, else why not: a tiny function is compiled as a probe."""
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2, device=device))
    except Exception as e:  # a missing compiler or Triton shows up as one of several kinds
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


class LanguageModel(L.LightningModule):
    """What the objectives share: the model built from its config, the optimizer and scheduler, the validation
    loss, the guard against non-finite gradients, and ``metadata`` (resolved config, tokenizer) stored in every
    checkpoint. A subclass says which logits predict which labels (``logits_and_labels``).

    A training step never waits for the device: the guard's count of skipped steps stays there, and is read
    every ``trainer.log_every_n_steps`` steps, as the loss is by ``gpt.callbacks.TrainingMetrics``."""

    def __init__(self, model_config, optimizer: Callable, scheduler: Callable | None = None,
                 metadata: dict | None = None, max_nonfinite_skips: int | None = 3, compile: bool | str = "auto"):
        super().__init__()
        self.model = model_config.build()
        self.compile = compile
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.metadata = metadata or {}
        self.max_nonfinite_skips = max_nonfinite_skips
        self.nonfinite_steps, self.nonfinite_seen = None, 0  # skipped steps: on the device, and as last read
        self.nonfinite_checked_at = 0  # the optimizer step of the last read

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets a few plain attributes, such as the name of the hook it calls, several times a step, and
        # nn.Module.__setattr__ checks each value for parameters, buffers and modules. A plain value for a plain
        # attribute (one in __dict__, which parameters, buffers and modules never are) goes straight in instead.
        if name in self.__dict__ and isinstance(value, (str, int, float, type(None))):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def configure_model(self) -> None:
        """torch.compile the model in place (state dict keys unchanged); ``auto``: on CUDA only."""
        device = self.trainer.strategy.root_device
        if self.compile is True or (self.compile == "auto" and device.type == "cuda"):
            if problem := can_compile(device):
                log.warning("lm.compile: torch.compile does not work here (%s); running without it", problem)
            else:
                self.model.compile()

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(idx, attention_mask=attention_mask)

    def logits_and_labels(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The loss, and as ``train_loss`` the same value for ``gpt.callbacks.TrainingMetrics`` to log (Lightning
        divides ``loss`` by the gradient accumulation before the callbacks see it)."""
        loss = cross_entropy(*self.logits_and_labels(batch))
        return {"loss": loss, "train_loss": loss.detach()}

    def on_train_start(self) -> None:
        self.nonfinite_steps = torch.zeros((), dtype=torch.long, device=self.device)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip as configured; with the guard on, also skip the update when a gradient is NaN or infinite. The
        guard uses the gradient norm that clipping by norm computes anyway."""
        by_norm = gradient_clip_algorithm in (None, "norm") and not isinstance(self.trainer.strategy, FSDPStrategy)
        if self.max_nonfinite_skips is None or not by_norm:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            if self.max_nonfinite_skips is None:
                return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)  # the same on every rank: gradients are reduced by now
        if gradient_clip_val and by_norm:
            torch.nn.utils.clip_grads_with_norm_(self.parameters(), gradient_clip_val, norm)
        nonfinite = ~torch.isfinite(norm)
        skip_update_if(optimizer, nonfinite)
        self.nonfinite_steps += nonfinite

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # once per logging step: with gradient accumulation, several micro-batches end at the same global_step
        step = self.global_step
        if (self.max_nonfinite_skips is not None and step % self.trainer.log_every_n_steps == 0
                and step != self.nonfinite_checked_at):
            self.nonfinite_checked_at = step
            self.check_nonfinite()

    def check_nonfinite(self) -> None:
        """Warn about steps skipped since the last check; stop once more than ``max_nonfinite_skips`` were."""
        skipped = int(self.nonfinite_steps)
        if skipped == self.nonfinite_seen:
            return
        new, self.nonfinite_seen = skipped - self.nonfinite_seen, skipped
        if skipped > self.max_nonfinite_skips:
            kept = [cb.last_model_path for cb in self.trainer.checkpoint_callbacks if cb.last_model_path]
            raise TrainingDiverged(f"the loss or its gradient was NaN or infinite in {skipped} steps up to step "
                                   f"{self.global_step} (lm.max_nonfinite_skips={self.max_nonfinite_skips}); stopped, "
                                   f"the last good checkpoint is {kept[0] if kept else 'none yet'}; lower optim.lr "
                                   "or check the data")
        log.warning("%d step(s) up to step %d had a NaN or infinite gradient: their updates were skipped "
                    "(%d of %d allowed)", new, self.global_step, skipped, self.max_nonfinite_skips)

    def validation_step(self, batch, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        logits, labels = self.logits_and_labels(batch)
        n_labels = int((labels != IGNORE_INDEX).sum())  # batches count by their number of predictions
        self.log("val/loss", cross_entropy(logits, labels), batch_size=n_labels, prog_bar=True, sync_dist=True)
        return logits, labels, n_labels

    def on_validation_epoch_end(self) -> None:
        # the x axis of every logger: optimizer steps done, as in the log, the checkpoints and result.json
        self.log("step", float(self.global_step), sync_dist=True)

    def configure_optimizers(self):
        extra = {"fused": True} if self.device.type in ("cuda", "cpu") else {}  # fused: one kernel, and the guard
        optimizer = apply_lr_scales(self.optimizer_factory(param_groups(self.model), **extra))
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
        checkpoint["state_dict"] = uncompiled(checkpoint["state_dict"])
        self._rng_to_restore = checkpoint.get("rng")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # restored here rather than on load: creating the data iterators in between draws random numbers
        rng, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


class CausalLM(LanguageModel):
    """Next-token prediction, on windows ``(inputs, targets)`` or on padded examples (a dict batch of
    ``input_ids``, ``attention_mask``, ``labels``), where padding has no loss."""

    def logits_and_labels(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, dict):
            logits = self.model(batch["input_ids"], attention_mask=batch["attention_mask"])
            return logits[:, :-1], batch["labels"][:, 1:]
        inputs, targets = batch
        return self.model(inputs), targets


class MaskedLM(LanguageModel):
    """Masked-token prediction (BERT's objective) with bidirectional attention, on batches masked by
    ``gpt.examples.MaskingCollate``. Validation also logs ``val/mlm_acc``, the accuracy on masked tokens."""

    def __init__(self, model_config, *args, **kwargs):
        if getattr(model_config, "causal", True):
            raise UserError("lm=masked needs a GPT with bidirectional attention: set model.causal=false "
                            "(experiment=mlm_char does)")
        super().__init__(model_config, *args, **kwargs)

    def logits_and_labels(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Only at the masked positions: the others have no loss."""
        logits = self.model(batch["input_ids"], attention_mask=batch["attention_mask"])
        masked = batch["labels"] != IGNORE_INDEX
        return logits[masked], batch["labels"][masked]

    def validation_step(self, batch, batch_idx: int) -> None:
        logits, labels, n_labels = super().validation_step(batch, batch_idx)
        correct = (logits.argmax(dim=-1) == labels).sum()
        self.log("val/mlm_acc", correct / max(n_labels, 1), batch_size=n_labels, prog_bar=True, sync_dist=True)
