"""Compare training runs at a glance, offline: two PNG files from the run directories.

    python -m gpt.compare multirun/2026-11-25/10-00-00           # a sweep directory: each of its numbered jobs
    python -m gpt.compare outputs/2026-11-25/a outputs/2026-11-25/b --out plots/     # run directories

- ``val_loss_curves.png``: the validation loss of every run against the step, each run named by the overrides in
  which it differs from the others;
- ``best_val_loss.png``: the best validation loss against each swept parameter (a panel each), one line for each
  combination of the other swept parameters.

``--x optim.lr --lines model.n_embd --panels model.parametrization`` draws one chosen figure instead of the second.
A multirun draws both into its sweep directory when it ends.
"""

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gpt.result import read_result


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best: float | None = None


def load_run(path: Path) -> Run:
    """A run directory's overrides (those that say where or how it ran left out), val losses and best val loss."""
    hydra_dir = path / ".hydra"
    overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) if (hydra_dir / "overrides.yaml").is_file() else []
    hydra = yaml.safe_load((hydra_dir / "hydra.yaml").read_text()) if (hydra_dir / "hydra.yaml").is_file() else {}
    excluded = set(hydra.get("hydra", {}).get("job", {}).get("config", {}).get("override_dirname", {})
                   .get("exclude_keys", []))
    pairs = (override.split("=", 1) for override in overrides if "=" in override)
    run = Run(path, {key.lstrip("+~"): value for key, value in pairs
                     if key.lstrip("+~") not in excluded and not key.startswith("hydra.")})
    if (path / "metrics.csv").is_file():
        with open(path / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row.get("val/loss"):
                    run.steps.append(int(row["step"]))
                    run.val_losses.append(float(row["val/loss"]))
    run.best = read_result(path).get("val_loss", min(run.val_losses, default=None))
    return run


def find_runs(paths: list[Path]) -> list[Run]:
    """The runs of the given directories: a run directory (it has metrics.csv), or a sweep directory whose
    numbered subdirectories are runs."""
    runs = []
    for path in paths:
        if (path / "metrics.csv").is_file():
            runs.append(load_run(path))
        else:
            jobs = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
            runs.extend(load_run(job) for job in jobs if (job / "metrics.csv").is_file())
    if not runs:
        raise SystemExit(f"error: no runs (directories with metrics.csv) in {', '.join(map(str, paths))}")
    return runs


def swept(runs: list[Run]) -> list[str]:
    """The overrides whose values differ between the runs, in the order they were given."""
    keys = dict.fromkeys(key for run in runs for key in run.overrides)
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def label(run: Run, keys: list[str]) -> str:
    return " ".join(f"{key}={run.overrides.get(key, '-')}" for key in keys) or run.path.name


def as_number(value: str | None) -> float | str:
    """A number where the value is one; matplotlib puts other values (``rope``, ``mup``) on a categorical axis."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def sort_key(value: str | None) -> tuple:
    """Numbers in numeric order, before other values in text order."""
    number = as_number(value)
    return (0, number, "") if isinstance(number, float) else (1, 0.0, number)


def plot_curves(runs: list[Run], out: Path) -> Path:
    import matplotlib.pyplot as plt

    keys = swept(runs)
    columns = math.ceil(len(runs) / 20)  # the legend goes beside the plot, 20 runs a column
    fig, ax = plt.subplots(figsize=(7 + 3.5 * columns, 5))
    for run in runs:
        if run.steps:
            ax.plot(run.steps, run.val_losses, marker=".", label=label(run, keys))
    ax.set(xlabel="step", ylabel="val/loss", title="validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1), ncol=columns)
    return save(fig, out / "val_loss_curves.png")


def plot_best(runs: list[Run], out: Path, x: str | None = None, lines: list[str] | None = None,
              panels: str | None = None) -> Path:
    """Best val loss against ``x``, a line per combination of ``lines``, a panel per value of ``panels``; with no
    ``x``, a panel for each swept parameter against the others."""
    import matplotlib.pyplot as plt

    keys = swept(runs)
    if x:
        line_keys = lines if lines is not None else [k for k in keys if k not in (x, panels)]
        panel_values = sorted({run.overrides.get(panels) for run in runs}, key=sort_key) if panels else [None]
        specs = [(x, line_keys, panels, value) for value in panel_values]
    else:
        specs = [(key, [k for k in keys if k != key], None, None) for key in keys]
    fig, axes = plt.subplots(1, len(specs), figsize=(5 * len(specs), 4), squeeze=False, sharey=True)
    for ax, (x_key, line_keys, panel_key, panel) in zip(axes[0], specs):
        shown = [run for run in runs if run.best is not None and (panel_key is None or run.overrides.get(panel_key) == panel)]
        for values in sorted({tuple(run.overrides.get(k) for k in line_keys) for run in shown},
                             key=lambda values: [sort_key(v) for v in values]):
            points = sorted(((run.overrides.get(x_key), run.best) for run in shown
                             if tuple(run.overrides.get(k) for k in line_keys) == values), key=lambda p: sort_key(p[0]))
            points = [(as_number(value), best) for value, best in points]
            name = " ".join(f"{k}={v}" for k, v in zip(line_keys, values)) or "best val/loss"
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        xs = [as_number(run.overrides.get(x_key)) for run in shown]
        if xs and all(isinstance(v, float) and v > 0 for v in xs) and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set(xlabel=x_key, title=f"{panel_key}={panel}" if panel_key else f"best val/loss by {x_key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel("best val/loss")
    return save(fig, out / "best_val_loss.png")


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(paths: list[Path], out: Path | None = None, x: str | None = None, lines: list[str] | None = None,
            panels: str | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    runs = find_runs(paths)
    out = out or paths[0]
    written = [plot_curves(runs, out)]
    if swept(runs) or x:
        written.append(plot_best(runs, out, x, lines, panels))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="a sweep directory, or run directories")
    parser.add_argument("--out", type=Path, help="where the PNG files go (default: the first path)")
    parser.add_argument("--x", help="the parameter on the x axis of the best-val/loss figure")
    parser.add_argument("--lines", nargs="*", help="parameters that tell the lines apart (default: the other swept)")
    parser.add_argument("--panels", help="a parameter with a panel for each of its values")
    args = parser.parse_args(argv)
    for path in compare(args.paths, args.out, args.x, args.lines, args.panels):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
