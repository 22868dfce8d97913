"""Real multiruns of train.py: grids (Hydra's basic sweeper), Optuna searches, the summary table, the DDP refusal."""

import csv
import itertools
import time

import matplotlib.pyplot as plt
import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from gpt.eval.compare import find_runs, swept

from conftest import REPO, compose_train, sweep_tiny
from wandb_offline import offline_runs


def read_summary(sweep_dir) -> list[dict]:
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def override(row: dict, key: str) -> str:
    """The value a job's overrides give ``key``."""
    return dict(o.split("=", 1) for o in row["overrides"].split(","))[key]


def table_lines(stdout: str) -> list[str]:
    """The printed table's job lines, after its header."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["job", "val/loss"])
    table = []
    for line in lines[header + 1:]:
        if not line.split() or not line.split()[0].isdigit():
            break
        table.append(line)
    return table


def test_grid_jobs_are_separate_wandb_runs_in_one_group_and_summarised(tmp_path, wandb_env):
    sweep_dir = tmp_path / "sweep"
    result = sweep_tiny(sweep_dir, "logger=wandb", "optim.lr=1e-3,3e-3", env=wandb_env)
    assert result.returncode == 0, result.stderr

    rows = read_summary(sweep_dir)
    assert [row["job"] for row in rows] == ["1", "0"]  # lr 3e-3 learns faster in 60 steps: sorted by loss
    assert float(rows[0]["val_loss"]) < float(rows[1]["val_loss"])
    assert all(row["status"] == "completed" and row["steps"] == "60" and float(row["wall_s"]) > 0 for row in rows)
    assert override(rows[0], "optim.lr") == "0.003"

    lines = table_lines(result.stdout)
    assert len(lines) == 2 and lines[0].split()[0] == "1" and lines[0].endswith("optim.lr=0.003")
    assert f"{float(rows[0]['val_loss']):.4f}" in lines[0]

    runs = [offline_runs(sweep_dir / job) for job in ("0", "1")]
    assert all(len(job_runs) == 1 for job_runs in runs)  # wandb.finish() between jobs: one run each
    (run0,), (run1,) = runs
    assert run0.path.name != run1.path.name
    assert run0.group == run1.group == str(sweep_dir)
    assert "optim.lr=0.001" in run0.name.split(",") and run0.config["optim"]["lr"] == 1e-3
    assert "optim.lr=0.003" in run1.name.split(",") and run1.config["optim"]["lr"] == 3e-3

    # the sweep ends with its plots: the val/loss curves and the best val/loss against the learning rate
    curves, best = plt.imread(sweep_dir / "val_loss_curves.png"), plt.imread(sweep_dir / "best_val_loss.png")
    assert curves.shape[0] > 300 and best.shape[0] > 300 and curves.std() > 0.01
    runs = find_runs([sweep_dir])
    assert swept(runs) == ["optim.lr"] and [run.curves["val/loss"][0] for run in runs] == [[30, 60], [30, 60]]
    assert [run.best["val/loss"] for run in runs] == [float(rows[1]["val_loss"]), float(rows[0]["val_loss"])]


@pytest.mark.slow  # a failed job in a sweep; the diverging run alone is test_bad_input's
def test_a_diverged_trial_is_recorded_as_failed_and_the_search_goes_on(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # only the learning rate is searched; TPE's seeded first trials pick 3e-3, then 1e30 (which diverges)
    result = sweep_tiny(sweep_dir, "sweep=optuna", "hydra.sweeper.n_trials=2", "optim.lr=choice(3e-3,1e30)",
                        "model.dropout=0", "trainer.max_steps=20", "trainer.val_every_n_steps=10")
    assert result.returncode == 0, result.stderr
    rows = read_summary(sweep_dir)
    assert [(row["status"], override(row, "optim.lr")) for row in rows] == [("completed", "0.003"), ("failed", "1e+30")]
    assert rows[1]["error"].startswith("TrainingDiverged: the loss or its gradient was NaN or infinite")
    assert "failed" in table_lines(result.stdout)[1]
    assert yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["best_params"] == {"optim.lr": 0.003}


def test_ddp_inside_a_multirun_is_refused(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep_tiny(sweep_dir, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                        "optim.lr=1e-3,3e-3")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: trainer.strategy=ddp cannot run inside a multirun") and "ddp_spawn" in line
    assert not (sweep_dir / "summary.csv").exists() and not (sweep_dir / "0" / "checkpoints").exists()


@pytest.mark.slow
def test_ddp_spawn_inside_a_multirun_works(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep_tiny(sweep_dir, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn",
                        "optim.lr=1e-3,3e-3", "trainer.max_steps=20", "trainer.val_every_n_steps=10")
    assert result.returncode == 0, result.stderr
    rows = read_summary(sweep_dir)
    assert len(rows) == 2 and all(row["status"] == "completed" and row["val_loss"] and row["steps"] == "20"
                                  for row in rows)


@pytest.mark.slow
def test_grid_sweep_config_runs_every_combination(tmp_path):
    sweep_dir = tmp_path / "sweep"
    started = time.perf_counter()
    result = sweep_tiny(sweep_dir, "sweep=grid")
    print(f"4-job grid: {time.perf_counter() - started:.0f} s")
    assert result.returncode == 0, result.stderr
    rows = read_summary(sweep_dir)
    combos = {(override(row, "optim.lr"), override(row, "model.dropout")) for row in rows}
    assert combos == set(itertools.product(("0.001", "0.0003"), ("0.0", "0.1")))
    losses = [float(row["val_loss"]) for row in rows]
    assert losses == sorted(losses) and len(table_lines(result.stdout)) == 4


@pytest.mark.slow
def test_optuna_search_of_eight_trials(tmp_path):
    sweep_dir = tmp_path / "sweep"
    started = time.perf_counter()
    # the search space of conf/sweep/optuna.yaml, with widths and depths of a tiny model
    result = sweep_tiny(sweep_dir, "sweep=optuna", "hydra.sweeper.n_trials=8", "model.n_embd=choice(16,32)",
                        "model.n_layer=choice(1,2)")
    print(f"8-trial Optuna search: {time.perf_counter() - started:.0f} s")
    assert result.returncode == 0, result.stderr
    rows = read_summary(sweep_dir)
    assert len(rows) == 8 and all(row["status"] == "completed" for row in rows)
    assert len({row["overrides"] for row in rows}) == 8  # each trial its own point of the space
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["best_value"]
    assert best == pytest.approx(float(rows[0]["val_loss"]))
    assert len(table_lines(result.stdout)) == 8


def test_wandb_sweep_command_gives_hydra_overrides(tmp_path):
    """Expand sweeps/wandb_search.yaml's command as `wandb agent` does, and compose the config it asks for."""
    sweep = yaml.safe_load((REPO / "sweeps" / "wandb_search.yaml").read_text())
    values = {name: spec["values"][-1] if "values" in spec else spec["max"]
              for name, spec in sweep["parameters"].items()}
    macros = create_sweep_command_args({"args": {name: {"value": v} for name, v in values.items()}})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    command = [word for chunk in sweep["command"]
               for word in (macros[chunk[2:-1]] if chunk.startswith("${") else [chunk])]
    assert command[:3] == ["/usr/bin/env", "python", "train.py"]
    assert "logger=wandb" in command and "optim.lr=0.003" in command

    cfg = compose_train(*command[3:], tmp_path=tmp_path)
    assert cfg.optim.lr == 3e-3 and cfg.model.dropout == 0.2 and cfg.model.n_embd == 192 and cfg.model.n_layer == 6
    assert set(cfg.logger) == {"csv", "wandb"}


def test_the_wandb_sweep_of_arithmetic_maximises_the_exact_match_that_runs_log(tmp_path):
    sweep = yaml.safe_load((REPO / "sweeps" / "wandb_arithmetic.yaml").read_text())
    assert sweep["metric"] == {"name": "val/exact_match", "goal": "maximize"}
    fixed = [word for word in sweep["command"] if not word.startswith("${")]
    cfg = compose_train(*fixed, *(f"{name}={spec['values'][0] if 'values' in spec else spec['max']}"
                                  for name, spec in sweep["parameters"].items()), tmp_path=tmp_path)
    assert cfg.callbacks.exact_match and cfg.callbacks.checkpoints.monitor == "val/exact_match"
    assert cfg.data.train_examples == 2000 and cfg.model.n_layer == 1
