"""A report redraws a figure only when what it is drawn from changed: the figure's record beside it
names the digest of its inputs and of the PNG written, and the PNG a reused figure leaves is the one
a redraw would write."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.report import write_report
from benchmark.results import ResultStore
from benchmark.rows import figure_is_current, figure_key, figure_record_path


def _run(run_dir: Path, value: float = 50.0) -> Path:
    store = ResultStore(run_dir)
    for layer, offset in (("res4", 0.0), ("res5", 10.0)):
        store.write_unit(f"m/voc07_svm/{layer}", [{"model": "m", "task": "voc07_svm", "layer": layer, "metric": "mAP",
                                                  "value": value + offset}])
        store.write_unit(f"m/lowshot_voc07/{layer}", [{"model": "m", "task": "lowshot_voc07", "layer": layer,
                                                      "metric": "mAP_mean", "k": k, "value": value + offset + k}
                                                     for k in (1, 2, 4)])
    return run_dir


def _figures(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """name -> (inode, bytes) of every figure: a rewrite (atomic: a new file renamed over) changes the inode."""
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in sorted(run_dir.glob("*.png"))}


def test_an_unchanged_figure_is_reused_and_a_changed_one_redrawn(tmp_path) -> None:
    run = _run(tmp_path / "run")
    first_paths = write_report(run)
    first = _figures(run)
    assert set(first) == {"leaderboard.png", "lowshot_voc07.png"}
    assert all(figure_record_path(run / name).is_file() for name in first)

    assert write_report(run) == first_paths
    assert _figures(run) == first  # neither figure was written again

    # other rows: both figures are drawn again, as a report of a fresh run with those rows draws them
    _run(run, value=20.0)
    write_report(run)
    again = _figures(run)
    fresh = _run(tmp_path / "fresh", value=20.0)
    write_report(fresh)
    assert all(again[name][0] != first[name][0] for name in first)
    assert {name: data for name, (_, data) in again.items()} == {name: data for name, (_, data) in
                                                                  _figures(fresh).items()}
    assert again["leaderboard.png"][1] != first["leaderboard.png"][1]


def test_an_altered_or_unrecorded_figure_is_redrawn(tmp_path) -> None:
    run = _run(tmp_path / "run")
    write_report(run)
    drawn = _figures(run)
    (run / "leaderboard.png").write_bytes(b"not the figure")
    figure_record_path(run / "lowshot_voc07.png").unlink()
    write_report(run)
    redrawn = _figures(run)
    assert {name: data for name, (_, data) in redrawn.items()} == {name: data for name, (_, data) in drawn.items()}
    assert all(redrawn[name][0] != drawn[name][0] for name in drawn)


def test_the_key_covers_values_order_and_types(tmp_path) -> None:
    rows = pd.DataFrame({"model": ["a", "b"], "value": [1.0, 2.0]})
    key = figure_key(rows, "f", __file__)
    assert key == figure_key(rows.copy(), "f", __file__)
    assert key != figure_key(rows.assign(value=[1.0, 2.5]), "f", __file__)
    assert key != figure_key(rows.iloc[::-1], "f", __file__)
    assert key != figure_key(rows.astype({"value": "float32"}), "f", __file__)
    assert key != figure_key(rows, "another figure", __file__)
    assert not figure_is_current(tmp_path / "absent.png", key)
