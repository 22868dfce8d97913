"""The library behaviour that gpt/compat.py relies on without a public API: these fail when a release changes it."""

import inspect
import re
import signal

import lightning as L
import pytest
import torch
from hydra.errors import ConfigCompositionException

from gpt.compat import (LIGHTNING_FEW_WORKERS_WARNING, LIGHTNING_MID_EPOCH_RESUME_WARNING, LIGHTNING_SHORT_EPOCH_WARNING,
                        drop_wandb_anonymous_setting, hydra_error_key, is_plain_attribute, relaunches_script,
                        skip_update_if)
from gpt.models.configs import GPTConfig
from gpt.training.objectives import CausalLM
from gpt.training.run import quiet_libraries
from gpt.training.stops import StopOnSignal

from conftest import compose_train


@pytest.mark.parametrize("strategy, relaunches", [("ddp", True), ("ddp_spawn", False), ("auto", False)])
def test_lightning_relaunches_the_script_for_ddp_only(strategy, relaunches):
    trainer = L.Trainer(accelerator="cpu", devices=2 if strategy != "auto" else 1, strategy=strategy, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    assert relaunches_script(trainer) is relaunches


@pytest.mark.parametrize("fused", [True, False])
def test_a_flagged_step_changes_nothing(fused):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=fused)

    def step(bad: bool) -> None:
        (weight.sum() * (float("nan") if bad else 1.0)).backward()
        skip_update_if(optimizer, torch.tensor(bad))
        optimizer.step()
        optimizer.zero_grad()

    step(bad=False)
    before = weight.detach().clone(), {k: v.clone() for k, v in optimizer.state[weight].items()}
    step(bad=True)
    assert torch.equal(weight, before[0])
    assert all(torch.equal(optimizer.state[weight][k], v) for k, v in before[1].items())  # moments, step count
    step(bad=False)
    assert not torch.equal(weight, before[0]) and optimizer.state[weight]["step"] == 2


def test_modules_keep_parameters_buffers_and_submodules_out_of_their_dict():
    module = torch.nn.Linear(2, 2)
    module.register_buffer("counter", torch.zeros(()))
    module.child = torch.nn.ReLU()
    module.name = "plain"
    assert not any(is_plain_attribute(module, name) for name in ("weight", "bias", "counter", "child"))
    assert is_plain_attribute(module, "name") and is_plain_attribute(module, "training")


def test_lightning_still_advises_more_workers_with_the_text_that_is_filtered():
    from lightning.pytorch.trainer.connectors import data_connector

    assert re.search(LIGHTNING_FEW_WORKERS_WARNING, inspect.getsource(data_connector))


def test_lightning_still_warns_of_short_epochs_with_the_text_that_is_filtered():
    from lightning.pytorch.loops import fit_loop

    assert re.search(LIGHTNING_SHORT_EPOCH_WARNING, inspect.getsource(fit_loop))


def test_lightning_still_warns_of_a_mid_epoch_resume_with_the_text_that_is_filtered():
    from lightning.pytorch.loops import training_epoch_loop

    source = " ".join(inspect.getsource(training_epoch_loop).split())  # its message is split over lines
    assert re.search(LIGHTNING_MID_EPOCH_RESUME_WARNING, source.replace('" "', ""))


def test_lightnings_wandb_logger_passes_the_anonymous_setting_which_can_be_dropped(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    assert "anonymous" in logger._wandb_init
    drop_wandb_anonymous_setting(logger)
    assert "anonymous" not in logger._wandb_init


@pytest.mark.parametrize("override, expected", [("trainer.max_step=10", ("unknown", "trainer.max_step")),
                                                ("+trainer.max_steps=5", ("present", "trainer.max_steps"))])
def test_hydra_names_the_key_in_its_composition_errors(override, expected, tmp_path):
    with pytest.raises(ConfigCompositionException) as error:
        compose_train(override, tmp_path=tmp_path)
    assert hydra_error_key(str(error.value)) == expected


def test_lightning_puts_its_sigterm_handler_in_place_before_training_starts(tmp_path):
    """StopOnSignal takes SIGTERM back in on_train_start: Lightning must have installed its own by then."""
    seen = []

    class Look(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(signal.getsignal(signal.SIGTERM))

    stop = StopOnSignal()
    lm = CausalLM(GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=8), optimizer=torch.optim.AdamW)
    batches = [{"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": torch.zeros(2, 4, dtype=torch.long)}]
    trainer = L.Trainer(max_steps=1, callbacks=[stop, Look()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        limit_val_batches=0)
    quiet_libraries()
    with stop.installed():
        loader = torch.utils.data.DataLoader(batches, batch_size=None)
        trainer.fit(lm, train_dataloaders=loader, val_dataloaders=loader)
    assert seen == [stop.handle]
