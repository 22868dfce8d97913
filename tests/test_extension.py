"""A new model, defined here and nowhere in gpt/: it trains through train.py's path, checkpoints, samples and
reports MFU, with nothing but the interface of gpt.interface."""

import csv
from dataclasses import dataclass

import torch
from torch import nn

from gpt.checkpoint import model_from_checkpoint
from gpt.configs import ModelConfig
from gpt.interface import TokenModel
from gpt.training import train

from conftest import compose_train


@dataclass
class MLPConfig(ModelConfig):
    block_size: int = 16
    hidden: int = 32

    def build(self):
        return MLP(self)


class MLP(TokenModel):
    """Each position's next token from its own token and the one before: a model of the interface's minimum."""

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.out = nn.Linear(2 * config.hidden, config.vocab_size)

    def logits(self, idx, attention_mask=None, positions=None, cache=None):
        here = self.embed(idx)
        before = torch.cat([torch.zeros_like(here[:, :1]), here[:, :-1]], dim=1)
        return self.out(torch.cat([here, before], dim=-1).relu())


def test_a_model_defined_outside_the_package_trains_samples_and_reports_mfu(tmp_path):
    cfg = compose_train("model=bigram", f"model._target_={__name__}.MLPConfig", "+model.hidden=32",
                        f"paths.data_dir={tmp_path / 'data'}", "data.batch_size=16", "data.val_windows=32",
                        "trainer.max_steps=30", "trainer.enable_progress_bar=false",
                        "callbacks.training_metrics.peak_tflops=1", tmp_path=tmp_path / "run")
    best = train(cfg)
    assert best is not None and best < 4.0  # below a uniform guess over 68 tokens (4.22)
    with open(tmp_path / "run" / "metrics.csv") as f:
        mfu = [float(row["perf/mfu"]) for row in csv.DictReader(f) if row.get("perf/mfu")]
    assert mfu and all(m > 0 for m in mfu)  # 6 FLOPs per weight: the interface's default
    model, tokenizer, record = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert isinstance(model, MLP) and record.model == MLPConfig(vocab_size=68, block_size=64, hidden=32)
    text = tokenizer.decode(model.generate([tokenizer.encode("ROMEO:")], max_new_tokens=20, temperature=0)[0])
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20
