"""Every perf script imports and answers --help: a renamed engine function breaks the build, not
the next measurement (the scripts themselves are run by hand, on an idle machine)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parents[1] / "perf"
SCRIPTS = sorted(PERF.glob("*.py"))


def test_there_are_perf_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_perf_script_imports_and_has_help(script, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(f"perf_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top-level imports resolve; main() runs only as a script
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
    assert module.__doc__, f"{script.name} says nothing of what it measures"
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
