"""Reward models (``lm=reward``): the GPT trunk of an SFT checkpoint with a scalar head read at the last token of
a completion (its end token), trained on comparison pairs (``data=pairs``) with the Bradley-Terry loss
``-log sigmoid(r_chosen - r_rejected)`` (Ouyang et al. 2022). ``python sample.py ckpt_path=<its checkpoint>
prompt=... completion=...`` prints the score of a completion, and ``RewardModelScore`` makes it the reward of
``lm=grpo``."""

from collections.abc import Sequence

import torch
from torch import nn

from gpt import IGNORE_INDEX, UserError
from gpt.data.tokenizers import Tokenizer
from gpt.metrics import PAIR_ACC
from gpt.training.checkpoint import (
    CHANGED,
    CheckpointRecord,
    check_tokenizer,
    first_misfit,
    load_checkpoint,
    load_weights,
    model_state,
)
from gpt.training.objectives import LanguageModel, require_pairs

HEAD = "score_head."  # the head's keys in the checkpoint's state dict, beside the trunk's "model." keys


def last_completion_tokens(labels: torch.Tensor) -> torch.Tensor:
    """The index (B,) of each row's last completion token, its end token: one after its last labelled position."""
    positions = torch.arange(labels.size(1), device=labels.device).expand_as(labels)
    return positions.masked_fill(labels == IGNORE_INDEX, -1).amax(dim=1) + 1


def score_head(trunk: nn.Module) -> nn.Linear:
    """A scalar head for ``trunk``'s hidden states, zero at the start: every score 0, the loss log 2."""
    if not hasattr(trunk, "hidden_states"):
        raise UserError(f"a reward model needs a trunk with hidden states, such as model=gpt; {type(trunk).__name__} "
                        "has none")
    head = nn.Linear(trunk.config.n_embd, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def scores_at(trunk: nn.Module, head: nn.Linear, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The score (B,) of each row of ``ids`` (B, T), read at its position ``last`` (B,)."""
    hidden = trunk.hidden_states(ids)
    return head(hidden[torch.arange(ids.size(0), device=ids.device), last]).squeeze(-1)


class Scorer(nn.Module):
    """A trained reward model for scoring: its trunk and head."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, score_head(trunk)

    @torch.no_grad()
    def score(self, tokenizer: Tokenizer, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The score of each (prompt, completion), the completion ended by the end token as in training."""
        rows = [tokenizer.encode(prompt) + tokenizer.encode(completion) + [tokenizer.eot_id] for prompt, completion in
                zip(prompts, completions)]  # encoded apart, as the pairs were
        longest = max(map(len, rows))
        if longest > self.trunk.block_size:
            raise UserError(f"a prompt and completion of {longest} tokens is longer than the reward model's context "
                            f"of {self.trunk.block_size}; shorten it")
        device = next(self.parameters()).device
        ids = torch.tensor([row + [tokenizer.pad_id or 0] * (longest - len(row)) for row in rows], device=device)
        last = torch.tensor([len(row) - 1 for row in rows], device=device)
        return scores_at(self.trunk, self.head, ids, last).tolist()


class RewardModel(LanguageModel):
    """The objective of ``lm=reward`` (the module's docstring); validation logs ``val/loss`` and ``val/pair_acc``,
    the share of held-out pairs whose chosen completion scores higher."""

    wrong_attention = "lm=reward reads the end token of a completion with causal attention: model.causal=true"
    generates = False  # it scores text

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.score_head = score_head(self.model)  # the trunk is self.model: its keys stay those of every run
        if not getattr(self.model.config, "tie_weights", True):  # an untied LM head is never used: not trained
            self.model.lm_head.requires_grad_(False)

    def check_data(self, datamodule) -> None:
        super().check_data(datamodule)
        require_pairs(datamodule, "lm=reward")

    def param_groups(self) -> list[dict]:
        return [*super().param_groups(), {"params": list(self.score_head.parameters()), "weight_decay": 0.0}]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pair_loss(batch)[0]

    def pair_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Bradley-Terry loss, chosen score minus rejected score per pair) of a batch of pairs, chosen rows first."""
        scores = scores_at(self.model, self.score_head, batch["input_ids"], last_completion_tokens(batch["labels"]))
        n = scores.size(0) // 2
        margins = scores[:n] - scores[n:]
        return -nn.functional.logsigmoid(margins).mean(), margins.detach()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, margins = self.pair_loss(batch)
        self.log("val/loss", loss, batch_size=margins.size(0), prog_bar=True, sync_dist=True)
        self.log(PAIR_ACC.name, (margins > 0).float().mean(), batch_size=margins.size(0), prog_bar=True,
                 sync_dist=True)


def trained_as_reward_model(record: CheckpointRecord) -> bool:
    lm = record.config.get("lm")
    return isinstance(lm, dict) and str(lm.get("_target_", "")).endswith(".RewardModel")


def reward_model_from_checkpoint(path: str) -> tuple[Scorer, Tokenizer]:
    """(scorer in eval mode, tokenizer) of a checkpoint of ``lm=reward``; its head checked before it is loaded."""
    checkpoint, record = load_checkpoint(path)
    if not trained_as_reward_model(record):
        raise UserError(f"{path} is not a reward model: it was not trained with lm=reward; train one with lm=reward "
                        "data=pairs")
    scorer = Scorer(record.model.build())
    load_weights(scorer.trunk, model_state(checkpoint["state_dict"]), f"ckpt_path={path}")
    head = {key.removeprefix(HEAD): value for key, value in checkpoint["state_dict"].items()
            if isinstance(key, str) and key.startswith(HEAD)}
    if misfit := first_misfit(scorer.head.state_dict(), head):
        raise UserError(f"{path}: its score head does not fit: {misfit}; {CHANGED}")
    scorer.head.load_state_dict(head)
    return scorer.eval(), record.build_tokenizer()


class RewardModelScore:
    """The reward of ``lm=grpo`` given by a reward model: ``lm.reward={_target_:
    gpt.training.reward_model.RewardModelScore, ckpt_path: <its best.ckpt>}``. A completion that never ended gets
    the lowest score of its batch."""

    def __init__(self, ckpt_path: str):
        self.ckpt_path = ckpt_path
        self.scorer, self.tokenizer = reward_model_from_checkpoint(ckpt_path)

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        check_tokenizer(self.tokenizer.to_dict(), tokenizer, f"the reward model {self.ckpt_path}")

    def __call__(self, completions: Sequence[str | None], answers: Sequence[str], prompts: Sequence[str]
                 ) -> list[float]:
        ended = [i for i, completion in enumerate(completions) if completion is not None]
        scores = self.scorer.score(self.tokenizer, [prompts[i] for i in ended], [completions[i] for i in ended]) \
            if ended else []
        lowest = min(scores, default=0.0)
        by_row = dict(zip(ended, scores))
        return [by_row.get(i, lowest) for i in range(len(completions))]
