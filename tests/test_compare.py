"""gpt.compare's figures, from fake run directories: the axes, their ticks and the legends' names."""

import csv
import json

import numpy as np
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from gpt.eval.compare import best_figure, compact, compare, curves_figure, find_runs, labels

EXCLUDE_KEYS = ["sweep", "logger", "paths.root_dir", "paths.data_dir", "trainer.enable_progress_bar"]


def fake_run(path, overrides: list[str], val_losses: dict[int, float], best: float | None = None):
    """A run directory as train.py leaves it: the overrides, metrics.csv with a val/loss on some of its rows,
    and result.json when ``best`` is given."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"job": {"config": {"override_dirname": {"exclude_keys": EXCLUDE_KEYS}}}}}
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "train/loss", "val/loss"])
        writer.writeheader()
        for step in range(5, max(val_losses) + 1, 5):
            writer.writerow({"step": step, "train/loss": 3.0, "val/loss": val_losses.get(step, "")})
    if best is not None:
        (path / "result.json").write_text(json.dumps({"val_loss": best}))
    return path


def fake_sweep(sweep_dir, key: str, values: list[str]):
    """A sweep directory with a job for each value of ``key``, its best val loss lower with each."""
    for job, value in enumerate(values):
        fake_run(sweep_dir / str(job), [f"{key}={value}", "logger=csv"], {10: 3.0 - job / 10, 20: 2.5 - job / 10})
    return sweep_dir


def drawn(fig) -> FigureCanvasAgg:
    """The figure laid out and drawn as it is saved, so that its texts have their places."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas


def x_tick_labels(ax) -> list[str]:
    return [text.get_text() for text in ax.get_xticklabels()]


def assert_x_tick_labels_apart(ax, renderer):
    boxes = [text.get_window_extent(renderer) for text in ax.get_xticklabels() if text.get_text()]
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]
    assert not any(text.get_text() for text in ax.xaxis.get_minorticklabels())


def legend_texts(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_learning_rates_less_than_10x_apart_are_on_a_log_axis_labelled_at_the_values(tmp_path):
    sweep_dir = fake_sweep(tmp_path / "sweep", "optim.lr", ["1e-3", "3e-3"])
    curves, best = compare([sweep_dir])
    assert best == sweep_dir / "best_val_loss.png" and imread(best).shape[0] > 300 and imread(curves).std() > 0.01

    fig = best_figure(find_runs([sweep_dir]))
    (ax,) = fig.axes
    canvas = drawn(fig)
    assert ax.get_xscale() == "log"
    assert x_tick_labels(ax) == ["1e-3", "3e-3"]
    assert_x_tick_labels_apart(ax, canvas.get_renderer())


@pytest.mark.parametrize("key, values, scale, ticks", [
    ("optim.lr", ["0.0003", "0.001"], "log", ["3e-4", "1e-3"]),  # a learning rate, however few and close
    ("model.n_embd", ["32", "64", "128"], "log", ["32", "64", "128"]),  # a geometric series
    ("trainer.max_steps", ["100", "1000"], "log", ["100", "1000"]),  # 10x apart
    ("model.dropout", ["0.0", "0.1", "0.2"], "linear", ["0", "0.1", "0.2"]),
    ("model.dropout", ["0.1", "0.2"], "linear", ["0.1", "0.2"]),
    ("model.pos", ["rope", "learned"], "linear", ["learned", "rope"]),  # a categorical axis, in text order
])
def test_swept_values_choose_the_x_scale_and_label_their_ticks(tmp_path, key, values, scale, ticks):
    fig = best_figure(find_runs([fake_sweep(tmp_path / "sweep", key, values)]))
    (ax,) = fig.axes
    canvas = drawn(fig)
    assert ax.get_xscale() == scale and ax.get_xlabel() == key
    assert x_tick_labels(ax) == ticks
    assert_x_tick_labels_apart(ax, canvas.get_renderer())


def test_tick_labels_never_overlap_when_many_values_are_swept(tmp_path):
    learning_rates = [f"{1e-5 * 2 ** i:g}" for i in range(14)]  # 1e-05 ... 0.08192: 1e-5, 2e-5, ..., 1.6e-4, ...
    dropouts = ["0.0", "0.005", "0.01", "0.02", "0.03", "0.05", "0.1", "0.15", "0.2", "0.3", "0.4", "0.5"]
    runs = find_runs([fake_sweep(tmp_path / "lr", "optim.lr", learning_rates),
                      fake_sweep(tmp_path / "dropout", "model.dropout", dropouts)])
    fig = best_figure(runs, x="optim.lr")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and 4 <= len(x_tick_labels(ax)) < len(learning_rates)
    assert_x_tick_labels_apart(ax, drawn(fig).get_renderer())
    fig = best_figure(runs, x="model.dropout")
    (ax,) = fig.axes
    assert ax.get_xscale() == "linear" and x_tick_labels(ax)[0] == "0"
    assert_x_tick_labels_apart(ax, drawn(fig).get_renderer())


@pytest.mark.parametrize("number, text", [(1e-3, "1e-3"), (3e-3, "3e-3"), (0.0003, "3e-4"), (1.5e-4, "1.5e-4"),
                                          (0.0, "0"), (0.1, "0.1"), (0.25, "0.25"), (128.0, "128"), (1e6, "1e6")])
def test_compact_tick_labels(number, text):
    assert compact(number) == text


def test_legends_name_runs_by_the_overrides_they_set_that_differ_and_never_by_where_they_ran(tmp_path):
    where_and_how = ["ckpt_path=last", "+hydra.run.dir=elsewhere", "paths.output_dir=out", "overwrite=true",
                     "logger=wandb", "trainer.enable_progress_bar=false"]
    a = fake_run(tmp_path / "a", ["optim.lr=3e-3", "trainer.max_steps=2000", *where_and_how], {10: 3.0, 20: 2.6})
    b = fake_run(tmp_path / "b", [], {10: 3.1, 20: 2.7})
    c = fake_run(tmp_path / "c", ["optim.lr=1e-3", "ckpt_path=last"], {10: 3.2, 20: 2.8})
    runs = find_runs([a, b, c])
    assert labels(runs) == ["optim.lr=3e-3 trainer.max_steps=2000", "defaults", "optim.lr=1e-3"]

    compare([a, b, c], out=tmp_path / "plots")
    assert {path.name for path in (tmp_path / "plots").iterdir()} == {"val_loss_curves.png", "best_val_loss.png"}
    (ax,) = curves_figure(runs).axes
    assert legend_texts(ax) == labels(runs)

    # a panel for each override that differs; a run that does not set its x is left out, and one that does not set
    # a line's override is the line at the defaults
    by_lr, by_max_steps = best_figure(runs).axes
    assert [by_lr.get_xlabel(), by_max_steps.get_xlabel()] == ["optim.lr", "trainer.max_steps"]
    assert legend_texts(by_lr) == ["trainer.max_steps=2000", "defaults"]
    assert x_tick_labels(by_lr) == ["1e-3", "3e-3"]
    assert legend_texts(by_max_steps) == ["optim.lr=3e-3"]
    names = " ".join(legend_texts(ax) + legend_texts(by_lr) + legend_texts(by_max_steps))
    assert "-" not in names.replace("e-", "") and "None" not in names
    assert not any(key in names for key in ["ckpt_path", "hydra", "paths", "overwrite", "logger", "progress_bar"])


def test_runs_that_differ_in_no_override_are_named_by_their_directories(tmp_path):
    same = [fake_run(tmp_path / name, ["optim.lr=1e-3", "ckpt_path=last"], {10: 3.0}) for name in ("a", "b")]
    assert labels(find_runs(same)) == ["a", "b"]
    at_defaults = [fake_run(tmp_path / name, [], {10: 3.0}) for name in ("c", "d")]
    other = fake_run(tmp_path / "e", ["model.n_embd=64"], {10: 3.0})
    assert labels(find_runs([*at_defaults, other])) == ["defaults (c)", "defaults (d)", "model.n_embd=64"]


def test_a_run_validated_once_is_a_visible_marker(tmp_path):
    once = fake_run(tmp_path / "once", ["optim.lr=1e-3"], {20: 2.5})
    twice = fake_run(tmp_path / "twice", ["optim.lr=3e-3"], {10: 3.0, 20: 2.4})
    runs = find_runs([once, twice])
    assert [run.curves["val/loss"][0] for run in runs] == [[20], [10, 20]]
    compare([once, twice])
    fig = curves_figure(runs)
    (ax,) = fig.axes
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [20] and line.get_marker() == "o" and line.get_markersize() >= 6
    ax.get_legend().remove()  # its marker for the run would be counted too
    pixels = np.asarray(drawn(fig).buffer_rgba())[..., :3] / 255
    line_colored = (np.abs(pixels - to_rgb(line.get_color())).max(axis=-1) < 0.1).sum()
    assert line_colored >= 20  # at 100 dpi, a 6-point marker is about 8 pixels across
