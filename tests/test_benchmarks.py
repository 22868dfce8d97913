"""The benchmark scripts run: the GPU suite's --quick mode goes through every row at CPU sizes."""

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow  # a minute of whole processes: what it checks is the GPU script, which CPU runs change rarely
def test_the_gpu_suite_runs_every_row_quickly_on_a_cpu():
    done = subprocess.run([sys.executable, "bench/gpu_suite.py", "--quick"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout[done.stdout.index("| row | figure | target | met |"):].strip().splitlines()
    assert len(table) == 2 + 11 and all(line.count("|") == 5 for line in table)
    assert "| graphs compiled by 64 generated tokens | 0 |" in done.stdout
