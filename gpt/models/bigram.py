"""The baseline: the next token depends only on the current one. Its config is ``gpt.models.configs.BigramConfig``."""

import torch
from torch import nn

from gpt.models.configs import BigramConfig
from gpt.models.interface import TokenModel


class Bigram(TokenModel):
    def __init__(self, config: BigramConfig):
        super().__init__(config)
        self.logits_table = nn.Embedding(config.vocab_size, config.vocab_size)

    def logits(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> torch.Tensor:
        return self.logits_table(idx)
