"""LightningModules: the training objective around a plain model."""

import logging
import math
from collections.abc import Callable, Collection

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR

from gpt import TrainingDiverged, UserError
from gpt.checkpoint import uncompiled
from gpt.model import Block
from gpt.padded import IGNORE_INDEX

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


class LanguageModel(L.LightningModule):
    """What the objectives share: the model built from its config, the optimizer and scheduler, the logging,
    and ``metadata`` (resolved config, tokenizer) stored in every checkpoint. A subclass says which logits
    predict which labels (``logits_and_labels``)."""

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

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(idx, attention_mask=attention_mask)

    def logits_and_labels(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        loss = cross_entropy(*self.logits_and_labels(batch))
        if self.max_nonfinite_skips is not None and not torch.isfinite(loss):  # one host sync per step
            return self.skip_nonfinite(loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        if isinstance(batch, dict):  # padded examples: the share of the batch that is padding
            self.log("train/pad_frac", 1 - batch["attention_mask"].float().mean())
        return loss

    def skip_nonfinite(self, loss: torch.Tensor) -> None:
        """Skip a batch whose loss is NaN or infinite (no update); stop once too many were skipped."""
        self.nonfinite_skips += 1
        if self.nonfinite_skips > self.max_nonfinite_skips:
            kept = [cb.last_model_path for cb in self.trainer.checkpoint_callbacks if cb.last_model_path]
            raise TrainingDiverged(f"the loss is {loss.item()} at step {self.global_step} ({self.nonfinite_skips} "
                                   f"bad batches); stopped, the last good checkpoint is "
                                   f"{kept[0] if kept else 'none yet'}; lower optim.lr or check the data")
        log.warning("loss is %s at step %d: batch skipped (%d of %d allowed)",
                    loss.item(), self.global_step, self.nonfinite_skips, self.max_nonfinite_skips)
        return None

    def validation_step(self, batch, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        logits, labels = self.logits_and_labels(batch)
        n_labels = int((labels != IGNORE_INDEX).sum())  # batches count by their number of predictions
        self.log("val/loss", cross_entropy(logits, labels), batch_size=n_labels, prog_bar=True, sync_dist=True)
        return logits, labels, n_labels

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
    ``gpt.padded.MaskingCollate``. Validation also logs ``val/mlm_acc``, the accuracy on masked tokens."""

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


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss over the positions with a label (not -100); 0, not NaN, when a batch has none."""
    loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss / (labels != IGNORE_INDEX).sum().clamp(min=1)


@torch.no_grad()
def fill_masks(model: torch.nn.Module, ids: list[int], mask_id: int, special_ids: Collection[int],
               top_k: int) -> tuple[list[int], list[list[tuple[int, float]]]]:
    """Predict every ``mask_id`` of ``ids`` at once with a masked LM: (``ids`` with each mask replaced by its
    most likely token, and for each mask its ``top_k`` candidates as (token id, probability)). Special
    tokens are never candidates."""
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device))[0, :, :model.vocab_size].float()
    logits[:, list(special_ids)] = float("-inf")
    positions = [i for i, token in enumerate(ids) if token == mask_id]
    probs, candidates = logits[positions].softmax(dim=-1).topk(min(top_k, model.vocab_size - len(special_ids)), dim=-1)
    filled = list(ids)
    for position, best in zip(positions, candidates[:, 0].tolist()):
        filled[position] = best
    return filled, [list(zip(c, p)) for c, p in zip(candidates.tolist(), probs.tolist())]
