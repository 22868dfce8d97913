"""LightningModules: the training objective around a model (any ``gpt.models.interface.TokenModel``).

Every batch is a dict (``gpt.datamodule``): ``input_ids``, ``labels`` (what each position is trained to predict,
-100 where nothing) and, for padded batches, ``attention_mask``. The data says which tokens are predicted (the next
one, or the masked ones); the module says what the model must be (causal or bidirectional).
"""

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from gpt import IGNORE_INDEX, TrainingDiverged, UserError
from gpt.compat import is_plain_attribute, skip_update_if
from gpt.data.pairs import PairsDataModule
from gpt.data.tokenizers import Tokenizer, text_bytes_per_token
from gpt.metrics import CHOSEN_LOGP, MARGIN, REJECTED_LOGP, REWARD_ACC
from gpt.models.configs import ModelConfig
from gpt.models.interface import bits_and_bytes, cross_entropy
from gpt.training.checkpoint import CheckpointRecord
from gpt.training.devices import can_compile
from gpt.training.optim import build_optimizer

log = logging.getLogger(__name__)


class LanguageModel(L.LightningModule):
    """What the objectives share: the model built from its config, the optimizer and scheduler, the validation
    loss, the guard against non-finite gradients, and the checkpoint record (``gpt.training.checkpoint.CheckpointRecord``)
    stored in every checkpoint.

    A training step never waits for the device: the guard's count of skipped steps stays there, and is read
    every ``trainer.log_every_n_steps`` steps, as the loss is by ``gpt.training.monitoring.TrainingMetrics``."""

    causal = True  # the attention the objective needs
    generates = True  # whether its model writes text: the text samples and exact match of validation need it
    wrong_attention = ("lm=causal needs a model with causal attention, model.causal=true: a bidirectional one sees "
                       "the token it predicts")

    def __init__(self, model_config: ModelConfig, optimizer: Callable, scheduler: Callable | None = None,
                 record: CheckpointRecord | None = None, tokenizer: Tokenizer | None = None,
                 max_nonfinite_skips: int | None = 3, compile: bool | str = "auto"):
        super().__init__()
        if getattr(model_config, "causal", True) != self.causal:
            raise UserError(self.wrong_attention)
        self.model = model_config.build()
        self.compile_mode = compile
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.record = record and replace(record, model=self.model.config)
        # the bytes of text each token stands for (val/bpb); not saved in checkpoints, whose record has the tokenizer
        byte_counts = None if tokenizer is None else torch.tensor(text_bytes_per_token(tokenizer))
        self.register_buffer("byte_counts", byte_counts, persistent=False)
        self.max_nonfinite_skips = max_nonfinite_skips
        self.nonfinite_steps, self.nonfinite_seen = None, 0  # skipped steps: on the device, and as last read
        self.nonfinite_checked_at = 0  # the optimizer step of the last read
        self.fit_started = time.perf_counter()  # reset when fitting starts: validation logs the seconds since

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets a few plain attributes, such as the name of the hook it calls, several times a step, and
        # nn.Module.__setattr__ checks each value for parameters, buffers and modules. A plain value for a plain
        # attribute (one in __dict__, which parameters, buffers and modules never are) goes straight in instead.
        if isinstance(value, (str, int, float, type(None))) and is_plain_attribute(self, name):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def check_data(self, datamodule) -> None:
        """Refuse data this objective cannot train on, before anything is written: masked batches go with the masked
        LM only."""
        if datamodule.masks_tokens and self.causal:
            raise UserError("data.mlm_probability is set, which makes masked-LM batches, but the LM is causal; "
                            "use lm=masked (experiment=mlm_char) or data.mlm_probability=null")
        if not self.causal and not datamodule.masks_tokens:
            raise UserError("lm=masked needs masked batches of whole examples: data=shakespeare_paragraphs or "
                            "data=examples, with data.mlm_probability=0.15 (lm=masked sets it)")

    def configure_model(self) -> None:
        """torch.compile the model in place (its state dict keys unchanged); ``auto``: on CUDA only. The loss is
        computed inside the model, so it is part of the compiled graph."""
        device = self.trainer.strategy.root_device
        if self.compile_mode is True or (self.compile_mode == "auto" and device.type == "cuda"):
            if problem := can_compile(device):
                log.warning("lm.compile: torch.compile does not work here (%s); running without it", problem)
            else:
                self.model.compile()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's mean loss over its labelled positions."""
        return self.model(batch["input_ids"], labels=batch["labels"], attention_mask=self.attention_mask(batch))

    def attention_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """None for a causal model: batches are padded on the right, so a real token never sees the padding after
        it and its position is the one it has alone, and attention takes its fast causal path without a mask."""
        return None if self.causal else batch.get("attention_mask")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """The loss, and as ``train_loss`` the same value for ``gpt.training.monitoring.TrainingMetrics`` to log (Lightning
        divides ``loss`` by the gradient accumulation before the callbacks see it)."""
        loss = self(batch)
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
            kept = [path for cb in self.trainer.checkpoint_callbacks
                    for path in (cb.last_model_path, cb.best_model_path) if path]
            raise TrainingDiverged(f"the loss or its gradient was NaN or infinite in {skipped} steps up to step "
                                   f"{self.global_step} (lm.max_nonfinite_skips={self.max_nonfinite_skips}); stopped, "
                                   f"the last good checkpoint is {kept[0] if kept else 'none yet'}; lower optim.lr "
                                   "or check the data")
        log.warning("%d step(s) up to step %d had a NaN or infinite gradient: their updates were skipped "
                    "(%d of %d allowed)", new, self.global_step, skipped, self.max_nonfinite_skips)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log_validation(batch, self(batch))

    def log_validation(self, batch: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        n_labels = int((batch["labels"] != IGNORE_INDEX).sum())  # batches count by their number of predictions
        self.log("val/loss", loss, batch_size=n_labels, prog_bar=True, sync_dist=True)

    def on_fit_start(self) -> None:
        self.fit_started = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        # the x axis of every logger: optimizer steps done, as in the log, the checkpoints and result.json
        self.log("step", float(self.global_step), sync_dist=True)
        # and the seconds since this process began to fit, for curves against wall time
        self.log("elapsed_s", time.perf_counter() - self.fit_started, sync_dist=True)

    def param_groups(self) -> list[dict]:
        """What the optimizer trains: the model's parameter groups (an objective with parameters of its own adds
        them)."""
        return self.model.param_groups()

    def configure_optimizers(self):
        # fused AdamW: one kernel for all parameters, and the way the guard skips a step without waiting
        optimizer = build_optimizer(self, self.optimizer_factory, fused=self.device.type in ("cuda", "cpu"))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.record is not None:
            self.record.write_into(checkpoint)
        # dropout's random numbers, so that a resumed run continues exactly
        checkpoint["rng"] = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # restored here rather than on load: creating the data iterators in between draws random numbers
        rng, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


class CausalLM(LanguageModel):
    """Next-token prediction: on windows of a token stream or on padded examples, whose labels are the next tokens
    (or the answer tokens only, for prompt -> answer examples).

    Given its ``tokenizer``, validation also logs ``val/bpb``: the loss in bits per UTF-8 byte of the predicted
    text, which compares runs of different tokenizers (a char token is one byte of Tiny Shakespeare, a GPT-2 token
    about four)."""

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.byte_counts is None:
            return super().validation_step(batch, batch_idx)
        logits = self.model(batch["input_ids"], attention_mask=self.attention_mask(batch))
        self.log_validation(batch, cross_entropy(logits, batch["labels"]))  # the loss forward(labels=) computes
        self.log_bits_per_byte(logits, batch["labels"])

    def log_bits_per_byte(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """The summed loss, in bits, of the predicted tokens that stand for text, over the bytes of that text
        (special tokens count in neither); weighted by bytes, the epoch's value is the whole validation set's."""
        bits, n_bytes = bits_and_bytes(logits, labels, self.byte_counts)
        n_bytes = max(int(n_bytes), 1)
        self.log("val/bpb", bits / n_bytes, batch_size=n_bytes, prog_bar=True, sync_dist=True)


class MaskedLM(LanguageModel):
    """Masked-token prediction (BERT's objective) with bidirectional attention, on batches masked by
    ``gpt.data.examples.MaskingCollate``. Validation also logs ``val/mlm_acc``, the accuracy on masked tokens."""

    causal = False
    wrong_attention = "lm=masked needs a model with bidirectional attention: model.causal=false (lm=masked sets it)"

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.model(batch["input_ids"], attention_mask=batch["attention_mask"])
        labels = batch["labels"]
        self.log_validation(batch, cross_entropy(logits, labels))
        masked = labels != IGNORE_INDEX
        correct = (logits[masked].argmax(dim=-1) == labels[masked]).sum()
        self.log("val/mlm_acc", correct / max(int(masked.sum()), 1), batch_size=int(masked.sum()), prog_bar=True,
                 sync_dist=True)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float, loss: str = "sigmoid"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards) of pairs, from the summed log-probabilities of their
    completions under the policy and the reference. A reward is ``beta`` times the policy's log-ratio to the
    reference; ``h`` is the chosen log-ratio minus the rejected one.

    - ``sigmoid``: DPO (Rafailov et al. 2023), ``-log sigmoid(beta * h)``;
    - ``ipo``: IPO (Azar et al. 2023), ``(h - 1 / (2 * beta))^2``: a target margin instead of an unbounded one."""
    chosen_ratio, rejected_ratio = policy_chosen - reference_chosen, policy_rejected - reference_rejected
    h = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        losses = -torch.nn.functional.logsigmoid(beta * h)
    elif loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {loss!r}")  # lm.loss is checked when the objective is built
    return losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


PREFERENCE_LOSSES = ("sigmoid", "ipo")


class HeldToReference(LanguageModel):
    """An objective held to a frozen reference, the model's initial weights (``init_from``, an SFT checkpoint): its
    log-probabilities come from a copy of them, run without gradients in the same step; it has no optimizer state
    and is never saved (a resumed run rebuilds it from ``init_from``). ``uses_reference`` false: no copy is made."""

    uses_reference = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen: list = []  # [the reference]: in a list, so it is neither a submodule, nor saved, nor trained

    def setup(self, stage: str) -> None:
        # after train.py loaded init_from into the model, before a resumed run's weights replace them
        if self.uses_reference and not self.frozen:
            self.frozen.append(copy.deepcopy(self.model).requires_grad_(False).eval())

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.frozen:
            self.frozen[0].to(self.device)

    @property
    def reference(self) -> torch.nn.Module:
        return self.frozen[0]


def require_pairs(datamodule, objective: str) -> None:
    """Refuse data other than comparison pairs for a preference ``objective``."""
    if not isinstance(datamodule, PairsDataModule):
        raise UserError(f"{objective} learns from comparison pairs: data=pairs data.text_path=<pairs>.jsonl "
                        "(make_pairs.py writes them from a checkpoint's own answers)")


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The log-probability (B, T) of each position's label, 0 where the label is ``IGNORE_INDEX``."""
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                                            reduction="none")
    return -nll.view_as(labels)


class DPO(HeldToReference):
    """Direct preference optimisation on comparison pairs (``data=pairs``) from an SFT checkpoint (``init_from``),
    which is also the frozen reference (``HeldToReference``). ``loss``: ``sigmoid`` (DPO) or ``ipo``; ``beta``: the
    strength of the pull to the reference.

    Validation logs the loss (``val/loss``), ``val/reward_acc`` (the share of pairs whose chosen completion has
    the higher reward), ``val/margin`` (the mean reward difference) and the mean log-probabilities of the chosen
    and rejected completions; with checkable prompts, the exact match of generated answers as well."""

    wrong_attention = "lm=dpo needs a model with causal attention, model.causal=true, as its SFT checkpoint has"

    def __init__(self, *args, beta: float = 0.1, loss: str = "sigmoid", **kwargs):
        super().__init__(*args, **kwargs)
        if loss not in PREFERENCE_LOSSES:
            raise UserError(f"lm.loss={loss} is not a preference loss; choose one of {', '.join(PREFERENCE_LOSSES)}")
        if not beta > 0:
            raise UserError(f"lm.beta must be positive, got {beta}; DPO uses 0.1")
        self.beta, self.loss_name = beta, loss

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.preference(batch)[0]

    def sequence_logprobs(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The summed log-probability of each row's labelled tokens (its completion and end token)."""
        return token_logprobs(model(batch["input_ids"]), batch["labels"]).sum(dim=1)

    def preference(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(loss, chosen rewards, rejected rewards, policy log-probs) of a batch of pairs (chosen rows first)."""
        policy = self.sequence_logprobs(self.model, batch)
        with torch.no_grad():
            reference = self.sequence_logprobs(self.reference, batch)
        n = policy.size(0) // 2
        loss, chosen, rejected = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], self.beta,
                                          self.loss_name)
        return loss, chosen, rejected, policy.detach()

    def check_data(self, datamodule) -> None:
        super().check_data(datamodule)
        require_pairs(datamodule, "lm=dpo")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, chosen, rejected, policy = self.preference(batch)
        n = chosen.size(0)
        self.log("val/loss", loss, batch_size=n, prog_bar=True, sync_dist=True)
        for metric, value in [(REWARD_ACC, (chosen > rejected).float().mean()), (MARGIN, (chosen - rejected).mean()),
                              (CHOSEN_LOGP, policy[:n].mean()), (REJECTED_LOGP, policy[n:].mean())]:
            self.log(metric.name, value, batch_size=n, prog_bar=metric.progress_bar, sync_dist=True)
