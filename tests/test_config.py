import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from gpt.training.devices import auto_precision
from gpt.training.run import instantiate_group, trainer_node

from conftest import REPO, compose_train

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_train(f"experiment={experiment}", tmp_path=tmp_path)
    model_config = instantiate(cfg.model, vocab_size=68)
    data = instantiate(cfg.data, block_size=cfg.model.block_size)
    context = data.block_size
    assert model_config.build().block_size == context
    make_lm = instantiate(cfg.lm, _partial_=True)
    assert make_lm(model_config=model_config, optimizer=instantiate(cfg.optim)).model.block_size == context
    callbacks = instantiate_group(cfg.callbacks)
    trainer = instantiate(trainer_node(cfg), precision=auto_precision(cfg.trainer.precision), logger=False,
                          callbacks=callbacks)
    assert trainer.max_steps == cfg.trainer.max_steps


def test_paragraph_data_composes_for_a_causal_lm(tmp_path):
    cfg = compose_train("data=shakespeare_paragraphs", tmp_path=tmp_path)
    data = instantiate(cfg.data, block_size=cfg.model.block_size)
    assert data.block_size == cfg.model.block_size and data.example == "paragraph" and not data.masks_tokens


@pytest.mark.parametrize("model", ["gpt", "bigram"])
def test_models_instantiate(model, tmp_path):
    cfg = compose_train(f"model={model}", "model.block_size=8", tmp_path=tmp_path)
    assert instantiate(cfg.model, vocab_size=65).build()(__import__("torch").zeros(1, 8, dtype=int)).shape == (1, 8, 65)


def test_misspelled_key_is_rejected(tmp_path):
    with pytest.raises(ConfigCompositionException, match="n_layr"):
        compose_train("model.n_layr=4", tmp_path=tmp_path)


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_multi_device_trainer_configs_compose(trainer, tmp_path):
    cfg = compose_train(f"trainer={trainer}", "model=gpt2-xl", tmp_path=tmp_path)
    assert cfg.trainer.devices == "auto" and cfg.model.n_layer == 48
    if trainer == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy
        assert isinstance(instantiate(cfg.trainer.strategy), FSDPStrategy)


def test_slurm_launcher_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_train("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2",
                        tmp_path=tmp_path, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert "SlurmLauncher" in launcher._target_ and launcher.nodes == 2 and launcher.tasks_per_node == 8


@pytest.mark.parametrize("choice, loggers", [
    ("csv", {"csv"}), ("wandb", {"csv", "wandb"}), ("tensorboard", {"csv", "tensorboard"}),
    ("[wandb,tensorboard]", {"csv", "wandb", "tensorboard"}),
])
def test_logger_choices_compose_with_csv_always_on(choice, loggers, tmp_path):
    assert set(compose_train(f"logger={choice}", tmp_path=tmp_path).logger) == loggers


@pytest.mark.parametrize("sweep, sweeper", [("grid", "BasicSweeper"), ("optuna", "OptunaSweeper")])
def test_sweep_configs_choose_their_sweeper(sweep, sweeper, tmp_path):
    cfg = compose_train(f"sweep={sweep}", tmp_path=tmp_path, return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith(sweeper)
    assert {"optim.lr", "model.dropout"} <= set(cfg.hydra.sweeper.params)


def test_ablation_sweep_covers_each_option_alone_and_together(tmp_path):
    cfg = compose_train("sweep=ablation", tmp_path=tmp_path, return_hydra_config=True)
    arches = cfg.hydra.sweeper.params["+arch"].split(",")
    assert arches == ["gpt2", "rope", "swiglu", "rmsnorm", "all"]
    for arch in arches:
        model = compose_train(f"+arch={arch}", "experiment=shakespeare_char", tmp_path=tmp_path).model
        assert instantiate(model, vocab_size=68).n_layer == 6
    assert compose_train("+arch=all", tmp_path=tmp_path).model.mlp == "swiglu"


@pytest.mark.parametrize("debug, setting", [("fdr", ("fast_dev_run", True)), ("overfit", ("overfit_batches", 1)),
                                            ("profile", ("max_steps", 200))])
def test_debug_presets_compose(debug, setting, tmp_path):
    cfg = compose_train(f"debug={debug}", tmp_path=tmp_path)
    assert cfg.trainer[setting[0]] == setting[1]
    trainer = instantiate(trainer_node(cfg), precision=auto_precision(cfg.trainer.precision), logger=False)
    assert trainer.fast_dev_run == (debug == "fdr")


@pytest.mark.parametrize("monitor, direction", [("val/loss", "minimize"), ("val/exact_match", "maximize")])
def test_optunas_direction_follows_the_monitors_declaration(tmp_path, monitor, direction):
    cfg = compose_train("sweep=optuna", f"callbacks.checkpoints.monitor={monitor}", tmp_path=tmp_path,
                        return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == direction
