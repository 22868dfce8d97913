"""Weights & Biases for real, offline: a run is read back from what W&B wrote under its run directory."""

import json

import pytest

from gpt.training.loggers import wandb_offline

from conftest import train_tiny
from wandb_offline import offline_runs


def test_run_without_api_key_logs_offline_into_the_run_directory(tmp_path, wandb_env):
    run_dir = tmp_path / "run"
    loud = {key: value for key, value in wandb_env.items() if key != "WANDB_SILENT"}  # W&B's own output shown
    result = train_tiny(run_dir, "logger=wandb", "optim.lr=3e-3", "logger.wandb.tags=[tiny,test]", env=loud)
    assert result.returncode == 0, result.stderr
    result_output = result.stdout + result.stderr

    (run,) = offline_runs(run_dir)
    assert f"wandb sync {run.path.parent}" in result.stdout.splitlines()[-1]
    assert run.project == "gpt" and run.tags == ["tiny", "test"] and run.exit_code == 0
    assert "optim.lr=3e-3" in run.name.split(",") and "model.n_layer=1" in run.name.split(",")
    assert run.group == ""  # a single run belongs to no sweep
    # the resolved config as a plain dict
    assert run.config["model"]["n_layer"] == 1 and run.config["optim"]["lr"] == 3e-3
    assert run.config["paths"]["output_dir"] == str(run_dir)

    assert len(run.metric("val/loss")) == 2 and len(run.metric("train/loss")) >= 5
    assert run.metric("lr") and min(run.metric("perf/tokens_per_sec")) > 0
    samples = run.metric("samples/path")
    assert len(samples) == 2  # a table at each validation
    table = json.loads((run.path.parent / "files" / samples[-1]).read_text())
    assert table["columns"] == ["step", "prompt", "sample"]
    assert [row[0] for row in table["data"]] == [30, 60] and all(len(row[2]) > 0 for row in table["data"])

    assert (run_dir / "metrics.csv").is_file()  # the CSV log is still on

    # the runs table of the project page shows the best val/loss and sorts by size, best step and time
    assert run.metric_summaries["val/loss"] == ["min"] and run.metric_summaries["val/mlm_acc"] == ["max"]
    result = json.loads((run_dir / "result.json").read_text())
    assert {key: run.summary[key] for key in ("parameters", "best_step", "wall_s")} == \
        {key: result[key] for key in ("parameters", "best_step", "wall_s")}
    assert run.summary["best_val_loss"] == result["val_loss"]  # in the summary W&B prints when the run ends too
    assert "anonymous" not in result_output and "WARNING" not in result_output


def test_no_key_means_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    assert wandb_offline()


@pytest.mark.parametrize("setup", ["api key", "netrc", "explicit mode"])
def test_a_configured_key_or_mode_is_left_alone(setup, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    if setup == "api key":
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    elif setup == "netrc":
        (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    else:
        monkeypatch.setenv("WANDB_MODE", "disabled")
    assert not wandb_offline()


def test_resumed_training_continues_its_wandb_run(tmp_path, wandb_env):
    run_dir = tmp_path / "run"
    assert train_tiny(run_dir, "logger=wandb", env=wandb_env).returncode == 0
    result = train_tiny(run_dir, "logger=wandb", "ckpt_path=last", "trainer.max_steps=90", env=wandb_env)
    assert result.returncode == 0, result.stderr
    first, resumed = offline_runs(run_dir)  # W&B writes one offline folder per process, named by the run id
    assert first.path.name.rsplit("-", 1)[-1] == resumed.path.name.rsplit("-", 1)[-1]
    assert max(resumed.metric("trainer/global_step")) >= 89


@pytest.mark.slow  # W&B without a key goes offline in test_run_without_api_key_logs_offline_into_the_run_directory
def test_unreachable_wandb_falls_back_to_offline(tmp_path, wandb_env):
    # a key is set but the server cannot be reached (nothing listens on this loopback port)
    env = {**wandb_env, "WANDB_MODE": "online", "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
           "WANDB_INIT_TIMEOUT": "10"}
    run_dir = tmp_path / "run"
    result = train_tiny(run_dir, "logger=wandb", env=env)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "train.log").read_text().count("W&B could not start online") == 1
    assert len(offline_runs(run_dir)) == 1
