"""ruff lints and formats the code and the notebooks; a change that breaks either fails the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = [sys.executable, "-m", "ruff"]


def test_ruff_check_passes():
    done = subprocess.run([*RUFF, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"ruff check found problems (fix with `make format`):\n{done.stdout}{done.stderr}"


def test_ruff_format_is_clean():
    done = subprocess.run([*RUFF, "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"ruff format would change files (run `make format`):\n{done.stdout}{done.stderr}"
