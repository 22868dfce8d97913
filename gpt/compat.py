"""Every place where the project relies on library behaviour that has no public API. Each is one small function or
constant here, with a test in tests/test_compat.py that fails when a library release changes it.

Nothing is imported here at the top: the entry points use this module before torch and Lightning load."""

import re


def relaunches_script(trainer) -> bool:
    """Whether Lightning starts the other processes by running the command line again (``strategy=ddp`` on
    several devices, not under torchrun or SLURM). Lightning exposes the launcher but not its kind."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = trainer.strategy.launcher
    return (isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1
            and not launcher.cluster_environment.creates_processes_externally)


def skip_update_if(optimizer, found_inf) -> None:
    """Make the next ``optimizer.step()`` change nothing (weights, moments, step count) where ``found_inf`` is 1,
    without reading it on the host. Fused optimizers check an ``found_inf`` attribute on the device; it is how
    ``torch.amp.GradScaler`` skips their steps. Other optimizers cannot, so for them the host waits for the
    check."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = found_inf.float()
    elif found_inf.item():
        optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are left alone


def is_plain_attribute(module, name: str) -> bool:
    """Whether ``name`` is a plain attribute of ``module``: ``nn.Module`` keeps parameters, buffers and submodules
    in dicts of their own, never in the instance's ``__dict__``."""
    return name in module.__dict__


# Lightning's advice to use more DataLoader workers, on machines with many cores; its text is all there is to match
LIGHTNING_FEW_WORKERS_WARNING = r".*does not have many workers which may be a bottleneck"
# Lightning's advice when an epoch has fewer batches than trainer.log_every_n_steps; the logging interval counts
# steps across epochs, so a small data set (1,000 arithmetic problems) logs as often as any other
LIGHTNING_SHORT_EPOCH_WARNING = r".*is smaller than the logging interval"
# Lightning's warning when a run resumes in the middle of an epoch with a DataLoader that has no state of its own;
# the data modules restore their position themselves (gpt.data.module.TokenDataModule.first_batch)
LIGHTNING_MID_EPOCH_RESUME_WARNING = r".*resuming from a checkpoint that ended before the epoch ended"


def drop_wandb_anonymous_setting(logger) -> None:
    """Lightning's WandbLogger passes ``anonymous=None`` to ``wandb.init``, which recent W&B releases answer with a
    deprecation warning at every run, although the setting does nothing; leave it out."""
    logger._wandb_init.pop("anonymous", None)


def hydra_error_key(message: str) -> tuple[str, str] | None:
    """(what, key) of Hydra's composition errors that name a key: ``("unknown", key)`` for "Could not override
    'key'", ``("present", key)`` for "Could not append to config. An item is already at 'key'"."""
    for what, pattern in (("unknown", r"Could not override '([^']+)'"),
                          ("present", r"Could not append to config\. An item is already at '([^']+)'")):
        if match := re.match(pattern, message):
            return what, match[1]
    return None
