"""What ``python train.py`` does: compose the parts named by the config, fit, report the best checkpoint."""

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gpt import UserError
from gpt.checkpoint import check_tokenizer, load_checkpoint, load_initial_weights
from gpt.lm import MaskedLM
from gpt.model import count_parameters, format_count

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate each named entry of a group such as ``callbacks`` or ``logger``; ``null`` entries are skipped."""
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def check_data_fits(lm: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Masked batches go with the masked LM only, and padded examples must fit the model's context."""
    masked_batches = getattr(datamodule, "masks_tokens", False)
    if masked_batches and not isinstance(lm, MaskedLM):
        raise UserError("data.mlm_probability is set, which makes masked-LM batches, but the LM is causal; "
                        "use lm=masked model.causal=false (experiment=mlm_char) or data.mlm_probability=null")
    if isinstance(lm, MaskedLM) and not masked_batches:
        raise UserError("lm=masked needs masked batches: data=shakespeare_paragraphs data.mlm_probability=0.15 "
                        "(experiment=mlm_char sets both)")
    max_length = getattr(datamodule, "max_length", 0)
    if max_length > lm.model.block_size:
        raise UserError(f"data.max_length={max_length} is longer than model.block_size={lm.model.block_size}; "
                        "make it at most the model's context")


def train(cfg: DictConfig) -> float | None:
    """Train the configured model and return the best validation loss (the value sweeps optimise)."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    tokenizer = datamodule.tokenizer
    model_config = instantiate(cfg.model, vocab_size=tokenizer.vocab_size)
    make_lm = instantiate(cfg.lm, _partial_=True)
    lm = make_lm(model_config=model_config, optimizer=instantiate(cfg.optim),
                 scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
                 metadata={"config": OmegaConf.to_container(cfg, resolve=True), "tokenizer": tokenizer.to_dict()})
    check_data_fits(lm, datamodule)
    log.info("model: %s with %s parameters, vocabulary of %d tokens",
             type(lm.model).__name__, format_count(count_parameters(lm.model)), tokenizer.vocab_size)
    if cfg.get("init_from"):
        load_initial_weights(lm.model, cfg.init_from, tokenizer)
        log.info("initialised the weights from %s", cfg.init_from)
    if cfg.get("ckpt_path"):
        check_tokenizer(load_checkpoint(cfg.ckpt_path)["gpt"]["tokenizer"], tokenizer, f"ckpt_path={cfg.ckpt_path}")

    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")),
                                     logger=instantiate_group(cfg.get("logger")))
    trainer.fit(lm, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    checkpoint = trainer.checkpoint_callback
    if checkpoint is None or checkpoint.best_model_score is None:
        return None
    best = float(checkpoint.best_model_score)
    print(f"best val/loss {best:.4f}, checkpoint {checkpoint.best_model_path}")
    return best
