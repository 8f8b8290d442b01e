"""ruff over the whole repository, with the rules and line length of pyproject.toml ([tool.ruff]):
a violation fails `make test`, as CI runs it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed: it is in the dev extra (pip install -e '.[dev]', as `make venv` does)")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff check found problems (fix them; see [tool.ruff] in pyproject.toml):\n" \
                                   f"{result.stdout}{result.stderr}"
