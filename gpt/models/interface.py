"""The interface every model gives the rest of the framework (``gpt.models.transformer.GPT`` and ``Bigram`` implement it).

The LightningModules, callbacks, the optimizer, the FSDP policy and the benchmarks use only this: a new model is a
``ModelConfig`` subclass whose ``build()`` returns a ``TokenModel`` subclass implementing ``logits``.
"""

import math
from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from gpt import IGNORE_INDEX
from gpt.models.configs import ModelConfig
from gpt.models.generate import GenerationMixin


class WrapUnit(nn.Module):
    """A model's repeated block (a transformer layer): the unit that FSDP wraps and shards, and that activation
    checkpointing recomputes (``gpt.training.devices.fsdp_strategy``)."""


class TokenModel(GenerationMixin, nn.Module):
    """Maps token ids (B, T) to logits over the vocabulary (B, T, vocab_size) at each position.

    - ``forward(idx, labels=...)`` returns the mean loss instead: computed inside the model, the loss is part of
      the compiled graph when the training step compiles the model, so the logits are never copied to float32;
    - ``flops_per_token``, ``param_groups`` (weight decay and μP's learning-rate scales), ``count_parameters``;
    - ``new_cache(batch, length)``: a KV cache for generation of up to ``length`` tokens, or None where the model
      has none;
    - its repeated blocks are ``WrapUnit``s: FSDP shards them one by one, activation checkpointing recomputes them."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache=None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids ``idx`` (B, T); given ``labels`` (B, T: the token each position
        predicts, ``IGNORE_INDEX`` where none), the mean loss over the labelled positions instead.

        attention_mask: (B, keys) with True at real tokens; positions: (B, T) position of each token."""
        logits = self.logits(idx, attention_mask=attention_mask, positions=positions, cache=cache)
        return logits if labels is None else cross_entropy(logits, labels)

    def logits(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        raise NotImplementedError

    def new_cache(self, batch: int, length: int):
        return None

    def crop_block_size(self, block_size: int) -> None:
        """Shorten the context to ``block_size`` tokens, in place (nanoGPT's model surgery): a model that keeps
        something per position (learned positions) drops what belongs to the later ones."""
        if block_size > self.block_size:
            raise ValueError(f"cannot crop a context of {self.block_size} tokens to {block_size}")
        self.config = replace(self.config, block_size=block_size)

    def count_parameters(self) -> int:
        """Trainable weights, tied ones counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward and backward): 6 per weight."""
        return 6 * self.count_parameters()

    def activations_per_token(self) -> int:
        """About how many values training keeps per token for the backward pass (for memory estimates): here the
        logits, their float32 copy and their gradient."""
        return 3 * self.vocab_size

    @property
    def width_mult(self) -> float:
        """How many times wider than its base width the model is, under μP; 1 otherwise."""
        return 1.0

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The weights whose both dimensions grow with the width: under μP they learn at lr / ``width_mult``."""
        return []

    def param_groups(self) -> list[dict]:
        """Parameter groups for AdamW: weight decay on matrices only, not on biases, norms and gains; the hidden
        matrices' group has an ``lr_scale`` (``gpt.training.optim.build_optimizer`` applies it)."""
        hidden = {id(p) for p in self.hidden_matrices()}
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2 and id(p) not in hidden]},
            {"params": [p for p in params if id(p) in hidden], "lr_scale": 1 / self.width_mult},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return [group for group in groups if group["params"]]


def bits_and_bytes(logits: torch.Tensor, labels: torch.Tensor, byte_counts: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the summed loss in bits of the labelled positions whose token stands for text, the UTF-8 bytes of that
    text): bits per byte is their ratio. ``byte_counts[token]`` is the bytes of a token's text, 0 for a special
    token, which counts in neither sum."""
    labels = labels.flatten()
    losses = F.cross_entropy(logits.flatten(0, -2).float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
    byte_counts = byte_counts[labels.clamp(min=0)] * (labels != IGNORE_INDEX)
    return losses[byte_counts > 0].sum() / math.log(2), byte_counts.sum()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss over the positions with a label (not -100); 0, not NaN, when a batch has none."""
    loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss / (labels != IGNORE_INDEX).sum().clamp(min=1)
