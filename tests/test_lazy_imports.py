"""The commands that answer before any work is done import no torch (issue 45: they answer at once).
A suite's config errors, a plugin's declared options and the report come from modules that import
torch, torchvision, timm and scikit-learn only inside the functions that compute: each check runs in
a fresh interpreter and reads ``sys.modules`` afterwards. Structure, not timing: the timings are
perf/cli_latency.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from benchmark.results import ResultStore

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "timm", "sklearn")
# plugins whose classes are torch modules (nn.Module): reading them is building them
TORCH_PLUGIN_GROUPS = ("ssl_bench.pretext_methods",)


def heavy_modules_after(code: str) -> dict:
    """Runs ``code`` in a fresh interpreter at the repository root; returns what it printed as its
    last line (JSON) under "printed" and the heavy top-level packages it had imported under "heavy"."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps({{"printed": RESULT, "heavy": sorted({{m.split(".")[0] for m in sys.modules}}
                                                            & set({HEAVY!r}))}}))
        """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("task_options, message", [
    ("{layerz: [res5]}", "unknown key 'layerz'"),
    ("{folds: three}", "folds"),
    ("{layers: [res6]}", "'res6' is not a layer of resnet18"),
])
def test_a_task_option_error_is_found_without_torch(tmp_path, task_options, message) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("suites:\n  s:\n    models: {r: {pretrainer: random, arch: resnet18}}\n"
                     f"    tasks: {{voc07_svm: {task_options}}}\n")
    found = heavy_modules_after(f"""
        from benchmark.config import load_suite
        from benchmark.errors import ConfigError
        try:
            load_suite("s", {str(suite)!r})
            RESULT = "loaded"
        except ConfigError as error:
            RESULT = str(error)
        """)
    assert message in found["printed"]
    assert found["heavy"] == []


def test_every_built_in_plugin_declares_its_options_without_torch() -> None:
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    targets = [target for group, entries in entry_points.items()
               if group.startswith("ssl_bench.") and group not in TORCH_PLUGIN_GROUPS for target in entries.values()]
    assert any(target.startswith("tasks.") for target in targets) and any(t.startswith("pretrainers.") for t in targets)
    found = heavy_modules_after(f"""
        import importlib
        from benchmark.options import declared
        RESULT = {{}}
        for target in {targets!r}:
            module, _, name = target.partition(":")
            plugin = getattr(importlib.import_module(module), name)
            RESULT[target] = sorted(declared(getattr(plugin, "options", {{}})))
        """)
    assert found["printed"]["tasks.voc07_svm:VOC07SVM"][:2] == ["costs", "folds"]
    assert found["heavy"] == []


def test_the_report_imports_no_torch(tmp_path) -> None:
    """A run with a row of every built-in task family: the families' report hooks and detail tables
    are read from their plugins, the figures drawn, the HTML written."""
    tasks = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["ssl_bench.tasks"]
    store = ResultStore(tmp_path)
    for task in tasks:
        for layer, value in (("res4", 40.0), ("res5", 50.0)):
            rows = [{"model": "m", "task": task, "layer": layer, "metric": "mAP", "value": value}]
            if task.startswith("lowshot"):
                rows = [{**row, "metric": "mAP_mean", "k": k, "value": value + k} for row in rows for k in (1, 2)]
            store.write_unit(f"m/{task}/{layer}", rows)
    found = heavy_modules_after(f"""
        from benchmark.report import write_report
        RESULT = sorted(path.name for path in write_report({str(tmp_path)!r}).values())
        """)
    assert {"report.html", "leaderboard.png", "lowshot_voc07.png", "lowshot_places205.png"} <= set(found["printed"])
    assert found["heavy"] == []


def test_a_report_of_an_unchanged_run_imports_no_pandas(tmp_path) -> None:
    """The second `ssl-bench report` of a run that did not change prints the kept report: file stats only."""
    store = ResultStore(tmp_path)
    for layer, value in (("res4", 40.0), ("res5", 50.0)):
        store.write_unit(f"m/voc07_svm/{layer}", [{"model": "m", "task": "voc07_svm", "layer": layer, "metric": "mAP",
                                                  "value": value}])
    code = f"""
        import contextlib, io, sys
        from benchmark.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            main(["report", {str(tmp_path)!r}])
        RESULT = "pandas" in sys.modules
        """
    assert heavy_modules_after(code)["printed"] is True  # the first report is written
    again = heavy_modules_after(code)
    assert again["printed"] is False and again["heavy"] == []
