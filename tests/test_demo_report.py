"""The demo's real report: every number of report.html's leaderboard, detection and surface-normals
tables is its unit's row. Runs where a finished demo run is named (``make regression-check`` sets
SSL_BENCH_DEMO_RUN after the mini suite); skipped elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmark.results import ResultStore
from tests.report_cells import check_cells_are_rows, html_tables

RUN = os.environ.get("SSL_BENCH_DEMO_RUN")


@pytest.mark.skipif(not RUN, reason="no demo run named: make regression-check sets SSL_BENCH_DEMO_RUN")
def test_demo_report_cells_are_unit_rows():
    run = Path(RUN)
    assert (run / "report.html").is_file(), f"{run}: no report.html; run the demo first (make demo)"
    rows = ResultStore(run).load()
    tables = [t for t in html_tables((run / "report.html").read_text()) if t.section in ("leaderboard", "details")]
    titles = [t.title for t in tables]
    for family in ("Detection (VOC07 test): detection_voc07", "Surface normals (NYUv2 test): normals_nyuv2"):
        assert any(title.startswith(family) for title in titles), (family, titles)
    # every cell of those tables, each matched by exact value to one row of the unit files
    assert check_cells_are_rows(tables, rows) >= len(rows[rows["task"] == "normals_nyuv2"]) // 2
