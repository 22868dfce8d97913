"""The README's and the docs' commands work as written, and the outputs they show are what the commands print:

- every command of the entry points is composed and checked as the entry point checks it (a key that no longer
  exists, a value out of range, shell quoting that splits a prompt);
- the blocks marked ``<!-- readme-test: run ... -->`` are run for real, with the overrides the marker gives (small
  step counts) appended to their train.py commands;
- a ```text block marked ``<!-- docs-output: COMMAND -->`` is what COMMAND prints: it is run, and each of the
  block's lines must be a line of its output (paths of the test's own directories written as the docs write them).
"""

import re
import shlex
from pathlib import Path

import pytest

from gpt.cli.checks import EVALUATE, EXPORT, MAKE_PAIRS, PREPARE, SAMPLE, SERVE, TRAIN
from gpt.cli.command_line import check_command_line

from conftest import REPO, SHAKESPEARE, run_script

PAGES = {path.relative_to(REPO).as_posix(): path.read_text() for path in [REPO / "README.md",
                                                                          *sorted((REPO / "docs").glob("*.md"))]}
ENTRY_POINTS = {"train.py": TRAIN, "sample.py": SAMPLE, "prepare.py": PREPARE, "export.py": EXPORT, "eval.py": EVALUATE,
                "make_pairs.py": MAKE_PAIRS, "serve.py": SERVE}
# the texts the commands name: my.txt, a text of your own; small.txt, a text too small for some of them
TEXTS = {"my.txt": 60_000, "small.txt": 8_000}


def command_blocks() -> list[tuple[str, str, list[str]]]:
    """(page, the marker before the block or "", the block's commands) for every ```bash block of the pages."""
    blocks = []
    for page, text in PAGES.items():
        for match in re.finditer(r"(?:<!-- readme-test: ([^>]*?) -->\s*)?```bash\n(.*?)```", text, re.DOTALL):
            lines = match[2].replace("\\\n", " ").splitlines()
            commands = [re.sub(r"\s+#\s.*$", "", line).strip() for line in lines]
            blocks.append((page, match[1] or "", [c for c in commands if c and not c.startswith("#")]))
    return blocks


def entry_point_commands() -> list[list[str]]:
    """The commands of train.py, sample.py, prepare.py and export.py, split as the shell splits them."""
    commands = []
    for _, _, block in command_blocks():
        for command in block:
            words = shlex.split(command.split(" && ")[-1])
            if len(words) > 1 and words[0] == "python" and words[1] in ENTRY_POINTS and not words[2:3] == ["--help"]:
                commands.append(words[1:])
    return commands


@pytest.mark.smoke
@pytest.mark.parametrize("words", entry_point_commands(), ids=" ".join)
def test_every_documented_command_composes_and_checks(words):
    script, args = words[0], words[1:]
    if script == "sample.py":
        from sample import quote_prompt  # what sample.py does to its arguments first

        args = quote_prompt(args)
    try:
        check_command_line(script.removesuffix(".py"), ENTRY_POINTS[script], args)
    except SystemExit as e:
        pytest.fail(f"python {' '.join(words)} is refused (exit {e.code}); see the error above")


def substitute(command: str, tmp_path: Path) -> str:
    """The documented paths made real in ``tmp_path``: run directories (``runs/...``), the texts."""
    command = command.replace("runs/", f"{tmp_path}/runs/")
    for name in TEXTS:
        command = command.replace(name, str(tmp_path / name))
    return command


def run_documented(command: str, tmp_path: Path, overrides: list[str] = (), i: int = 0):
    """A documented command, run as written in ``tmp_path`` (the texts it names written there first)."""
    for name, size in TEXTS.items():
        (tmp_path / name).write_text(SHAKESPEARE.read_text()[:size])
    words = shlex.split(substitute(command, tmp_path))
    if words[1] == "train.py":  # a command without a run directory gets a new one, as Hydra's default does
        run_dir = [] if any(w.startswith("hydra.run.dir=") for w in words) else [f"hydra.run.dir={tmp_path}/{i}"]
        words += [*overrides, *run_dir, f"paths.data_dir={tmp_path / 'data'}"]
    elif words[1] == "prepare.py":
        words += [f"paths.data_dir={tmp_path / 'data'}"]
    return run_script(words[1], *words[2:], timeout=600)


RUN_BLOCKS = [(page, marker, commands) for page, marker, commands in command_blocks() if marker.startswith("run")]


@pytest.mark.smoke
@pytest.mark.parametrize("page, marker, commands", RUN_BLOCKS,
                         ids=[f"{page}: {commands[0][:50]}" for page, _, commands in RUN_BLOCKS])
def test_blocks_marked_to_run_run(page, marker, commands, tmp_path):
    for i, command in enumerate(commands):
        done = run_documented(command, tmp_path, marker.removeprefix("run").split(), i)
        assert done.returncode == 0, f"{page}: {command}\n{done.stderr[-3000:]}"


OUTPUT_BLOCKS = [(page, match[1], match[2]) for page, text in PAGES.items()
                 for match in re.finditer(r"<!-- docs-output: (.*?) -->\s*```text\n(.*?)```", text, re.DOTALL)]


@pytest.mark.parametrize("page, command, shown", OUTPUT_BLOCKS, ids=[f"{p}: {c[:60]}" for p, c, _ in OUTPUT_BLOCKS])
def test_shown_outputs_are_what_the_commands_print(page, command, shown, tmp_path):
    done = run_documented(command, tmp_path)
    printed = (done.stdout + done.stderr).replace(f"{tmp_path}/", "")
    printed = re.sub(r"-[0-9a-f]{8}-", "-<digest>-", printed)
    # a log line is compared without its time stamp and logger: [2026-12-06 23:43:27,092][gpt.training.run][INFO] -
    lines = {re.sub(r"^\[[^]]*\]\[[^]]*\]\[\w+\] - ", "", line).strip() for line in printed.splitlines()}
    missing = [line for line in shown.strip().splitlines() if line.strip() not in lines]
    assert not missing, f"{page}: {command} no longer prints {missing}; it printed:\n{printed[-3000:]}"
