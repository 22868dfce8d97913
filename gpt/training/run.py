"""What ``python train.py`` does: check everything the config asks for, compose the parts it names, fit, report
the best checkpoint. Nothing is written to the run directory until every check has passed."""

import logging
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from gpt import UserError, format_count
from gpt.compat import (LIGHTNING_FEW_WORKERS_WARNING, LIGHTNING_MID_EPOCH_RESUME_WARNING, LIGHTNING_SHORT_EPOCH_WARNING,
                        relaunches_script)
from gpt.context import format_bytes, in_multirun, is_rank_zero
from gpt.data.module import TokenDataModule
from gpt.data.tokenizers import Tokenizer
from gpt.metrics import metric_named, read_result
from gpt.models.configs import ModelConfig
from gpt.training.checkpoint import (CheckpointRecord, check_same_model, check_tokenizer, check_training_state,
                                     load_initial_weights, resume_checkpoint)
from gpt.training.checkpoints import Checkpoints, FinalValidation, RunResult
from gpt.training.devices import (Placement, auto_precision, check_memory, memory_per_process, placement,
                                  refuse_cpu_processes_by_accident)
from gpt.training.loggers import log_config, make_loggers, wandb_run_finished
from gpt.training.monitoring import StepProgress
from gpt.training.objectives import LanguageModel
from gpt.training.rundir import owned
from gpt.training.stops import StopOnSignal

log = logging.getLogger(__name__)


def quiet_libraries() -> None:
    """Keep the notes of the libraries out of the run's output (GPU available, the litlogger tip, "max_steps
    reached", ...); their warnings stay. A process other than rank 0 logs warnings only."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning's own pytree helper still uses the LeafSpec that torch deprecated; nothing a user can change
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # the loaders need no workers (gpt.data.module.TokenDataModule says why); Lightning suggests them on many cores
    warnings.filterwarnings("ignore", message=LIGHTNING_FEW_WORKERS_WARNING)
    warnings.filterwarnings("ignore", message=LIGHTNING_SHORT_EPOCH_WARNING)
    warnings.filterwarnings("ignore", message=LIGHTNING_MID_EPOCH_RESUME_WARNING)
    if not is_rank_zero():
        logging.getLogger().setLevel(logging.WARNING)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate each named entry of a group such as ``callbacks``; ``null`` entries are skipped."""
    return [instantiate(node) for node in (group or {}).values() if node is not None]


@dataclass
class Resume:
    """Where a resumed run starts: its checkpoint file, its contents, the step of it, and the checkpoint's record."""

    path: Path | None = None
    checkpoint: dict | None = None
    step: int | None = None
    record: CheckpointRecord | None = None


def resume_point(cfg: DictConfig) -> Resume:
    """The checkpoint to resume from (``ckpt_path=last``: the newest good one of this run directory), or an
    empty ``Resume`` for a fresh run."""
    if not cfg.get("ckpt_path"):
        return Resume()
    path, checkpoint, record = resume_checkpoint(cfg.ckpt_path, cfg.paths.output_dir)
    return Resume(path, checkpoint, checkpoint.get("global_step"), record)


def gradient_accumulation(cfg: DictConfig, world_size: int) -> int:
    """Micro-batches per optimizer step: ``trainer.accumulate_grad_batches``, or derived from ``global_batch_size``
    so that each step sees that many sequences over all devices."""
    if not cfg.get("global_batch_size"):
        return cfg.trainer.accumulate_grad_batches
    if cfg.trainer.accumulate_grad_batches != 1:
        raise UserError("global_batch_size and trainer.accumulate_grad_batches both set the gradient accumulation; "
                        "give one of them")
    per_pass = cfg.data.batch_size * world_size
    if cfg.global_batch_size % per_pass:
        raise UserError(f"global_batch_size={cfg.global_batch_size} is not a multiple of data.batch_size="
                        f"{cfg.data.batch_size} x {world_size} device(s) = {per_pass}; change one of them")
    return cfg.global_batch_size // per_pass


def validation_interval(cfg: DictConfig) -> int:
    """``trainer.val_every_n_steps``; ``auto``: an eighth of the run (rounded up), so that even a short run draws
    a curve of eight points."""
    every = cfg.trainer.val_every_n_steps
    return -(-cfg.trainer.max_steps // 8) if every == "auto" else every


def refuse_ddp_in_multirun(trainer: L.Trainer) -> None:
    """Lightning's ``ddp`` starts each extra rank by running the command line again, which inside ``-m`` would
    start the whole sweep again in every rank; stop before that happens."""
    if relaunches_script(trainer) and in_multirun():
        raise UserError("trainer.strategy=ddp cannot run inside a multirun (-m): each DDP process would start the "
                        "sweep again; use trainer.strategy=ddp_spawn, start the sweep with torchrun, or run one "
                        "W&B agent per GPU (README: multi-GPU sweeps)")


def train(cfg: DictConfig) -> float | None:
    """Train the configured model and return the best value of the checkpoints' monitor (the value sweeps
    optimise: val/loss by default)."""
    quiet_libraries()
    output_dir = Path(cfg.paths.output_dir)
    writes = not cfg.trainer.get("fast_dev_run")  # a fast dev run writes nothing to the run directory
    stop = StopOnSignal()
    with stop.installed():
        if not writes or not is_rank_zero():
            return fit_and_report(cfg, output_dir, stop, writes)
        with owned(output_dir, resuming=bool(cfg.get("ckpt_path")), overwrite=cfg.overwrite):
            return fit_and_report(cfg, output_dir, stop, writes)


def fit_and_report(cfg: DictConfig, output_dir: Path, stop: StopOnSignal, writes: bool) -> float | None:
    """Check and build every part, then write, fit and report: nothing is written before every part is built."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resume = resume_point(cfg)
    datamodule = prepared_data(cfg)
    lm = language_model(cfg, datamodule, resume)
    place, precision, accumulate = placed(cfg, lm)
    callbacks = run_callbacks(cfg, output_dir, stop)
    if writes and is_rank_zero():
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    loggers = make_loggers(cfg.get("logger"), lm.record.wandb_id, resume.step) if writes else []
    with wandb_run_finished(loggers):
        trainer: L.Trainer = instantiate(trainer_node(cfg), precision=precision, callbacks=callbacks, logger=loggers,
                                         accumulate_grad_batches=accumulate,
                                         val_check_interval=validation_interval(cfg) * accumulate)
        refuse_ddp_in_multirun(trainer)
        log_config(loggers, lm.record.config)
        announce(cfg, datamodule, place, accumulate, output_dir)
        trainer.fit(lm, datamodule=datamodule, ckpt_path=resume.path, weights_only=True)
        return report_best(trainer, output_dir)


def prepared_data(cfg: DictConfig) -> TokenDataModule:
    """The configured data, prepared (once, by one process) and checked."""
    datamodule = instantiate(cfg.data, block_size=cfg.model.block_size)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tokenizer = datamodule.tokenizer
    log.info("data: %s as %s tokens, a vocabulary of %d, prepared in %s", datamodule.describe_source(),
             tokenizer.kind, tokenizer.vocab_size, datamodule.data_dir)
    return datamodule


def language_model(cfg: DictConfig, datamodule: TokenDataModule, resume: Resume) -> LanguageModel:
    """The configured objective around the configured model, for this data; a resume's checkpoint checked against
    them (its tokenizer, its model, its optimizer and generator states)."""
    tokenizer = datamodule.tokenizer
    model_config = instantiate(cfg.model, vocab_size=tokenizer.vocab_size)
    if resume.path:
        check_tokenizer(resume.record.tokenizer, tokenizer, f"ckpt_path={resume.path}")
        check_same_model(resume.record, model_config, f"ckpt_path={resume.path}")
        log.info("resuming from %s (step %d)", resume.path, resume.step)
    # a resumed run continues its W&B run instead of starting a new one
    wandb_id = resume.record.wandb_id if resume.record and resume.record.wandb_id else secrets.token_hex(4)
    record = CheckpointRecord(model_config, tokenizer.to_dict(), OmegaConf.to_container(cfg, resolve=True), wandb_id)
    lm = build_lm(cfg, model_config, tokenizer, record, datamodule)
    if resume.path:
        check_resumed_state(lm, resume)
    return lm


def placed(cfg: DictConfig, lm: LanguageModel) -> tuple[Placement, str, int]:
    """(where the run trains, its precision, its gradient accumulation): the devices asked for exist and the
    processes fit in memory."""
    place = placement(cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.num_nodes)
    precision = auto_precision(cfg.trainer.precision)
    check_placement(cfg, place, lm, precision)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    return place, precision, gradient_accumulation(cfg, place.world_size)


def run_callbacks(cfg: DictConfig, output_dir: Path, stop: StopOnSignal) -> list[L.Callback]:
    """The callbacks of the ``callbacks`` group, and those every run has: the final validation, the result, the
    stop on a signal and the progress line. A checkpoint monitor that no metric declares is refused here."""
    callbacks = [*instantiate_group(cfg.get("callbacks")), FinalValidation(), RunResult(output_dir), stop]
    for checkpoints in (cb for cb in callbacks if isinstance(cb, Checkpoints)):
        checkpoints.mode  # noqa: B018 (resolved from the metric's declaration, or refused)
    if cfg.trainer.enable_progress_bar:
        callbacks.append(StepProgress(refresh_steps=cfg.trainer.log_every_n_steps))
    return callbacks


def announce(cfg: DictConfig, datamodule: TokenDataModule, place: Placement, accumulate: int,
             output_dir: Path) -> None:
    if cfg.get("global_batch_size"):
        log.info("global batch %d = %d per device x %d device(s) x %d accumulated", cfg.data.batch_size *
                 place.world_size * accumulate, cfg.data.batch_size, place.world_size, accumulate)
    log.info("training %d steps of %d sequences of %d tokens on %s; validating every %d steps and at the last; "
             "run directory %s", cfg.trainer.max_steps, cfg.data.batch_size * place.world_size * accumulate,
             datamodule.block_size, place.describe(), validation_interval(cfg), output_dir)


def check_resumed_state(lm: LanguageModel, resume: Resume) -> None:
    """The checkpoint's optimizer, schedule and generator states are those of this run's (Lightning copies them in
    unchecked), compared with a fresh optimizer and schedule of the model."""
    configured = lm.configure_optimizers()
    optimizer, scheduler = (configured["optimizer"], configured["lr_scheduler"]["scheduler"]) \
        if isinstance(configured, dict) else (configured, None)
    check_training_state(resume.checkpoint, optimizer, scheduler, f"ckpt_path={resume.path}")


def trainer_node(cfg: DictConfig) -> DictConfig:
    """``cfg.trainer`` for Lightning's Trainer: without our own keys, which train() turns into Lightning's."""
    node = cfg.trainer.copy()
    with open_dict(node):
        for key in ("val_every_n_steps", "accumulate_grad_batches"):
            node.pop(key, None)
    return node


def check_placement(cfg: DictConfig, place: Placement, lm: LanguageModel, precision: str) -> None:
    """The devices asked for exist, and CPU processes fit in memory; the estimate per process is logged."""
    if not is_rank_zero():
        return  # the first process checked before it started the others
    per_process = memory_per_process(lm.model, cfg.data.batch_size, cfg.model.block_size, precision)
    refuse_cpu_processes_by_accident(cfg.trainer.accelerator, cfg.trainer.devices, place, per_process)
    check_memory(place, per_process)
    log.info("memory: about %s per process (weights, gradients, AdamW moments and activations at this batch)",
             format_bytes(per_process))


def build_lm(cfg: DictConfig, model_config: ModelConfig, tokenizer: Tokenizer, record: CheckpointRecord | None,
             datamodule: TokenDataModule | None = None) -> LanguageModel:
    """The LightningModule around the configured model, checked against its ``datamodule`` (data it cannot train
    on is refused before a checkpoint is read), from ``init_from`` weights if given."""
    lm = instantiate(cfg.lm, _partial_=True)(model_config=model_config, optimizer=instantiate(cfg.optim),
                                               scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
                                               record=record, tokenizer=tokenizer)
    padded = getattr(model_config, "padded_vocab_size", tokenizer.vocab_size)
    log.info("model: %s with %s parameters over the %d tokens of the %s tokenizer%s", type(lm.model).__name__,
             format_count(lm.model.count_parameters()), tokenizer.vocab_size, tokenizer.kind,
             f" (embedding padded to {padded} rows)" if padded != tokenizer.vocab_size else "")
    if datamodule is not None:
        lm.check_data(datamodule)
    if cfg.get("init_from"):
        load_initial_weights(lm.model, cfg.init_from, tokenizer)
        log.info("initialised the weights from %s", cfg.init_from)
    return lm


def report_best(trainer: L.Trainer, output_dir: Path) -> float | None:
    """Print (and write into the run's log) the best value of the checkpoints' monitor (val/loss, or val/exact_match
    for checkable answers) and its checkpoint, and return it: the value sweeps optimise (rank 0 only; the other ranks
    return None)."""
    if trainer.fast_dev_run:
        if trainer.is_global_zero:
            print("fast dev run passed: a training and a validation batch went through every step of a run; "
                  "nothing was written")
        return None
    result = read_result(output_dir) if trainer.is_global_zero else {}
    if not result:
        return None
    metric = metric_named(result["monitor"], result.get("metrics"))
    line = (f"best {result['monitor']} {metric.format(result['best']) if metric else result['best']} at step "
            f"{result['best_step']} of {result['steps']}, checkpoint {result['best_checkpoint']}")
    print(line)
    logging.getLogger("gpt.summary").info(line)  # the run's log file only (conf/hydra/default.yaml)
    return result["best"]
