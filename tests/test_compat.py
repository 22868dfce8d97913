"""The library behaviour that gpt/compat.py relies on without a public API: these fail when a release changes it."""

import lightning as L
import pytest
import torch

from gpt.compat import relaunches_script, skip_update_if


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
