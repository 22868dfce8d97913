"""What ``python train.py`` does: compose the parts named by the config, fit, report the best checkpoint."""

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gpt.callbacks import RunResult, read_result
from gpt.checkpoint import check_tokenizer, load_checkpoint, load_initial_weights
from gpt.loggers import make_loggers, wandb_run_finished
from gpt.model import count_parameters, format_count
from gpt.sweeps import refuse_ddp_in_multirun

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate each named entry of a group such as ``callbacks`` or ``logger``; ``null`` entries are skipped."""
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def train(cfg: DictConfig) -> float | None:
    """Train the configured model and return the best validation loss (the value sweeps optimise)."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    plain_config = OmegaConf.to_container(cfg, resolve=True)
    loggers = make_loggers(cfg.get("logger"))

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    tokenizer = datamodule.tokenizer
    model_config = instantiate(cfg.model, vocab_size=tokenizer.vocab_size)
    make_lm = instantiate(cfg.lm, _partial_=True)
    lm = make_lm(model_config=model_config, optimizer=instantiate(cfg.optim),
                 scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
                 metadata={"config": plain_config, "tokenizer": tokenizer.to_dict()})
    log.info("model: %s with %s parameters, vocabulary of %d tokens",
             type(lm.model).__name__, format_count(count_parameters(lm.model)), tokenizer.vocab_size)
    if cfg.get("init_from"):
        load_initial_weights(lm.model, cfg.init_from, tokenizer)
        log.info("initialised the weights from %s", cfg.init_from)
    if cfg.get("ckpt_path"):
        check_tokenizer(load_checkpoint(cfg.ckpt_path)["gpt"]["tokenizer"], tokenizer, f"ckpt_path={cfg.ckpt_path}")

    callbacks = [*instantiate_group(cfg.get("callbacks")), RunResult(output_dir)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    refuse_ddp_in_multirun(trainer)
    with wandb_run_finished(loggers):
        for logger in trainer.loggers:
            logger.log_hyperparams(plain_config)
        trainer.fit(lm, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        return report_best(trainer, output_dir)


def report_best(trainer: L.Trainer, output_dir: Path) -> float | None:
    """Print the best validation loss and its checkpoint (rank 0 only; the other ranks return None)."""
    result = read_result(output_dir) if trainer.is_global_zero else {}
    if not result:
        return None
    print(f"best val/loss {result['val_loss']:.4f}, checkpoint {result['best_checkpoint']}")
    return result["val_loss"]
