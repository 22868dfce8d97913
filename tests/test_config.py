from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from gpt.padded import PaddedDataModule

from conftest import REPO

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def compose_train(*overrides: str, tmp_path: Path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_train(f"experiment={experiment}", tmp_path=tmp_path)
    model_config = instantiate(cfg.model, vocab_size=68)
    data = instantiate(cfg.data)
    context = data.max_length if isinstance(data, PaddedDataModule) else data.block_size
    assert model_config.build().block_size == context
    make_lm = instantiate(cfg.lm, _partial_=True)
    assert make_lm(model_config=model_config, optimizer=instantiate(cfg.optim)).model.block_size == context
    assert instantiate(cfg.trainer).max_steps == cfg.trainer.max_steps


def test_paragraph_data_composes_for_a_causal_lm(tmp_path):
    cfg = compose_train("data=shakespeare_paragraphs", tmp_path=tmp_path)
    data = instantiate(cfg.data)
    assert data.max_length == cfg.model.block_size and data.example == "paragraph" and not data.masks_tokens


@pytest.mark.parametrize("model", ["gpt", "bigram"])
def test_models_instantiate(model, tmp_path):
    cfg = compose_train(f"model={model}", "model.block_size=8", tmp_path=tmp_path)
    assert instantiate(cfg.model, vocab_size=65).build()(__import__("torch").zeros(1, 8, dtype=int)).shape == (1, 8, 65)


def test_misspelled_key_is_rejected(tmp_path):
    with pytest.raises(ConfigCompositionException, match="n_layr"):
        compose_train("model.n_layr=4", tmp_path=tmp_path)
