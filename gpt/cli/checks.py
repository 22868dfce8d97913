"""The values each command takes, with their types and ranges, checked in one place before any library loads
(a mistake costs a second, not the import of torch and Lightning). The model's values are checked by its config
class (``gpt.models.configs``); keys that were renamed say their new name. The choice lists are their owners'
(tokenizer kinds, example kinds, arithmetic, metric directions), imported from torch-free modules.

Not Hydra's structured configs: a schema dataclass per config group would repeat Lightning's Trainer arguments,
and types alone would still leave every range (a positive lr, a fraction) to check here.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from gpt import UserError
from gpt.data.problems import FORMATS, OPERATIONS
from gpt.data.text import EXAMPLES
from gpt.data.tokenizers import KINDS
from gpt.eval import task_names
from gpt.metrics import MODES

PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true",
              "64", "transformer-engine", "transformer-engine-float16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
ABSENT = object()


@dataclass(frozen=True)
class Rule:
    what: str  # as the error says it: "a positive integer"
    holds: Callable[[object], bool]
    hint: str = ""  # what people usually give

def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def optional(rule: Rule) -> Rule:
    return Rule(f"{rule.what}, or null", lambda value: value is None or rule.holds(value))


def one_of(*choices) -> Rule:
    return Rule(f"one of {', '.join(map(str, choices))}", lambda value: value in choices)


def or_auto(rule: Rule) -> Rule:
    return Rule(f"{rule.what}, or auto", lambda value: value == "auto" or rule.holds(value))


INTEGER = Rule("an integer", is_int)
POSITIVE_INT = Rule("a positive integer", lambda value: is_int(value) and value > 0)
NON_NEGATIVE_INT = Rule("a non-negative integer", lambda value: is_int(value) and value >= 0)
POSITIVE = Rule("a positive number", lambda value: is_number(value) and value > 0)
NON_NEGATIVE = Rule("a non-negative number", lambda value: is_number(value) and value >= 0)
FRACTION = Rule("a number between 0 and 1 (exclusive)", lambda value: is_number(value) and 0 < value < 1)
UP_TO_ONE = Rule("a number above 0 and at most 1", lambda value: is_number(value) and 0 < value <= 1)
BOOLEAN = Rule("true or false", lambda value: isinstance(value, bool))
TEXT = Rule("a text", lambda value: isinstance(value, str))
MASK_SHARE = Rule("between 0 and 1 (exclusive)", lambda value: value is None or FRACTION.holds(value), "BERT uses 0.15")
DEVICES = Rule("a positive number of devices, -1 or auto (all), or a list of device indices",
               lambda value: value in ("auto", -1) or (is_int(value) and value > 0)
               or (isinstance(value, str) and all(part.strip().isdigit() for part in value.split(",") if part.strip()))
               or (isinstance(value, (list, tuple)) and bool(value) and all(is_int(i) and i >= 0 for i in value)))

DATA = {
    "data.text_path": optional(TEXT), "data.dataset": optional(TEXT), "data.text_field": TEXT,
    "data.min_chars": NON_NEGATIVE_INT, "data.max_non_alpha": optional(UP_TO_ONE), "data.shard_tokens": POSITIVE_INT,
    "data.tokenizer": one_of(*KINDS), "data.vocab_size": optional(POSITIVE_INT),
    "data.val_fraction": FRACTION, "data.example": one_of(*EXAMPLES), "data.num_proc": optional(POSITIVE_INT),
}

TASKS = Rule("a list of tasks of conf/eval/", lambda value: isinstance(value, list) and all(
    name in task_names() for name in value), f"the tasks are {', '.join(task_names())}")

TRAIN = {
    **DATA, "callbacks.eval_tasks.tasks": TASKS,
    "seed": INTEGER, "global_batch_size": optional(POSITIVE_INT), "overwrite": BOOLEAN,
    "optim.lr": POSITIVE, "optim.weight_decay": NON_NEGATIVE,
    "scheduler.warmup_steps": NON_NEGATIVE_INT, "scheduler.min_lr": NON_NEGATIVE,
    "trainer.max_steps": POSITIVE_INT, "trainer.val_every_n_steps": or_auto(POSITIVE_INT),
    "trainer.log_every_n_steps": POSITIVE_INT, "trainer.accumulate_grad_batches": POSITIVE_INT,
    "trainer.num_nodes": POSITIVE_INT, "trainer.devices": DEVICES, "trainer.accelerator": one_of(*ACCELERATORS),
    "trainer.precision": one_of(*PRECISIONS), "trainer.gradient_clip_val": optional(POSITIVE),
    "data.batch_size": POSITIVE_INT, "data.val_windows": optional(POSITIVE_INT), "data.num_workers": NON_NEGATIVE_INT,
    "data.bucket_batches": POSITIVE_INT, "data.pad_multiple": POSITIVE_INT, "data.mlm_probability": MASK_SHARE,
    "data.operation": one_of(*OPERATIONS), "data.digits": POSITIVE_INT, "data.format": one_of(*FORMATS),
    "data.zero_pad": BOOLEAN,
    "data.train_examples": POSITIVE_INT, "data.test_examples": POSITIVE_INT, "data.eval_examples": POSITIVE_INT,
    "lm.compile": one_of(True, False, "auto"), "lm.max_nonfinite_skips": optional(NON_NEGATIVE_INT),
    "callbacks.checkpoints.every_n_train_steps": optional(POSITIVE_INT),
    "callbacks.checkpoints.mode": optional(one_of(*MODES)),
    "callbacks.text_samples.max_new_tokens": NON_NEGATIVE_INT, "callbacks.text_samples.temperature": NON_NEGATIVE,
    "callbacks.text_samples.top_k": optional(POSITIVE_INT),
}

# sample.py's bound on new tokens: about 50 pages of text; more in several calls (each from the end of the last)
MAX_NEW_TOKENS = 100_000

SAMPLE = {
    "max_new_tokens": Rule(f"a non-negative integer of at most {MAX_NEW_TOKENS:,}",
                           lambda value: is_int(value) and 0 <= value <= MAX_NEW_TOKENS,
                           "generate a longer text in several calls, each from the end of the last"), "num_samples": POSITIVE_INT, "temperature": NON_NEGATIVE,
    "top_k": optional(POSITIVE_INT), "top_p": optional(UP_TO_ONE), "candidates": POSITIVE_INT, "seed": INTEGER,
    "use_cache": BOOLEAN, "device": optional(TEXT), "answer_only": BOOLEAN, "quantize": optional(one_of("int8")),
    "completion": optional(TEXT),
}

PREPARE = DATA

SERVE = {
    "ckpt_path": TEXT, "host": TEXT, "port": Rule("a port number from 0 to 65535 (0: any free port)",
                                                   lambda value: is_int(value) and 0 <= value <= 65535),
    "name": optional(TEXT), "api_key": optional(TEXT), "device": optional(TEXT), "max_batch_size": POSITIVE_INT,
    "batch_wait_ms": NON_NEGATIVE, "max_tokens": POSITIVE_INT, "default_max_tokens": POSITIVE_INT,
    "max_n": POSITIVE_INT, "max_requests": POSITIVE_INT, "max_body_bytes": POSITIVE_INT, "use_cache": BOOLEAN,
    "threads": optional(POSITIVE_INT),
}

EXPORT = {"ckpt_path": TEXT, "out_dir": TEXT, "overwrite": BOOLEAN}

MAKE_PAIRS = {
    **DATA, "ckpt_path": TEXT, "out_path": TEXT, "temperature": POSITIVE, "problems": optional(POSITIVE_INT),
    "held_out": BOOLEAN, "batch_size": POSITIVE_INT, "seed": INTEGER,
    "samples": Rule("an integer of at least 2", lambda value: is_int(value) and value >= 2,
                    "a pair needs a right and a wrong answer to the same problem: 8 is usual"),
}

TEXTS = Rule("a text or a list of texts", lambda value: isinstance(value, str) or (
    isinstance(value, list) and value and all(isinstance(v, str) for v in value)))
EVALUATE = {"ckpt_path": TEXTS, "text_file": optional(TEXT), "choices_file": optional(TEXT),
            "answers_file": optional(TEXT), "batch_size": POSITIVE_INT, "device": optional(TEXT),
            "out_path": TEXT}

# keys of earlier versions, and the key that took their place (prepare.py's were top-level keys before it composed
# the same data group as train.py)
RENAMED = {
    "trainer.val_check_interval": "trainer.val_every_n_steps (it counts optimizer steps)",
    "data.block_size": "model.block_size (one sequence length for the model and the data)",
    "data.max_length": "model.block_size (one sequence length for the model and the data)",
    **{key: f"data.{key}" for key in ("text_path", "tokenizer", "vocab_size", "example", "val_fraction")},
    "cache_dir": "paths.data_dir", "num_proc": "data.num_proc",
}


# the keys that name files the command reads, and what to give there
PATHS = {
    "data.text_path": "a UTF-8 text file or a directory of *.txt files (a JSONL file for data=jsonl; parquet, JSONL "
                      "or a saved dataset for data=corpus)",
    "data.val_path": "a JSONL file of validation examples, or null",
    "init_from": "one of our .ckpt files or a directory of Hugging Face GPT-2 weights",
}


def check_paths(cfg: DictConfig) -> None:
    """The files the command names exist (a path made of ``${...}`` that only Hydra's run resolves is checked when
    the job runs)."""
    for key, what in PATHS.items():
        try:
            path = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        except InterpolationResolutionError:
            continue
        if isinstance(path, str) and not Path(path).exists():
            raise UserError(f"{key}={path}: no such file or directory; give {what}")


def check_model(node: DictConfig) -> None:
    """The model's values, checked by its config class (before the tokenizer gives it its vocabulary size)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        instantiate(node, vocab_size=1)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise


def check_values(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    """Stop with one line at the first value that breaks its rule, or the first key that was renamed."""
    for old, new in RENAMED.items():
        if OmegaConf.select(cfg, old, default=None, throw_on_missing=False, throw_on_resolution_failure=False) \
                is not None:
            raise UserError(f"{old} is now {new}")
    for key, rule in rules.items():
        try:
            value = OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=False)
        except InterpolationResolutionError:
            continue  # depends on Hydra's run (a path): checked when the job runs
        if value is ABSENT:  # not in this config, or required and missing (gpt.cli.check_config says so)
            continue
        if isinstance(value, (ListConfig, DictConfig)):
            value = OmegaConf.to_object(value)
        if not rule.holds(value):
            raise UserError(f"{key} must be {rule.what}, got {value!r}" + (f"; {rule.hint}" if rule.hint else ""))

