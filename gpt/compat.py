"""The two places where the project relies on library behaviour that has no public API. Each is one small
function here, with a test in tests/test_compat.py that fails when a library release changes it."""

import torch
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher


def relaunches_script(trainer) -> bool:
    """Whether Lightning starts the other processes by running the command line again (``strategy=ddp`` on
    several devices, not under torchrun or SLURM). Lightning exposes the launcher but not its kind."""
    launcher = trainer.strategy.launcher
    return (isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1
            and not launcher.cluster_environment.creates_processes_externally)


def skip_update_if(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """Make the next ``optimizer.step()`` change nothing (weights, moments, step count) where ``found_inf`` is 1,
    without reading it on the host. Fused optimizers check an ``found_inf`` attribute on the device; it is how
    ``torch.amp.GradScaler`` skips their steps. Other optimizers cannot, so for them the host waits for the
    check."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = found_inf.float()
    elif found_inf.item():
        optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are left alone
