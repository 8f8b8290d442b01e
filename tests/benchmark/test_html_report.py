"""report.html: self-contained, with the leaderboard tables (sortable), figures, published rows,
cost and provenance per unit and failed units; loaded in a real headless Chromium, which must show
no console error, run the sorting script and render a screenshot."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmark.report import write_report
from benchmark.results import ResultStore

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed: apt-get install -y chromium (CI installs it in .ci/run)")


def _provenance(wall: float) -> dict:
    return {"wall_time_s": wall, "peak_rss_mb": 812.5, "peak_gpu_mb": 0.0, "device": "cpu:x86_64x2threads",
            "host": "testhost", "finished_at": "2026-01-01T00:00:00+00:00", "determinism": "exact",
            "config_hash": "abc", "git_sha": "deadbeef"}


@pytest.fixture
def run(tmp_path) -> Path:
    run = tmp_path / "myrun"
    store = ResultStore(run)
    values = {("alpha", "res4"): 40.0, ("alpha", "res5"): 35.0, ("beta", "res4"): 55.0, ("beta", "res5"): 60.0,
              ("gamma", "res4"): 7.0, ("gamma", "res5"): 12.0}
    for (model, layer), value in values.items():
        store.write_unit(f"{model}/voc07_svm/{layer}", [{"model": model, "task": "voc07_svm", "dataset": "voc07",
                                                          "layer": layer, "metric": "mAP", "value": value,
                                                          **_provenance(len(model) + 0.25)}])
    rows = []
    for k, mean in ((1, 10.0), (2, 14.0), (4, 20.0)):
        base = {"model": "beta", "task": "lowshot_voc07", "dataset": "voc07", "layer": "res5", "k": k,
                "cost_selection": "validation"}
        rows += [{**base, "metric": "mAP_mean", "value": mean}, {**base, "metric": "mAP_ci95", "value": 1.5}]
    store.write_unit("beta/lowshot_voc07/res5", [{**r, **_provenance(3.0)} for r in rows])
    store.write_unit("beta/detection_voc07/frozen", [
        {"model": "beta", "task": "detection_voc07", "dataset": "voc07", "layer": "frozen", "metric": metric,
         "value": value, **_provenance(7.0)} for metric, value in (("mAP", 43.75), ("mAP50_95", 12.5))])
    store.write_error("alpha/lowshot_voc07/res5",
                      "DatasetError: VOC2007 trainval is missing\nlog: x.log\n\nTraceback ...")
    return run


def test_report_html_is_self_contained_and_complete(run):
    paths = write_report(run, published=["goyal2019"])
    page = paths["html"].read_text()
    assert paths["html"] == run / "report.html"
    # nothing to fetch: no external script, style sheet, image or font
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<link" not in page
    assert page.count('<table class="sortable">') >= 4  # leaderboard, low-shot, published, costs
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2  # per-layer curves and the low-shot curves
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert "lowshot_voc07.png" in page and "leaderboard.png" in page
    assert 'id="published"' in page and "not measured here" in page
    # the failed unit with its error, the costs of every finished unit
    assert "alpha/lowshot_voc07/res5" in page and "DatasetError: VOC2007 trainval is missing" in page
    costs = page[page.index('id="costs"'):]
    # detection's aggregate metrics in full, beyond the leaderboard's headline one
    details = page[page.index('id="details"'):page.index('id="published"')]
    assert "frozen:mAP50_95" in details and 'data-v="12.5"' in details and 'data-v="43.75"' in details
    assert costs.count("<tr>") == 1 + 8 and 'data-v="4.25"' in costs and 'data-v="3.0"' in costs and "812.5" in costs


def test_a_later_success_clears_the_failure(run):
    ResultStore(run).write_unit("alpha/lowshot_voc07/res5", [{"model": "alpha", "task": "lowshot_voc07",
                                                               "layer": "res5", "metric": "mAP", "value": 9.0}])
    assert 'id="failed"' not in write_report(run)["html"].read_text()


def _chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    # root in a container: no sandbox; no GPU; console messages go to stderr as INFO:CONSOLE lines
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=timeout)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@needs_chromium
def test_report_loads_in_headless_chromium_without_console_errors(run, tmp_path):
    page = write_report(run, published=["goyal2019"])["html"]
    result = _chromium("--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console(result.stderr) == []
    dom = result.stdout
    assert 'data-report-ready="1"' in dom  # the inline script ran to its end
    assert len(re.findall(r'<th class="sortable"', dom)) >= 10  # the script made every header sortable
    assert len(re.findall(r"<img ", dom)) == 2
    shot = tmp_path / "report.png"
    result = _chromium(f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars", page.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10  # text and tables were drawn, not a blank page


@needs_chromium
def test_a_console_error_is_seen(tmp_path):
    # the check above can fail: a page with a script error shows up in the console lines
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notDefined();</script></body></html>")
    assert any("notDefined" in line for line in _console(_chromium("--dump-dom", bad.as_uri()).stderr))


@needs_chromium
def test_headers_sort_the_table_in_the_browser(run, tmp_path):
    page = write_report(run)["html"].read_text()
    probe = """<script>
      var t = document.querySelector('table.sortable'), th = t.tHead.rows[0].cells[1];
      function order(){
        return Array.prototype.map.call(t.tBodies[0].rows, function(r){ return r.cells[0].textContent; }).join(',');
      }
      th.click(); var up = order(); th.click(); var down = order();
      document.body.setAttribute('data-order', up + '|' + down);
    </script></body>"""
    harness = tmp_path / "sort.html"
    harness.write_text(page.replace("</body>", probe))
    result = _chromium("--dump-dom", harness.as_uri())
    assert _console(result.stderr) == []
    # first leaderboard table: voc07_svm, column res4 (alpha 40, beta 55, gamma 7: sorted as numbers, not text)
    assert 'data-order="gamma,alpha,beta|beta,alpha,gamma"' in result.stdout
