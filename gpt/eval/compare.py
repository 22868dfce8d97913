"""Compare training runs at a glance, offline: PNG files from the run directories.

    python -m gpt.eval.compare multirun/2026-11-25/10-00-00           # a sweep directory: each of its numbered jobs
    python -m gpt.eval.compare outputs/2026-11-25/a outputs/2026-11-25/b --out plots/     # run directories

- ``val_loss_curves.png``: the validation loss of every run against the step, each run named by the overrides in
  which it differs from the others;
- ``best_val_loss.png``: the best validation loss against each swept parameter (a panel each), one line for each
  combination of the other swept parameters;
- ``exact_match_curves.png``, ``best_exact_match.png`` and the like: the same for every other declared metric the
  runs logged (``gpt.metrics``: the exact match of checkable answers, a masked LM's accuracy, one of your own).

``--x optim.lr --lines model.n_embd --panels model.parametrization`` draws one chosen figure instead of the best
figure. A multirun draws them all into its sweep directory when it ends.
"""

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gpt.metrics import METRICS, Metric, metric_named, read_result

# overrides that say where or how a run happens, not what it is: they never name a run
WHERE_OR_HOW_KEYS = {"ckpt_path", "overwrite"}
WHERE_OR_HOW_PREFIXES = ("hydra.", "paths.")


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)  # metric: (steps, values)
    best: dict[str, float] = field(default_factory=dict)  # metric: its best value
    metrics: dict[str, Metric] = field(default_factory=dict)  # metric: its declaration


def read_yaml(path: Path):
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_overrides(path: Path) -> dict[str, str]:
    """The overrides a run directory was started with, less those that say where or how it ran."""
    overrides = read_yaml(path / ".hydra" / "overrides.yaml") or []
    hydra = read_yaml(path / ".hydra" / "hydra.yaml") or {}
    excluded = WHERE_OR_HOW_KEYS | set(hydra.get("hydra", {}).get("job", {}).get("config", {})
                                       .get("override_dirname", {}).get("exclude_keys", []))
    pairs = (override.split("=", 1) for override in overrides if "=" in override)
    given = {key.lstrip("+~"): value for key, value in pairs}
    return {key: value for key, value in given.items()
            if key not in excluded and not key.startswith(WHERE_OR_HOW_PREFIXES)}


def load_run(path: Path) -> Run:
    """A run directory's overrides, and the curve and best value of each declared metric it logged (declared in
    this process, ``gpt.metrics``, or in the run's result.json)."""
    run = Run(path, read_overrides(path))
    with open(path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    declared = read_result(path).get("metrics", {})
    for name in dict.fromkeys([*METRICS, *declared]):
        points = [(int(row["step"]), float(row[name])) for row in rows if row.get(name)]
        if points:
            run.metrics[name] = metric_named(name, declared)
            run.curves[name] = ([step for step, _ in points], [value for _, value in points])
            run.best[name] = run.metrics[name].best(value for _, value in points)
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
    """The overrides whose values differ between the runs (a run without one differs from a run with it), in the
    order they were given."""
    keys = dict.fromkeys(key for run in runs for key in run.overrides)
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def describe(overrides: dict[str, str | None], keys: list[str]) -> str:
    """``key=value`` for each of ``keys`` that ``overrides`` sets; a key left at its default is left out."""
    return " ".join(f"{key}={overrides[key]}" for key in keys if overrides.get(key) is not None)


def labels(runs: list[Run]) -> list[str]:
    """The runs' names in a legend: the overrides in which they differ. A run that sets none of those is at the
    defaults; where nothing differs, or two runs would read the same, the directory names tell them apart."""
    keys = swept(runs)
    names = [describe(run.overrides, keys) or ("defaults" if keys else run.path.name) for run in runs]
    return [f"{name} ({run.path.name})" if names.count(name) > 1 and name != run.path.name else name
            for name, run in zip(names, runs)]


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


def is_learning_rate(key: str) -> bool:
    name = key.rsplit(".", 1)[-1]
    return "lr" in name or "learning_rate" in name


def log_spaced(key: str, numbers: list[float]) -> bool:
    """Whether swept values (sorted, distinct) belong on a log axis: all positive, and a learning rate, or spanning
    10x or more, or a geometric series (widths 32, 64, 128; not dropouts 0.1, 0.2, 0.3)."""
    if len(numbers) < 2 or numbers[0] <= 0:
        return False
    ratios = [high / low for low, high in zip(numbers, numbers[1:])]
    geometric = len(numbers) >= 3 and min(ratios) > 1.5 and max(ratios) / min(ratios) < 1.3
    return is_learning_rate(key) or numbers[-1] / numbers[0] >= 10 or geometric


def compact(number: float) -> str:
    """A short tick label: ``1e-3``, ``3e-4``, ``0.1``, ``128``."""
    text = f"{number:g}"
    if "e" in text or 0 < abs(number) < 0.01:
        mantissa, exponent = f"{number:.5e}".split("e")
        text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return text


def spread_out(numbers: list[float], texts: list[str], log: bool) -> list[int]:
    """The indices of the values to label, left to right, each far enough from the one before for labels as long
    as ``texts`` not to overlap on a 5-inch panel."""
    position = math.log if log else float
    span = (position(numbers[-1]) - position(numbers[0])) or 1.0
    min_gap = 0.03 * max(map(len, texts))  # a label's character is ~2.5% of the values' span: 3% leaves a gap
    kept = []
    for i, number in enumerate(numbers):
        if not kept or (position(number) - position(numbers[kept[-1]])) / span >= min_gap:
            kept.append(i)
    return kept


def set_x_axis(ax, key: str, values: list[str]) -> None:
    """A log axis for log-spaced numbers, ticks labelled at the swept values themselves; other values (``rope``)
    stay on matplotlib's categorical axis."""
    from matplotlib.ticker import NullFormatter

    numbers = {as_number(value) for value in values}
    if not numbers or not all(isinstance(number, float) for number in numbers):
        return
    numbers = sorted(numbers)
    log = log_spaced(key, numbers)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the minor ticks stay, unlabelled
    texts = [compact(number) for number in numbers]
    kept = spread_out(numbers, texts, log)
    ax.set_xticks([numbers[i] for i in kept], [texts[i] for i in kept])


def curves_figure(runs: list[Run], metric: str = "val/loss"):
    """``metric`` of every run against the step, each run named by the overrides in which it differs."""
    from matplotlib.figure import Figure

    columns = math.ceil(len(runs) / 20)  # the legend goes beside the plot, 20 runs a column
    fig = Figure(figsize=(7 + 3.5 * columns, 5), layout="tight")
    ax = fig.subplots()
    for run, name in zip(runs, labels(runs)):
        if metric in run.curves:
            steps, values = run.curves[metric]
            # a run validated once is a lone point: a larger marker keeps it visible
            ax.plot(steps, values, marker="o", markersize=3 if len(steps) > 1 else 6, label=name)
    ax.set(xlabel="step", ylabel=metric, title=metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1), ncol=columns)
    return fig


def best_figure(runs: list[Run], x: str | None = None, lines: list[str] | None = None, panels: str | None = None,
                metric: str = "val/loss"):
    """The best ``metric`` against ``x``, a line per combination of ``lines``, a panel per value of ``panels``; with
    no ``x``, a panel for each swept parameter against the others. A run that does not set ``x`` is left out."""
    from matplotlib.figure import Figure

    keys = swept(runs)
    if x:
        line_keys = lines if lines is not None else [k for k in keys if k not in (x, panels)]
        panel_values = sorted({run.overrides.get(panels) for run in runs}, key=sort_key) if panels else [None]
        specs = [(x, line_keys, panels, value) for value in panel_values]
    else:
        specs = [(key, [k for k in keys if k != key], None, None) for key in keys]
    fig = Figure(figsize=(5 * len(specs), 4), layout="tight")
    axes = fig.subplots(1, len(specs), squeeze=False, sharey=True)[0]
    for ax, (x_key, line_keys, panel_key, panel) in zip(axes, specs):
        shown = [run for run in runs if metric in run.best and x_key in run.overrides
                 and (panel_key is None or run.overrides.get(panel_key) == panel)]
        draw_lines(ax, shown, x_key, line_keys, metric)
        set_x_axis(ax, x_key, [run.overrides[x_key] for run in shown])
        ax.set(xlabel=x_key, title=f"{panel_key}={panel}" if panel_key else f"best {metric} by {x_key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel(f"best {metric}")
    return fig


def draw_lines(ax, runs: list[Run], x_key: str, line_keys: list[str], metric: str) -> None:
    """A line of the best ``metric`` against ``x_key`` for each combination of the values of ``line_keys``."""
    def line_of(run: Run) -> tuple:
        return tuple(run.overrides.get(k) for k in line_keys)

    for values in sorted({line_of(run) for run in runs}, key=lambda values: [sort_key(v) for v in values]):
        points = sorted(((run.overrides[x_key], run.best[metric]) for run in runs if line_of(run) == values),
                        key=lambda point: sort_key(point[0]))
        name = describe(dict(zip(line_keys, values)), line_keys) or ("defaults" if line_keys else f"best {metric}")
        ax.plot([as_number(value) for value, _ in points], [best for _, best in points], marker="o", label=name)


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def compare(paths: list[Path], out: Path | None = None, x: str | None = None, lines: list[str] | None = None,
            panels: str | None = None) -> list[Path]:
    """Both figures of every metric the runs have."""
    runs = find_runs(paths)
    out, written = out or paths[0], []
    declared = {name: metric for run in runs for name, metric in run.metrics.items()}
    for name, metric in declared.items():
        written.append(save(curves_figure(runs, name), out / f"{metric.key}_curves.png"))
        if swept(runs) or x:
            written.append(save(best_figure(runs, x, lines, panels, name), out / f"best_{metric.key}.png"))
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
