"""Lint and formatting are part of the test suite, so CI runs them: `ruff check`
(with RUF100, so a `noqa` that silences nothing fails) and `ruff format --check`."""

import subprocess
import sys

import pytest
from support import ROOT


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff(command):
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
