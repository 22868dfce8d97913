"""Held-out exact match against wall time for several runs, as an SVG figure (no plotting library needed) and a
Markdown table: the post-training comparison of docs/post-training.md.

    python bench/exact_match_curves.py --start 0.699 --out docs/post-training.svg \\
        "RL (GRPO)=runs/addition_rl" "SFT continued=runs/addition_sft_more" "DPO=runs/addition_dpo"

Each run's ``metrics.csv`` gives ``val/exact_match`` at each validation and ``elapsed_s``, the seconds since it began
to fit; ``--start`` is the starting checkpoint's exact match, drawn at 0 s for every run. A run whose validation
measures something else (DPO checks the held-out pairs' prompts) is a ``--point NAME=SECONDS,EXACT_MATCH``: its
exact match on the same test problems (``eval.py``) after that many seconds, drawn as a dot."""

import argparse
import csv
import math
from pathlib import Path

COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 760, 400, 60, 220, 20, 50


def curve(run_dir: Path) -> list[tuple[float, float]]:
    with open(run_dir / "metrics.csv") as f:
        return [(float(row["elapsed_s"]), float(row["val/exact_match"])) for row in csv.DictReader(f)
                if row.get("val/exact_match") and row.get("elapsed_s")]


def svg(curves: dict[str, list[tuple[float, float]]], start: float, dots: dict[str, tuple[float, float]]) -> str:
    points = [point for points in curves.values() for point in points] + list(dots.values())
    x_max = max(x for x, _ in points) * 1.05
    y_min, y_max = math.floor((min(y for _, y in [*points, (0, start)]) - 0.02) * 20) / 20, 1.0  # 0.05 steps
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + x / x_max * plot_w

    def py(y: float) -> float:
        return TOP + (y_max - y) / (y_max - y_min) * plot_h

    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             'font-family="sans-serif" font-size="12">'), f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>']
    for tick in range(round((y_max - y_min) * 20) + 1):
        y = y_min + tick * 0.05
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
    for second in range(0, int(x_max) + 1, 60 if x_max > 180 else 30):
        parts.append(f'<text x="{px(second):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{second}</text>')
    parts += [f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>',
              (f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 12}" text-anchor="middle">seconds of training (2-core '
              'CPU)</text>'),
              (f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {TOP + plot_h / 2})">'
              'held-out exact match</text>')]
    for i, (name, curve_points) in enumerate(curves.items()):
        color, legend_y = COLORS[i % len(COLORS)], TOP + 16 + 20 * i
        line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in [(0.0, start), *curve_points])
        parts += [f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>',
                  (f'<line x1="{WIDTH - RIGHT + 12}" x2="{WIDTH - RIGHT + 36}" y1="{legend_y - 4}" '
                  f'y2="{legend_y - 4}" stroke="{color}" stroke-width="2"/>'),
                  f'<text x="{WIDTH - RIGHT + 42}" y="{legend_y}">{name}</text>']
    for i, (name, (x, y)) in enumerate(dots.items(), len(curves)):
        color, legend_y = COLORS[i % len(COLORS)], TOP + 16 + 20 * i
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{color}"/>',
                  f'<circle cx="{WIDTH - RIGHT + 24}" cy="{legend_y - 4}" r="5" fill="{color}"/>',
                  f'<text x="{WIDTH - RIGHT + 42}" y="{legend_y}">{name}</text>']
    return "\n".join([*parts, "</svg>"]) + "\n"


def table(curves: dict[str, list[tuple[float, float]]], start: float, dots: dict[str, tuple[float, float]]) -> str:
    lines = ["| run | exact match at the start | best | last | seconds of training |", "|---|---|---|---|---|"]
    for name, points in curves.items():
        lines.append(f"| {name} | {start:.3f} | {max(y for _, y in points):.3f} | {points[-1][1]:.3f} | "
                     f"{points[-1][0]:.0f} |")
    lines += [f"| {name} | {start:.3f} | | {y:.3f} | {x:.0f} |" for name, (x, y) in dots.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR, one per curve")
    parser.add_argument("--start", type=float, required=True, help="the starting checkpoint's exact match")
    parser.add_argument("--point", action="append", default=[], help="NAME=SECONDS,EXACT_MATCH: a run drawn as a dot")
    parser.add_argument("--out", type=Path, default=Path("exact_match.svg"))
    args = parser.parse_args()
    dots = {}
    for spec in args.point:
        name, _, values = spec.partition("=")
        try:
            seconds, exact = (float(value) for value in values.split(","))
        except ValueError:
            parser.error(f"--point {spec}: give NAME=SECONDS,EXACT_MATCH, such as DPO=120,0.75")
        dots[name] = (seconds, exact)
    curves = {}
    for spec in args.runs:
        name, _, run_dir = spec.partition("=")
        if not run_dir or not (Path(run_dir) / "metrics.csv").is_file():
            parser.error(f"{spec}: give NAME=RUN_DIR, a run directory with a metrics.csv")
        if not (points := curve(Path(run_dir))):
            parser.error(f"{run_dir}/metrics.csv has no val/exact_match with elapsed_s; was it a run of data with "
                         "answers, by this version?")
        curves[name] = points
    args.out.write_text(svg(curves, args.start, dots))
    print(table(curves, args.start, dots))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
