"""The validation metrics, each declared once, and the result of a run (``result.json``).

A metric's declaration says its name as logged, its key in result.json, which way is better, its label and format
in tables, and whether the progress bar shows it. Everything that keeps, shows or compares runs reads it from here:
the checkpoint callback (``callbacks.checkpoints.monitor=val/exact_match`` alone keeps the highest), result.json,
the progress bar, W&B's summary, the sweep table and its ranking, ``gpt.eval.compare`` and Optuna's direction
(``${metric_direction:...}`` in a config). A new metric is one ``declare(Metric(...))`` beside the code that logs
it. ``result.json`` records the declarations of the metrics its run logged, so that a process that never imported
their module (a comparison, a sweep's table) reads them from there. No torch here.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf

from gpt.files import atomic_write_text

RESULT_FILE = "result.json"
MODES = ("min", "max")  # which way a metric is better


@dataclass(frozen=True)
class Metric:
    name: str  # as logged: "val/exact_match"
    key: str  # in result.json and the sweep table: "exact_match"
    mode: str  # "min" (a loss) or "max" (an accuracy)
    label: str  # in tables and plots: "exact match"
    fmt: str = ".4f"  # how a value is printed
    progress_bar: bool = False  # shown on the progress line

    def better(self, value: float, than: float) -> bool:
        return value < than if self.mode == "min" else value > than

    def best(self, values):
        return (min if self.mode == "min" else max)(values)

    def format(self, value: float) -> str:
        return format(value, self.fmt)


METRICS: dict[str, Metric] = {}


def declare(metric: Metric) -> Metric:
    """Make ``metric`` known to everything that keeps, shows or compares runs (a module that logs a new metric
    declares it at import)."""
    if metric.mode not in MODES:
        raise ValueError(f"{metric.name}: mode must be one of {MODES}, not {metric.mode!r}")
    METRICS[metric.name] = metric
    return metric


VAL_LOSS = declare(Metric("val/loss", "val_loss", "min", "val/loss", progress_bar=True))
# the validation loss in bits per UTF-8 byte of the text: runs of different tokenizers compare on it
BITS_PER_BYTE = declare(Metric("val/bpb", "bpb", "min", "bits per byte", progress_bar=True))
EXACT_MATCH = declare(Metric("val/exact_match", "exact_match", "max", "exact match", ".3f", progress_bar=True))
DIGIT_ACC = declare(Metric("val/digit_acc", "digit_acc", "max", "digit accuracy", ".3f", progress_bar=True))
MLM_ACC = declare(Metric("val/mlm_acc", "mlm_acc", "max", "masked-token accuracy", ".4f", progress_bar=True))
# preference objectives (lm=dpo): the share of held-out pairs whose chosen completion is rewarded more, the mean
# reward difference, and the policy's mean log-probability of the chosen and the rejected completions
REWARD_ACC = declare(Metric("val/reward_acc", "reward_acc", "max", "reward accuracy", ".3f", progress_bar=True))
MARGIN = declare(Metric("val/margin", "margin", "max", "reward margin", ".3f"))
CHOSEN_LOGP = declare(Metric("val/chosen_logp", "chosen_logp", "max", "chosen log-prob", ".2f"))
REJECTED_LOGP = declare(Metric("val/rejected_logp", "rejected_logp", "min", "rejected log-prob", ".2f"))
# reward models (lm=reward): the share of held-out pairs whose chosen completion scores higher
PAIR_ACC = declare(Metric("val/pair_acc", "pair_acc", "max", "pair accuracy", ".3f", progress_bar=True))
# reinforcement learning (lm=grpo), of each step's sampled completions: the mean reward, the share of exactly right
# answers (pass@1) and of prompts with at least one among their group (pass@G), the share of groups whose rewards
# are all equal (no signal to learn from), the KL to the reference, the share of the step spent sampling and its speed
REWARD = declare(Metric("train/reward", "reward", "max", "reward", ".3f", progress_bar=True))
PASS_AT_1 = declare(Metric("train/pass@1", "pass_at_1", "max", "pass@1", ".3f"))
PASS_AT_G = declare(Metric("train/pass@G", "pass_at_g", "max", "pass@G", ".3f"))
NO_SIGNAL = declare(Metric("train/no_signal", "no_signal", "min", "groups without signal", ".3f"))
POLICY_KL = declare(Metric("train/kl", "kl", "min", "KL to the reference", ".4f"))
GENERATION_SHARE = declare(Metric("train/generation_share", "generation_share", "min", "share of step time sampling",
                                  ".2f"))
SAMPLED_TOKENS_PER_S = declare(Metric("train/sampled_tok_per_s", "sampled_tok_per_s", "max", "sampled tokens/s",
                                      ".0f"))


def metric_named(name: str, declared: dict | None = None) -> Metric | None:
    """The declaration of ``name``: this process's, or one that a result.json records (``declared``)."""
    if name in METRICS:
        return METRICS[name]
    record = (declared or {}).get(name)
    return Metric(**record) if isinstance(record, dict) else None


def direction(name: str) -> str:
    """``minimize`` or ``maximize``: what an optimiser of ``name`` does (Optuna's ``direction``)."""
    metric = metric_named(name)
    if metric is None:
        raise ValueError(f"{name} is not a declared metric (known: {', '.join(METRICS)})")
    return "minimize" if metric.mode == "min" else "maximize"


OmegaConf.register_new_resolver("metric_direction", direction, replace=True)


# --------------------------------------------------------------------------- result.json


def declarations(names) -> dict:
    """The declarations of the metrics among ``names``, as result.json records them."""
    return {name: asdict(METRICS[name]) for name in names if name in METRICS}


def write_result(output_dir: str | Path, result: dict) -> None:
    atomic_write_text(Path(output_dir) / RESULT_FILE, json.dumps(result, indent=1) + "\n")


def read_result(output_dir: str | Path) -> dict:
    """What the run in ``output_dir`` wrote; empty if it did not finish."""
    path = Path(output_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def remove_result(output_dir: str | Path) -> None:
    (Path(output_dir) / RESULT_FILE).unlink(missing_ok=True)
