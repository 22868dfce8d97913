"""What ``python train.py`` does: compose the parts named by the config, fit, report the best checkpoint."""

import logging
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gpt import UserError, check_positive, format_count
from gpt.callbacks import FinalValidation, RunResult, StepProgress
from gpt.checkpoint import check_tokenizer, find_resume_checkpoint, load_checkpoint, load_initial_weights
from gpt.compat import relaunches_script
from gpt.context import in_multirun
from gpt.datamodule import TokenDataModule
from gpt.lm import MaskedLM
from gpt.loggers import log_config, make_loggers, wandb_run_finished
from gpt.model import count_parameters
from gpt.result import read_result

log = logging.getLogger(__name__)


def quiet_libraries() -> None:
    """Keep the notes of the libraries out of the run's output (GPU available, the litlogger tip, "max_steps
    reached", ...); their warnings stay. A process other than rank 0 logs warnings only."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning's own pytree helper still uses the LeafSpec that torch deprecated; nothing a user can change
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    if rank_zero_only.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate each named entry of a group such as ``callbacks``; ``null`` entries are skipped."""
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def check_config(cfg: DictConfig) -> None:
    """Values that the libraries would accept but that make no sense for a training run."""
    check_positive("model.block_size", cfg.model.block_size)
    check_positive("optim.lr", cfg.optim.lr, float)
    check_positive("trainer.max_steps", cfg.trainer.max_steps)
    check_positive("trainer.val_check_interval", cfg.trainer.val_check_interval)
    check_positive("trainer.accumulate_grad_batches", cfg.trainer.accumulate_grad_batches)


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
    trainer.val_check_interval *= trainer.accumulate_grad_batches


def refuse_ddp_in_multirun(trainer: L.Trainer) -> None:
    """Lightning's ``ddp`` starts each extra rank by running the command line again, which inside ``-m`` would
    start the whole sweep again in every rank; stop before that happens."""
    if relaunches_script(trainer) and in_multirun():
        raise UserError("trainer.strategy=ddp cannot run inside a multirun (-m): each DDP process would start the "
                        "sweep again; use trainer.strategy=ddp_spawn, start the sweep with torchrun, or run one "
                        "W&B agent per GPU (README: multi-GPU sweeps)")


def auto_precision(precision: str) -> str:
    """``auto``: bf16 mixed precision on GPUs that support it, full precision elsewhere."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


@dataclass
class Resume:
    """Where a resumed run starts: its checkpoint, the step of it, and what the checkpoint carries."""

    path: Path | None = None
    step: int | None = None
    metadata: dict | None = None


def resume_point(cfg: DictConfig) -> Resume:
    """The checkpoint to resume from (``ckpt_path=last``: the newest good one of this run directory), or an
    empty ``Resume`` for a fresh run."""
    if not cfg.get("ckpt_path"):
        return Resume()
    if cfg.ckpt_path == "last":
        path, checkpoint = find_resume_checkpoint(Path(cfg.paths.output_dir) / "checkpoints")
    else:
        path, checkpoint = Path(cfg.ckpt_path), load_checkpoint(cfg.ckpt_path)
    return Resume(path, checkpoint["global_step"], checkpoint["gpt"])


def check_data_fits(lm: L.LightningModule, datamodule: TokenDataModule) -> None:
    """Masked batches go with the masked LM only, and sequences must fit the model's context."""
    if datamodule.masks_tokens and not isinstance(lm, MaskedLM):
        raise UserError("data.mlm_probability is set, which makes masked-LM batches, but the LM is causal; "
                        "use lm=masked model.causal=false (experiment=mlm_char) or data.mlm_probability=null")
    if isinstance(lm, MaskedLM) and not datamodule.masks_tokens:
        raise UserError("lm=masked needs masked batches: data=shakespeare_paragraphs data.mlm_probability=0.15 "
                        "(experiment=mlm_char sets both)")
    if datamodule.max_length > lm.model.block_size:
        raise UserError(f"data.max_length={datamodule.max_length} is longer than model.block_size="
                        f"{lm.model.block_size}; make it at most the model's context")


def train(cfg: DictConfig) -> float | None:
    """Train the configured model and return the best validation loss (the value sweeps optimise)."""
    quiet_libraries()
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if rank_zero_only.rank == 0:
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    plain_config = OmegaConf.to_container(cfg, resolve=True)
    resume = resume_point(cfg)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    tokenizer = datamodule.tokenizer
    log.info("data: %s as %s tokens, a vocabulary of %d, prepared in %s", datamodule.text_path, tokenizer.kind,
             tokenizer.vocab_size, datamodule.data_dir)
    if resume.path:
        check_tokenizer(resume.metadata["tokenizer"], tokenizer, f"ckpt_path={resume.path}")
        log.info("resuming from %s (step %d)", resume.path, resume.step)
    # a resumed run continues its W&B run instead of starting a new one
    wandb_id = (resume.metadata or {}).get("wandb_id") or secrets.token_hex(4)
    lm = build_lm(cfg, tokenizer, {"config": plain_config, "tokenizer": tokenizer.to_dict(), "wandb_id": wandb_id})
    check_data_fits(lm, datamodule)

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    callbacks = [*instantiate_group(cfg.get("callbacks")), FinalValidation(), RunResult(output_dir)]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(StepProgress(refresh_steps=cfg.trainer.log_every_n_steps))
    loggers = make_loggers(cfg.get("logger"), wandb_id, resume.step)
    with wandb_run_finished(loggers):
        trainer: L.Trainer = instantiate(cfg.trainer, precision=auto_precision(cfg.trainer.precision),
                                         callbacks=callbacks, logger=loggers)
        set_batch_semantics(trainer, cfg)
        refuse_ddp_in_multirun(trainer)
        log_config(loggers, plain_config)
        log.info("training %d steps of %d sequences of %d tokens on %d device(s); validating every %d steps and at "
                 "the last; run directory %s", cfg.trainer.max_steps, cfg.data.batch_size * trainer.world_size
                 * trainer.accumulate_grad_batches, datamodule.max_length, trainer.world_size,
                 cfg.trainer.val_check_interval, output_dir)
        trainer.fit(lm, datamodule=datamodule, ckpt_path=resume.path)
        return report_best(trainer, output_dir)


def build_lm(cfg: DictConfig, tokenizer, metadata: dict) -> L.LightningModule:
    """The LightningModule around the configured model, from ``init_from`` weights if given."""
    model_config = instantiate(cfg.model, vocab_size=tokenizer.vocab_size)
    make_lm = instantiate(cfg.lm, _partial_=True)
    lm = make_lm(model_config=model_config, optimizer=instantiate(cfg.optim),
                 scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None, metadata=metadata)
    padded = getattr(model_config, "padded_vocab_size", tokenizer.vocab_size)
    log.info("model: %s with %s parameters over the %d tokens of the %s tokenizer%s", type(lm.model).__name__,
             format_count(count_parameters(lm.model)), tokenizer.vocab_size, tokenizer.kind,
             f" (embedding padded to {padded} rows)" if padded != tokenizer.vocab_size else "")
    if cfg.get("init_from"):
        load_initial_weights(lm.model, cfg.init_from, tokenizer)
        log.info("initialised the weights from %s", cfg.init_from)
    return lm


def report_best(trainer: L.Trainer, output_dir: Path) -> float | None:
    """Print the best validation loss and its checkpoint (rank 0 only; the other ranks return None)."""
    result = read_result(output_dir) if trainer.is_global_zero else {}
    if trainer.fast_dev_run and trainer.is_global_zero:
        print("fast dev run passed: a training and a validation batch went through every step of a run; "
              "nothing was written")
    if not result:
        return None
    print(f"best val/loss {result['val_loss']:.4f} at step {result['best_step']} of {result['steps']}, "
          f"checkpoint {result['best_checkpoint']}")
    return result["val_loss"]
