"""The command line, checked before Hydra writes anything or any library loads: the config composed as Hydra will
compose it, its required values, every value's type and range (``gpt.cli.checks``), and what Hydra would say in
many lines (a misspelled key, an unknown option, an override it cannot parse, a missing extra) in one."""

import difflib
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from gpt import UserError
from gpt.cli.checks import RENAMED, Rule, check_model, check_paths, check_values
from gpt.cli.errors import report_user_errors
from gpt.compat import hydra_error_key
from gpt.eval import declare_task_metrics

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# config groups that need an extra package, and the command that installs it
EXTRAS = {"hydra/sweeper/optuna": ("sweep=optuna", "optuna"),
          "hydra/launcher/submitit_slurm": ("hydra/launcher=slurm", "slurm")}


def check_config(cfg: DictConfig, command: str, rules: dict[str, Rule]) -> None:
    """Required values (``???``) that are missing, then each value's type and range, and the model's: one line for
    the first problem."""
    missing = missing_keys(cfg)
    if missing:
        example = " ".join(f"{key}=..." for key in missing)
        raise UserError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required; "
                        f"give {'it' if len(missing) == 1 else 'them'} on the command line: {command} {example}")
    check_values(cfg, rules)
    if "_target_" in cfg.get("model", {}):
        check_model(cfg.model)


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """The keys whose value is ``???``; interpolations are not resolved (before Hydra runs, ``${hydra:...}`` can't
    be)."""
    found = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            found.extend(missing_keys(cfg[key], f"{prefix}{key}."))
    return found


def check_command_line(config_name: str, rules: dict[str, Rule], args: list[str] | None = None,
                       also: Callable[[DictConfig, list[str]], None] | None = None, doc: str = "") -> None:
    """Compose the config of ``args`` as Hydra will and check it (``check_config``) before Hydra writes anything or
    any library loads: what Hydra would print as a multi-line error (a misspelled key, an unknown option, an
    override it cannot parse, a missing extra) and every bad value become one line and exit status 2. Sweeps
    (``-m``) are checked with the first value of each swept key, the others when their job starts."""
    args = sys.argv[1:] if args is None else args
    if {"--help", "-h"} & set(args):
        print(command_help(config_name, doc))
        sys.exit(0)
    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in args):
        return  # --cfg, --hydra-help and the like: Hydra's own business
    overrides = [arg for arg in args if arg not in ("-m", "--multirun")]
    with report_user_errors():
        try:
            cfg = compose_probe(config_name, overrides)
        except HydraException as e:
            raise UserError(hydra_error(e, config_name, overrides)) from None
        check_config(cfg, f"python {config_name}.py", rules)
        if also:
            also(cfg, overrides)


def command_help(config_name: str, doc: str) -> str:
    """``--help`` of an entry point: what it does (``doc``), the config groups it composes with their options, and
    its own keys with what they mean (the comments of ``conf/<config_name>.yaml``)."""
    lines = (CONF_DIR / f"{config_name}.yaml").read_text().splitlines()
    groups, keys, block = [], [], None
    for line in lines:
        if line and not line.startswith((" ", "#")):
            block = line.split(":")[0]
        if block == "defaults" and (found := re.match(r"\s+- (\w+): \w+", line)):
            options = sorted(p.stem for p in (CONF_DIR / found[1]).glob("*.yaml") if not p.stem.startswith("_"))
            groups.append(f"  {found[1]}: {', '.join(options)}")
        elif block not in ("defaults", "hydra"):
            keys.append(line)
    parts = [doc.strip(), f"Usage: python {config_name}.py [key=value ...]"]
    if groups:
        parts.append("Config groups (group=option; each option is conf/<group>/<option>.yaml):\n" + "\n".join(groups))
    parts.append(f"Keys (conf/{config_name}.yaml):\n" + "\n".join(f"  {line}" for line in keys if line.strip()))
    parts.append(f"The whole composed config: python {config_name}.py --cfg job")
    return "\n\n".join(parts)


def compose_probe(config_name: str, overrides: list[str]) -> DictConfig:
    """The config as Hydra will compose it, with the first value of each sweep."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=first_of_each_sweep(overrides))


def first_of_each_sweep(overrides: list[str]) -> list[str]:
    """The overrides, each sweep (``a=1,2``, ``range(...)``) replaced by its first value; searches that only a
    sweeper understands (``interval(...)``) are left out."""
    probe = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            probe.append(override.input_line)
        elif not override.is_interval_sweep():
            first = next(override.sweep_string_iterator(), None)
            if first is not None:
                probe.append(f"{override.get_key_element()}={first}")
    return probe


def hydra_error(error: HydraException, config_name: str, overrides: list[str]) -> str:
    message = str(error).strip()
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        if error.missing_cfg_file in EXTRAS:
            choice, extra = EXTRAS[error.missing_cfg_file]
            return f"{choice} needs an extra package: pip install -e '.[{extra}]'"
        options = ", ".join(o for o in error.options or [] if not o.startswith("_"))  # _common: shared keys
        return f"{group}={option} is not an option; choose one of {options}"
    if named := hydra_error_key(message):
        what, key = named
        if what == "unknown":
            return unknown_key(key, config_name, overrides)
        return f"{key} is already in the config: give it without +, as {key}=..."
    if isinstance(error, ConfigCompositionException) and error.__cause__ is not None:
        message = str(error.__cause__).strip()
        key = next((line.split(":", 1)[1].strip() for line in message.splitlines() if "full_key:" in line), None)
        return f"{key}: {message.splitlines()[0]}" if key else message.splitlines()[0]
    return f"{message.splitlines()[0]} (see https://hydra.cc/docs/advanced/override_grammar/basic)"


def unknown_key(key: str, config_name: str, overrides: list[str]) -> str:
    """A key the config has not: its new name if it was renamed, else the closest key that exists."""
    if key in RENAMED:
        return f"{key} is now {RENAMED[key]}"
    keys = config_keys(config_name, [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key])
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f" (python {config_name}.py --cfg job lists them)"
    return f"{key} is not a config key{hint}"


def config_keys(config_name: str, overrides: list[str]) -> list[str]:
    """Every dotted key of the composed config (without Hydra's own)."""
    try:
        cfg = compose_probe(config_name, overrides)
    except HydraException:
        return []
    keys = []

    def walk(node: DictConfig, prefix: str) -> None:
        for name in node:
            key = f"{prefix}{name}"
            keys.append(key)
            if not OmegaConf.is_interpolation(node, name) and isinstance(node[name], DictConfig):
                walk(node[name], f"{key}.")

    walk(cfg, "")
    return keys


def check_train(cfg: DictConfig, overrides: list[str]) -> None:
    """What else train.py checks before Hydra writes anything: the checkpoint to resume from and the files the
    command names exist, and the devices asked for are there (torch loads only when it asks for GPUs or several
    devices)."""
    check_resume_source(cfg.get("ckpt_path"), overrides)
    check_paths(cfg)
    objective = str(cfg.lm.get("_target_", "")).rsplit(".", 1)[-1]
    if objective in ("DPO", "GRPO") and not cfg.get("init_from"):
        raise UserError(f"lm={objective.lower()} needs init_from=<an SFT run>/checkpoints/best.ckpt: its weights start "
                        "the policy and are the frozen reference")
    for task in cfg.get("callbacks", {}).get("eval_tasks", {}).get("tasks") or []:
        declare_task_metrics(task)  # a sweep may optimise one of them
    trainer = cfg.trainer
    if trainer.accelerator in ("gpu", "cuda") or trainer.devices not in (1, "1", "auto"):
        from gpt.training.devices import refuse_missing_devices

        refuse_missing_devices(cfg)


def check_resume_source(ckpt_path: str | None, overrides: list[str]) -> None:
    """``ckpt_path=last`` resumes the run of a directory that is named (a new dated directory holds none), and a
    checkpoint file given must exist: refused before Hydra makes a run directory."""
    if not ckpt_path:
        return
    given = {override.split("=", 1)[0] for override in overrides}
    if ckpt_path == "last" and not {"hydra.run.dir", "hydra.sweep.dir"} & given:
        raise UserError("ckpt_path=last resumes the run of a directory, and a new one is made for this command; name "
                        "the run's directory: python train.py hydra.run.dir=<its directory> ckpt_path=last")
    if ckpt_path != "last" and not Path(ckpt_path).is_file():
        raise UserError(f"checkpoint not found: {ckpt_path}; pass ckpt_path=<run dir>/checkpoints/last.ckpt, or "
                        "ckpt_path=last with hydra.run.dir=<run dir>")


