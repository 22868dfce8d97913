"""Score checkpoints on evaluation tasks over local files:

    python eval.py ckpt_path=<run dir>/checkpoints/best.ckpt                  # the shipped tasks that fit it
    python eval.py 'ckpt_path=[a.ckpt,b.ckpt]' 'tasks=[comus,comus_cloze]'  # a row per checkpoint
    python eval.py ckpt_path=<run dir>/checkpoints/best.ckpt text_file=my.txt   # bits per byte of your text

The tasks are the configs of ``conf/eval/`` (``gpt.eval.tasks``); ``text_file``, ``choices_file`` and
``answers_file`` add a task over your own file. Prints a table and writes the results as JSON to ``out_path``.
Nothing is downloaded.
"""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from gpt import UserError
from gpt.cli.checks import EVALUATE
from gpt.cli.command_line import check_command_line, check_config
from gpt.cli.errors import report_user_errors
from gpt.eval import task_names
from gpt.files import atomic_write_text
from gpt.signals import stopped_by_signals, stops_deferred

OWN_FILES = {"text_file": ("text", "Perplexity"), "choices_file": ("choices", "MultipleChoice"),
             "answers_file": ("answers", "Answers")}


def chosen_names(cfg: DictConfig) -> list[str]:
    return list(cfg.tasks) if isinstance(cfg.tasks, ListConfig) else [cfg.tasks] if cfg.tasks else []


def check_tasks(cfg: DictConfig, overrides: list[str]) -> None:
    """Before any library loads: the tasks named exist, and so do the files given."""
    if unknown := [name for name in chosen_names(cfg) if name not in task_names()]:
        raise UserError(f"task {unknown[0]} does not exist; choose from {', '.join(task_names())} "
                        "(the files of conf/eval/), or give text_file, choices_file or answers_file")
    for key, (name, _) in OWN_FILES.items():
        if cfg.get(key) and not Path(cfg[key]).exists():
            raise UserError(f"task {name}: its data file {cfg[key]} does not exist; give {key}=<an existing file>")


def chosen_tasks(cfg: DictConfig) -> tuple[dict, bool]:
    """The tasks by name: those named by ``tasks``, then one per ``*_file`` given; or, when none is asked for (the
    second value), every shipped one."""
    from gpt.eval import tasks

    own = [key for key in OWN_FILES if cfg.get(key)]
    names = chosen_names(cfg)
    asked = bool(names or own)
    chosen = {name: tasks.load_task(name) for name in (names if asked else task_names())}
    for key in own:
        name, kind = OWN_FILES[key]
        chosen[name] = getattr(tasks, kind)(path=cfg[key], name=name)
    return chosen, asked


def evaluate(cfg: DictConfig) -> list[dict]:
    """A row of results per checkpoint: ``task/metric`` values of every task that fits it."""
    with stops_deferred():  # the imports of torch and Lightning finish before a stop (gpt.signals)
        import torch

        from gpt.eval.tasks import causal_model_from_checkpoint  # Lightning, with the tasks

    tasks, asked = chosen_tasks(cfg)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    paths = list(cfg.ckpt_path) if isinstance(cfg.ckpt_path, ListConfig) else [cfg.ckpt_path]
    rows = []
    for path in paths:
        model, tokenizer = causal_model_from_checkpoint(path, "these tasks")
        model.to(device)
        fitting = {name: task for name, task in tasks.items() if asked or task.fits(tokenizer)}
        if not fitting:
            raise UserError(f"none of the shipped tasks ({', '.join(tasks)}) can be written with the {tokenizer.kind} "
                            f"tokenizer of {path}; give text_file, choices_file or answers_file")
        row = {"checkpoint": str(path)}
        for name, task in fitting.items():
            row.update({f"{name}/{key}": value for key, value in task.score(model, tokenizer, cfg.batch_size).items()})
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """One line per checkpoint, one column per task metric (counts as integers)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[format_cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = [columns, *cells]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def format_cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with report_user_errors(), stopped_by_signals():
        check_config(cfg, "python eval.py", EVALUATE)
        rows = evaluate(cfg)
        print(table(rows))
        atomic_write_text(Path(cfg.out_path), json.dumps(rows, indent=2) + "\n")
        print(f"wrote {cfg.out_path}")


if __name__ == "__main__":
    check_command_line("eval", EVALUATE, also=check_tasks, doc=__doc__)
    main()
