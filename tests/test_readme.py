"""The README's commands work as written: every command of the entry points is composed and checked as the entry
point checks it (a key that no longer exists, a value out of range, shell quoting that splits a prompt), and the
blocks marked ``<!-- readme-test: run ... -->`` are run for real, with the overrides the marker gives (small step
counts) appended to their train.py commands."""

import re
import shlex
from pathlib import Path

import pytest

from gpt.cli.checks import EXPORT, PREPARE, SAMPLE, TRAIN
from gpt.cli.command_line import check_command_line

from conftest import REPO, SHAKESPEARE, run_script

README = (REPO / "README.md").read_text()
ENTRY_POINTS = {"train.py": TRAIN, "sample.py": SAMPLE, "prepare.py": PREPARE, "export.py": EXPORT}


def command_blocks() -> list[tuple[str, list[str]]]:
    """(the marker before the block, or "", the block's commands) for every ```bash block of the README."""
    blocks = []
    for match in re.finditer(r"(?:<!-- readme-test: ([^>]*?) -->\s*)?```bash\n(.*?)```", README, re.DOTALL):
        lines = match[2].replace("\\\n", " ").splitlines()
        commands = [re.sub(r"\s+#\s.*$", "", line).strip() for line in lines]
        blocks.append((match[1] or "", [c for c in commands if c and not c.startswith("#")]))
    return blocks


def entry_point_commands() -> list[list[str]]:
    """The README's commands of train.py, sample.py, prepare.py and export.py, split as the shell splits them."""
    commands = []
    for _, block in command_blocks():
        for command in block:
            words = shlex.split(command.split(" && ")[-1])
            if len(words) > 1 and words[0] == "python" and words[1] in ENTRY_POINTS:
                commands.append(words[1:])
    return commands


@pytest.mark.smoke
@pytest.mark.parametrize("words", entry_point_commands(), ids=" ".join)
def test_every_readme_command_composes_and_checks(words):
    script, args = words[0], words[1:]
    if script == "sample.py":
        from sample import quote_prompt  # what sample.py does to its arguments first

        args = quote_prompt(args)
    try:
        check_command_line(script.removesuffix(".py"), ENTRY_POINTS[script], args)
    except SystemExit as e:
        pytest.fail(f"python {' '.join(words)} is refused (exit {e.code}); see the error above")


def substitute(command: str, tmp_path: Path) -> str:
    """The README's paths made real in ``tmp_path``: run directories (``runs/...``), the export, a small text."""
    return (command.replace("runs/", f"{tmp_path}/runs/").replace("exported/", f"{tmp_path}/exported/")
            .replace("my.txt", str(tmp_path / "my.txt")))


def run_block(marker: str, commands: list[str], tmp_path: Path) -> None:
    (tmp_path / "my.txt").write_text(SHAKESPEARE.read_text()[:150_000])
    overrides = marker.removeprefix("run").split()
    for i, command in enumerate(commands):
        words = shlex.split(substitute(command, tmp_path))
        if words[1] == "train.py":  # a command without a run directory gets a new one, as Hydra's default does
            run_dir = [] if any(w.startswith("hydra.run.dir=") for w in words) else [f"hydra.run.dir={tmp_path}/{i}"]
            words += [*overrides, *run_dir, f"paths.data_dir={tmp_path / 'data'}"]
        elif words[1] == "prepare.py":
            words += [f"paths.data_dir={tmp_path / 'data'}"]
        done = run_script(words[1], *words[2:], timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"


RUN_BLOCKS = [(marker, commands) for marker, commands in command_blocks() if marker.startswith("run")]


@pytest.mark.smoke
@pytest.mark.parametrize("marker, commands", RUN_BLOCKS, ids=[commands[0][:60] for _, commands in RUN_BLOCKS])
def test_readme_blocks_marked_to_run_run(marker, commands, tmp_path):
    run_block(marker, commands, tmp_path)
