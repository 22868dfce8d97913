"""What the entry points (train.py, sample.py, prepare.py, export.py) share: every mistake as one line and exit
status 2 (Hydra's own included), required values, checked values, the run directory, and how a stop ends."""

import difflib
import os
import shlex
import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, InstantiationException, MissingConfigException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from gpt import RunStopped, TrainingDiverged, UserError
from gpt.arithmetic import check_arithmetic
from gpt.checks import RENAMED, Rule, check_init_from, check_model, check_values
from gpt.compat import hydra_error_key
from gpt.context import in_multirun, is_rank_zero
from gpt.rundir import SWEEP_LOCK_FILE, check_run_dir, hold_until_exit, remove_unstarted_run

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# config groups that need an extra package, and the command that installs it
EXTRAS = {"hydra/sweeper/optuna": ("sweep=optuna", "optuna"),
          "hydra/launcher/submitit_slurm": ("hydra/launcher=slurm", "slurm")}


@contextmanager
def report_user_errors(run_dir: str | None = None):
    """Turn a UserError (also one raised inside Hydra's instantiate), a library's refusal of a value given to it
    through instantiate, or a diverged single run into one line on stderr and exit status 2; a stopped run into its
    message and 128 + the signal's number. HYDRA_FULL_ERROR=1 shows the traceback instead. A single run refused
    before it trains removes ``run_dir`` if it holds only Hydra's record and the log of this command."""
    try:
        yield
    except RunStopped as stop:
        if stop.step is None and run_dir and Path(run_dir).resolve() in RunDirectory.created and is_rank_zero():
            remove_unstarted_run(run_dir)
        print(stopped_message(stop, run_dir), file=sys.stderr)
        sys.exit(128 + getattr(signal, stop.signal, signal.SIGTERM))  # another rank's signal: as SIGTERM
    except TrainingDiverged as e:
        if in_multirun() or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # Hydra records the failed job and the sweep goes on
        fail(str(e))
    except (UserError, InstantiationException) as e:
        cause = e if isinstance(e, UserError) else e.__cause__
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or cause is None:
            raise
        if run_dir and Path(run_dir).resolve() in RunDirectory.created and is_rank_zero():
            remove_unstarted_run(run_dir)
        fail(str(cause) if isinstance(cause, UserError) else refused_value(e))


def refused_value(error: InstantiationException) -> str:
    """A library's error for a value it was given (Lightning's Trainer: ``trainer.precision=bogus``), in one line."""
    target = str(error).split("'")[1] if "'" in str(error) else "a config node"
    reason = str(error.__cause__).strip().splitlines()[0] if str(error.__cause__).strip() else ""
    return f"{target} refused its arguments: {type(error.__cause__).__name__}: {reason}"


def stopped_message(stop: RunStopped, run_dir: str | None) -> str:
    if stop.step is None:
        return f"stopped by {stop.signal}; nothing half-written was kept"
    resume = f"resume with: {resume_command(run_dir)}" if run_dir else "resume with ckpt_path=last"
    if not stop.saved:
        return f"stopped at step {stop.step} by {stop.signal}, without saving it; {resume} (from its last checkpoint)"
    return f"stopped at step {stop.step} by {stop.signal}; {resume}"


def resume_command(run_dir: str) -> str:
    """The command that resumes the run in ``run_dir``: this command's overrides, with the run directory and
    ``ckpt_path=last`` (a path under the working directory relative to it, as users type it)."""
    from hydra.core.hydra_config import HydraConfig

    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    kept = [o for o in given if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "overwrite", "hydra.run.dir")]
    directory = Path(run_dir).resolve()
    if directory.is_relative_to(Path.cwd()):
        directory = directory.relative_to(Path.cwd())
    return shlex.join(["python", "train.py", *kept, f"hydra.run.dir={directory}", "ckpt_path=last"])


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def stop_now(signum: int, frame) -> None:
    raise RunStopped(signal.Signals(signum).name, saved=False)


@contextmanager
def stopped_by_signals():
    """While the block runs, SIGTERM, SIGINT and SIGUSR1 stop it at once with ``RunStopped`` (SIGTERM would end the
    process without its clean-up: a temporary file, a directory made for the work); the handlers before are restored
    after. (A training run has its own: ``gpt.callbacks.StopOnSignal`` saves a checkpoint first.)"""
    previous = {signum: signal.signal(signum, stop_now) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def default_signals_in_child() -> None:
    """A forked process (an encoding worker) takes the default action on the signals: the parent stops the work."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is stop_now:
            signal.signal(signum, signal.SIG_DFL)


os.register_at_fork(after_in_child=default_signals_in_child)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


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


# --------------------------------------------------------------------------- the command line, before Hydra runs


def check_command_line(config_name: str, rules: dict[str, Rule], args: list[str] | None = None,
                       also: Callable[[DictConfig, list[str]], None] | None = None) -> None:
    """Compose the config of ``args`` as Hydra will and check it (``check_config``) before Hydra writes anything or
    any library loads: what Hydra would print as a multi-line error (a misspelled key, an unknown option, an
    override it cannot parse, a missing extra) and every bad value become one line and exit status 2. Sweeps
    (``-m``) are checked with the first value of each swept key, the others when their job starts."""
    args = sys.argv[1:] if args is None else args
    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in args):
        return  # --help, --cfg and the like: Hydra's own business
    overrides = [arg for arg in args if arg not in ("-m", "--multirun")]
    with report_user_errors():
        try:
            cfg = compose_probe(config_name, overrides)
        except HydraException as e:
            raise UserError(hydra_error(e, config_name, overrides)) from None
        check_config(cfg, f"python {config_name}.py", rules)
        if also:
            also(cfg, overrides)


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
        options = ", ".join(error.options or [])
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


# --------------------------------------------------------------------------- the run directory


class RunDirectory(Callback):
    """Hydra callback: check the run (or sweep) directory before Hydra writes into it, and hold it from then on: a
    location that cannot be written, a directory that another live run holds, or one that holds an earlier run that
    this command would overwrite, is one line, and nothing is written. It fails closed: whatever goes wrong while
    checking stops the command (Hydra would turn an error of a callback into a warning and go on)."""

    created: set[Path] = set()  # the run directories that this command's single run creates

    def on_run_start(self, config, **kwargs) -> None:
        directory = Path(config.hydra.run.dir)
        if not directory.exists():
            RunDirectory.created.add(directory.resolve())
        with failing_closed(directory):
            check_writable(directory, "hydra.run.dir")
            if is_rank_zero() and not config.trainer.get("fast_dev_run"):
                hold_until_exit(directory)
                check_run_dir(directory, resuming=bool(config.get("ckpt_path")),
                              overwrite=bool(config.get("overwrite")))
                if config.get("ckpt_path"):
                    check_resume(config.ckpt_path, config.hydra.run.dir, config.model,
                                 (config.get("callbacks") or {}).get("checkpoints"))

    def on_multirun_start(self, config, **kwargs) -> None:
        directory = Path(config.hydra.sweep.dir)
        with failing_closed(directory):
            check_writable(directory, "hydra.sweep.dir")
            if not is_rank_zero():
                return
            hold_until_exit(directory, SWEEP_LOCK_FILE, "sweep", "hydra.sweep.dir")
            jobs = sorted(str(p) for p in directory.glob("*/metrics.csv"))
            if jobs and not config.get("overwrite") and not config.get("ckpt_path"):
                raise UserError(f"{directory} already holds the runs of a sweep ({len(jobs)}); choose another "
                                "hydra.sweep.dir=..., or start over with overwrite=true")


@contextmanager
def failing_closed(directory: Path):
    """Any error of the block is one line and exit status 2, and a run directory that the command created is
    removed again."""
    try:
        yield
    except Exception as e:
        if directory.resolve() in RunDirectory.created:
            remove_unstarted_run(directory)
        fail(str(e) if isinstance(e, UserError) else f"checking {directory} failed ({type(e).__name__}: {e})")


def check_resume(ckpt_path: str, run_dir: str, model: DictConfig, checkpoints: DictConfig | None) -> None:
    """A resumed run's checkpoint is there, holds the configured model and kept its best by the same monitor: a
    failed resume leaves the run's files as they were. (A quick look at the checkpoint's record; train() then reads
    and checks the whole file.)"""
    from hydra.utils import instantiate

    from gpt.checkpoint import check_same_model, resume_checkpoint

    path, _, record = resume_checkpoint(ckpt_path, run_dir, verify=False)
    check_same_model(record, instantiate(model, vocab_size=1), f"ckpt_path={path}")
    kept = (record.config.get("callbacks") or {}).get("checkpoints") or {}
    for key, default in (("monitor", "val/loss"), ("mode", "min")):  # a loss would be compared with an accuracy
        given = checkpoints.get(key, default) if checkpoints else None
        if checkpoints and key in kept and kept[key] != given:
            raise UserError(f"ckpt_path={path} kept its best checkpoint by callbacks.checkpoints.{key}={kept[key]}, "
                            f"not {given}; resume with the options it was trained with (its experiment=, if any)")


def check_train(cfg: DictConfig, overrides: list[str]) -> None:
    """What else train.py checks before Hydra writes anything: the checkpoint to resume from and ``init_from`` exist,
    arithmetic can make the problems asked for, and the GPUs asked for exist (torch loads only when it asks for GPUs
    or several devices)."""
    check_resume_source(cfg.get("ckpt_path"), overrides)
    if cfg.get("init_from"):
        check_init_from(cfg.init_from)
    if cfg.data.get("_target_", "").endswith(".ArithmeticDataModule"):  # enough distinct problems
        data = cfg.data
        check_arithmetic(data.operation, data.digits, data.format, data.train_examples, data.test_examples)
    trainer = cfg.trainer
    if trainer.accelerator in ("gpu", "cuda") or trainer.devices not in (1, "1", "auto"):
        from gpt.devices import placement

        placement(trainer.accelerator, OmegaConf.to_object(trainer.devices) if isinstance(trainer.devices, ListConfig)
                  else trainer.devices, trainer.num_nodes)


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


def check_writable(directory: Path, override: str) -> None:
    """Create ``directory`` and write a file in it, or stop with one line naming the problem."""
    probe = directory / f".write-test.{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the output directory {directory} ({e.strerror or e}); choose another with "
                        f"{override}=...") from None
