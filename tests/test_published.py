"""Published numbers: loaded with their sources, validated, shown beside a run and never mixed
into its measured rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmark.errors import ConfigError
from benchmark.published import COLUMNS, PUBLISHED_DIR, available, load_published, published_tables
from benchmark.report import write_report
from benchmark.results import ResultStore


def test_shipped_sets_load_with_a_source_on_every_row():
    assert {"goyal2019", "openselfsup"} <= set(available())
    for name in ("goyal2019", "openselfsup"):
        rows = load_published(name)
        assert len(rows) > 10
        for column in ("paper", "url", "protocol", "read_from"):
            assert rows[column].str.strip().ne("").all(), (name, column)
        assert (rows["origin"] == "published").all()


def test_goyal_values_as_recorded_in_the_protocol_notes():
    rows = load_published("goyal2019")
    svm = rows[(rows.task == "voc07_svm") & (rows.model == "supervised")].set_index("layer")["value"]
    assert svm.to_dict() == {"conv1": 24.5, "res2": 47.8, "res3": 60.5, "res4": 80.4, "res5": 88.0}
    det = rows[(rows.task == "detection_voc07") & (rows.model == "jigsaw")].set_index("train_set")["value"]
    assert det.to_dict() == {"voc07+12": 68.3, "voc07": 61.4}
    tables = published_tables(rows)
    assert tables["linear_places205, goyal2019"].loc["supervised (ImageNet-1k)", "res5:top1"] == 52.5


def _write(tmp_path: Path, rows: list[dict], header: str = "# comment\n") -> Path:
    path = tmp_path / "mine.csv"
    frame = pd.DataFrame(rows, columns=COLUMNS).fillna("")
    path.write_text(header + frame.to_csv(index=False))
    return path


GOOD = {"model": "m", "pretrain_data": "d", "arch": "resnet50", "task": "voc07_svm", "layer": "res5", "metric": "mAP",
        "k": "", "train_set": "", "value": 50.0, "paper": "P", "table": "1", "page": "2", "url": "u", "protocol": "p",
        "read_from": "the paper", "note": ""}


@pytest.mark.parametrize("change, message", [
    ({"paper": ""}, r"line 4: column 'paper' is empty"),
    ({"value": "n/a"}, "line 4: value 'n/a' is not a number"),
    ({"value": 101.0}, "outside"),
    ({"metric": "median_error", "value": 181.0}, "outside"),
    ({"k": "0"}, "k '0' must be an integer"),
])
def test_bad_rows_are_refused_naming_file_and_line(tmp_path, change, message):
    path = _write(tmp_path, [GOOD, {**GOOD, "layer": "res4", **change}])
    with pytest.raises(ConfigError, match=message) as info:
        load_published(str(path))
    assert str(path) in str(info.value)


def test_duplicates_missing_columns_and_unknown_names(tmp_path):
    with pytest.raises(ConfigError, match="given twice"):
        load_published(str(_write(tmp_path, [GOOD, GOOD])))
    path = tmp_path / "short.csv"
    path.write_text("model,value\nm,1\n")
    with pytest.raises(ConfigError, match="missing column"):
        load_published(str(path))
    with pytest.raises(ConfigError, match="available: .*goyal2019"):
        load_published("goyal2091")
    assert len(load_published(str(_write(tmp_path, [GOOD, {**GOOD, "k": "4", "metric": "mAP_mean"}])))) == 2


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    store = ResultStore(run)
    for layer, value in (("res4", 30.0), ("res5", 20.0)):
        store.write_unit(f"mine/voc07_svm/{layer}", [{"model": "mine", "task": "voc07_svm", "dataset": "voc07",
                                                       "layer": layer, "metric": "mAP", "value": value,
                                                       "wall_time_s": 1.5, "peak_rss_mb": 900.0, "device": "cpu"}])
    return run


def test_report_shows_published_rows_apart_from_measured_ones(tmp_path):
    run = _run(tmp_path)
    plain = write_report(run)
    md_plain, csv_plain, results_plain = (plain[k].read_text() for k in ("md", "csv", "results"))
    paths = write_report(run, published=["goyal2019"])
    md = paths["md"].read_text()
    assert md.startswith(md_plain.split("\nFigures:")[0].rstrip())  # the measured part is unchanged
    assert "## Published numbers (published, not measured here; comparable only on the real datasets)" in md
    assert "| supervised (ImageNet-1k)   |       24.50 |" in md
    # measured outputs carry no published row
    assert paths["csv"].read_text() == csv_plain and paths["results"].read_text() == results_plain
    assert "supervised" not in pd.read_csv(paths["results"])["model"].tolist()
    html = paths["html"].read_text()
    assert 'id="published"' in html and "not measured here" in html
    assert 'id="published"' not in write_report(run)["html"].read_text()


def test_cli_report_with_published(tmp_path, capsys):
    from benchmark.cli import main

    run = _run(tmp_path)
    assert main(["report", str(run), "--published", "goyal2019", "openselfsup"]) == 0
    out = capsys.readouterr().out
    assert "### voc07_svm, openselfsup (published)" in out and f"report: {run / 'report.html'}" in out
    assert main(["report", str(run), "--published", "nope"]) == 2
    assert "no published set of that name" in capsys.readouterr().err
