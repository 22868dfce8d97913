"""What ``python train.py`` does: compose the parts named by the config, fit, report the best checkpoint."""

import logging
import secrets
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gpt import UserError, check_positive
from gpt.callbacks import RunResult, read_result
from gpt.checkpoint import check_tokenizer, find_resume_checkpoint, load_checkpoint, load_initial_weights
from gpt.lm import MaskedLM
from gpt.loggers import make_loggers, start_loggers, wandb_run_finished
from gpt.model import count_parameters, format_count
from gpt.sweeps import refuse_ddp_in_multirun

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate each named entry of a group such as ``callbacks`` or ``logger``; ``null`` entries are skipped."""
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def check_config(cfg: DictConfig) -> None:
    """Values that the libraries would accept but that make no sense for a training run."""
    check_positive("model.block_size", cfg.model.block_size)
    check_positive("optim.lr", cfg.optim.lr, float)
    check_positive("trainer.max_steps", cfg.trainer.max_steps)
    check_positive("trainer.accumulate_grad_batches", cfg.trainer.accumulate_grad_batches)
    interval = cfg.trainer.val_check_interval
    if isinstance(interval, int) and not 0 < interval <= cfg.trainer.max_steps:
        raise UserError(f"trainer.val_check_interval={interval} must be between 1 and trainer.max_steps="
                        f"{cfg.trainer.max_steps}, or the run never validates")


def gradient_accumulation(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that each step sees ``global_batch_size`` sequences."""
    check_positive("global_batch_size", global_batch_size)
    per_pass = micro_batch_size * world_size
    if global_batch_size % per_pass:
        raise UserError(f"global_batch_size={global_batch_size} is not a multiple of data.batch_size={micro_batch_size} "
                        f"x {world_size} device(s) = {per_pass}; change one of them")
    return global_batch_size // per_pass


def set_batch_semantics(trainer: L.Trainer, cfg: DictConfig) -> None:
    """Derive the gradient accumulation from ``global_batch_size``, and make ``val_check_interval``
    count optimizer steps (Lightning counts micro-batches)."""
    if cfg.get("global_batch_size"):
        trainer.accumulate_grad_batches = gradient_accumulation(cfg.global_batch_size, cfg.data.batch_size,
                                                                trainer.world_size)
        log.info("global batch %d = %d per device x %d device(s) x %d accumulated", cfg.global_batch_size,
                 cfg.data.batch_size, trainer.world_size, trainer.accumulate_grad_batches)
    if isinstance(trainer.val_check_interval, int):
        trainer.val_check_interval *= trainer.accumulate_grad_batches


def auto_precision(precision: str) -> str:
    """``auto``: bf16 mixed precision on GPUs that support it, full precision elsewhere."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def resume_from(cfg: DictConfig) -> tuple[Path | None, dict]:
    """(checkpoint path, its metadata) to resume from, or (None, {}) for a fresh run; ``ckpt_path=last``
    means the newest good checkpoint of this run directory."""
    if not cfg.get("ckpt_path"):
        return None, {}
    if cfg.ckpt_path == "last":
        path, checkpoint = find_resume_checkpoint(Path(cfg.paths.output_dir) / "checkpoints")
    else:
        path, checkpoint = Path(cfg.ckpt_path), load_checkpoint(cfg.ckpt_path)
    return path, checkpoint["gpt"]


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
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    plain_config = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path, resumed = resume_from(cfg)
    # a resumed run continues its W&B run instead of starting a new one
    wandb_id = resumed.get("wandb_id") or secrets.token_hex(4)
    loggers = make_loggers(cfg.get("logger"), wandb_id)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    tokenizer = datamodule.tokenizer
    if resumed:
        check_tokenizer(resumed["tokenizer"], tokenizer, f"ckpt_path={ckpt_path}")
        log.info("resuming from %s", ckpt_path)
    lm = build_lm(cfg, tokenizer, {"config": plain_config, "tokenizer": tokenizer.to_dict(), "wandb_id": wandb_id})
    check_data_fits(lm, datamodule)

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    callbacks = [*instantiate_group(cfg.get("callbacks")), RunResult(output_dir)]
    trainer: L.Trainer = instantiate(cfg.trainer, precision=auto_precision(cfg.trainer.precision),
                                     callbacks=callbacks, logger=loggers)
    set_batch_semantics(trainer, cfg)
    refuse_ddp_in_multirun(trainer)
    with wandb_run_finished(loggers):
        start_loggers(trainer.loggers, plain_config)
        trainer.fit(lm, datamodule=datamodule, ckpt_path=ckpt_path)
        return report_best(trainer, output_dir)


def build_lm(cfg: DictConfig, tokenizer, metadata: dict) -> L.LightningModule:
    """The LightningModule around the configured model, from ``init_from`` weights if given."""
    model_config = instantiate(cfg.model, vocab_size=tokenizer.vocab_size)
    make_lm = instantiate(cfg.lm, _partial_=True)
    lm = make_lm(model_config=model_config, optimizer=instantiate(cfg.optim),
                 scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None, metadata=metadata)
    log.info("model: %s with %s parameters, vocabulary of %d tokens",
             type(lm.model).__name__, format_count(count_parameters(lm.model)), tokenizer.vocab_size)
    if cfg.get("init_from"):
        load_initial_weights(lm.model, cfg.init_from, tokenizer)
        log.info("initialised the weights from %s", cfg.init_from)
    return lm


def report_best(trainer: L.Trainer, output_dir: Path) -> float | None:
    """Print the best validation loss and its checkpoint (rank 0 only; the other ranks return None)."""
    result = read_result(output_dir) if trainer.is_global_zero else {}
    if not result:
        return None
    print(f"best val/loss {result['val_loss']:.4f}, checkpoint {result['best_checkpoint']}")
    return result["val_loss"]
