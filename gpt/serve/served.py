"""The checkpoint a server serves: its model, tokenizer, name and kind, which decides the endpoints it answers."""

from dataclasses import dataclass
from pathlib import Path

from gpt.data.answers import AnswersDataModule
from gpt.data.arithmetic import ArithmeticDataModule
from gpt.data.pairs import PairsDataModule
from gpt.data.tokenizers import Tokenizer
from gpt.models.interface import TokenModel
from gpt.training.checkpoint import CheckpointRecord, load_checkpoint, model_from_checkpoint
from gpt.training.reward_model import Scorer, reward_model_from_checkpoint, trained_as_reward_model

# the data whose examples are a prompt and an answer that ends with the end token (DPO's pairs are such answers)
ANSWER_DATA = {f"{cls.__module__}.{cls.__qualname__}" for cls in (AnswersDataModule, ArithmeticDataModule,
                                                                  PairsDataModule)}

KINDS = {
    "text": "a causal LM: it continues a text",
    "answers": "a causal LM trained on prompt -> answer examples: it answers a prompt and ends",
    "masked": "a masked LM: it fills in the [MASK] tokens of a text",
    "reward": "a reward model: it scores a completion of a prompt",
}


@dataclass
class Served:
    name: str
    kind: str  # one of KINDS
    tokenizer: Tokenizer
    model: TokenModel | None = None  # text, answers and masked
    scorer: Scorer | None = None  # reward

    @property
    def block_size(self) -> int:
        return (self.model or self.scorer.trunk).block_size


def kind_of(record: CheckpointRecord) -> str:
    if trained_as_reward_model(record):
        return "reward"
    if not getattr(record.model, "causal", True):
        return "masked"
    data = record.config.get("data")
    return "answers" if isinstance(data, dict) and data.get("_target_") in ANSWER_DATA else "text"


def run_name(ckpt_path: str) -> str:
    """A checkpoint's name in the API: its run directory's name (``<run>/checkpoints/best.ckpt``), else its
    file's."""
    path = Path(ckpt_path).resolve()
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def load_served(ckpt_path: str, device: str, name: str | None = None) -> Served:
    """The checkpoint, checked as every loaded checkpoint is (``gpt.training.checkpoint``), on ``device``."""
    kind = kind_of(load_checkpoint(ckpt_path, verify=False)[1])  # its record, read without its tensors
    if kind == "reward":
        scorer, tokenizer = reward_model_from_checkpoint(ckpt_path)  # the trunk and its score head
        return Served(name or run_name(ckpt_path), kind, tokenizer, scorer=scorer.to(device))
    model, tokenizer, _ = model_from_checkpoint(ckpt_path)
    return Served(name or run_name(ckpt_path), kind, tokenizer, model=model.to(device))
