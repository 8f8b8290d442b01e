"""The regression check: references with measured spreads, one rule per row, damaged references
refused, and replicate runs that reseed only what trains."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from benchmark.check import (BAND_FALSE_ALARM, BAND_FLOOR, BASE_TOLERANCE, EXACT_TOLERANCE, GUARDED_WITHIN, JOIN,
                             MACHINE_TOLERANCE, STEP_COLUMN, add_machine_run, add_replicate, add_rows, build_reference,
                             expected_rows, resolve_reference, compare, read_reference, run_check, unguarded_rows,
                             unguarded_summary, write_reference)
from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.errors import BenchmarkError, ConfigError
from benchmark.results import ResultStore, record_path
from benchmark.run import UnitRunner, plan_run, unit_trains
from benchmark.training import replicate_seed
from tests.suites import RANDOM, suite_yaml, voc07_svm
from tests.paths import REPO


def _row(model, layer, metric="mAP", cls="", sample="", value=0.0, determinism="trained", task="voc07_svm"):
    return {"model": model, "task": task, "dataset": "voc07", "layer": layer, "metric": metric, "class": cls,
            "k": "", "sample": sample, "cost_selection": "", "evaluation": "", "value": value,
            "determinism": determinism}


def _frames():
    """A replicate-0 run and two replicates: an exact model, and a trained one whose numbers move."""
    base = [_row("random", "res5", value=30.0, determinism="exact"),
            _row("random", "res5", cls="cat", value=41.25, determinism="exact"),
            _row("supervised", "res5", value=50.0),
            _row("supervised", "res5", cls="cat", value=60.0),
            _row("supervised", "res4", value=45.0)]
    rep1 = [_row("supervised", "res5", value=51.0), _row("supervised", "res5", cls="cat", value=70.0),
            _row("supervised", "res4", value=45.0)]
    rep2 = [_row("supervised", "res5", value=52.0), _row("supervised", "res5", cls="cat", value=65.0),
            _row("supervised", "res4", value=45.0)]
    return [pd.DataFrame(rows) for rows in (base, rep1, rep2)]


def _pick(df, model, layer, cls=""):
    return df[(df.model == model) & (df.layer == layer) & (df["class"] == cls)].iloc[0]


def test_reference_rules_and_spreads_are_computed_from_the_replicates() -> None:
    run, rep1, rep2 = _frames()
    ref = build_reference(run, [rep1, rep2])
    exact = _pick(ref, "random", "res5")
    assert (exact["rule"], exact["tolerance"], exact["n_runs"]) == ("exact", EXACT_TOLERANCE, 1)
    band = _pick(ref, "supervised", "res5")
    assert band["rule"] == "band" and band["n_runs"] == 3
    assert band["mean"] == pytest.approx(51.0) and band["std"] == pytest.approx(np.std([50, 51, 52], ddof=1))
    assert (band["min"], band["max"]) == (50.0, 52.0)
    # mAP rows of voc07_svm (res5, res4, per class; 2 dof each) pool their variances: 1, 0 and 25
    pooled = np.sqrt((1.0 + 0.0 + 25.0) / 3)
    assert band["pooled_std"] == pytest.approx(pooled) and band["pooled_dof"] == 6
    # the prediction interval of one new run: t at the false-alarm rate with 6 dof, x sqrt(1 + 1/3)
    multiplier = scipy.stats.t.ppf(1 - BAND_FALSE_ALARM / 2, 6) * np.sqrt(1 + 1 / 3)
    assert band["tolerance"] == pytest.approx(max(BAND_FLOOR, multiplier * pooled))
    per_class = _pick(ref, "supervised", "res5", "cat")
    assert per_class["rule"] == "aggregate" and per_class["std"] == pytest.approx(5.0)
    assert per_class["tolerance"] == pytest.approx(multiplier * 5.0)  # its own spread is the wider
    still = _pick(ref, "supervised", "res4")  # replicates that agree by chance: the typical spread
    assert still["rule"] == "band" and still["std"] == 0 and still["tolerance"] == pytest.approx(multiplier * pooled)
    alone = build_reference(run, [])  # without replicates the spread is unmeasured
    assert _pick(alone, "supervised", "res5")["rule"] == "fixed"
    assert _pick(alone, "supervised", "res5")["tolerance"] == BASE_TOLERANCE
    assert _pick(alone, "random", "res5")["rule"] == "exact"


def test_a_replicate_that_moves_an_exact_number_is_refused() -> None:
    run, rep1, _ = _frames()
    liar = pd.concat([rep1, pd.DataFrame([_row("random", "res5", value=30.5, determinism="exact")])])
    with pytest.raises(BenchmarkError, match="declares exact.*'model': 'random'"):
        build_reference(run, [liar])
    same = pd.concat([rep1, pd.DataFrame([_row("random", "res5", value=30.0, determinism="exact")])])
    assert len(build_reference(run, [same])) == len(run)


def _shifted(run, model, layer, delta, cls=""):
    out = run.copy()
    mask = (out.model == model) & (out.layer == layer) & (out["class"] == cls)
    out.loc[mask, "value"] += delta
    return out


def test_each_rule_flags_what_it_should(tmp_path) -> None:
    run, rep1, rep2 = _frames()
    path = tmp_path / "ref.csv"
    write_reference(build_reference(run, [rep1, rep2]), path)
    ref, fmt = read_reference(path)
    assert fmt == 2 and len(ref) == len(run)

    def outcome(other):
        result = compare(other, ref)
        return (sorted(zip(result["regressions"]["model"], result["regressions"]["rule"])),
                len(result["informational"]))

    assert outcome(run) == ([], 0)
    # exact: a planted 1-point change fails, rounding-level noise passes
    assert outcome(_shifted(run, "random", "res5", 1.0)) == ([("random", "exact")], 0)
    assert outcome(_shifted(run, "random", "res5", 0.01)) == ([], 0)
    assert outcome(_shifted(run, "random", "res5", 1.0, cls="cat")) == ([("random", "exact")], 0)
    # band: centred on the replicates' mean 51 (the run's own value is 50)
    tol = _pick(ref, "supervised", "res5")["tolerance"]
    assert outcome(_shifted(run, "supervised", "res5", 1 + tol - 0.1)) == ([], 0)
    assert outcome(_shifted(run, "supervised", "res5", 1 + tol + 0.1)) == ([("supervised", "band")], 0)
    assert outcome(_shifted(run, "supervised", "res5", 1 - tol - 0.1)) == ([("supervised", "band")], 0)
    # aggregate: per-class numbers of a trained model are reported, never failing
    assert outcome(_shifted(run, "supervised", "res5", 500.0, cls="cat")) == ([], 1)
    # a NaN where a number was is always a regression
    nan = run.copy()
    nan.loc[0, "value"] = np.nan
    assert len(compare(nan, ref)["regressions"]) == 1


def test_rows_with_wide_tolerances_are_counted_as_unguarded(tmp_path, capsys) -> None:
    run, rep1, rep2 = _frames()
    reference = build_reference(run, [rep1, rep2])
    reference.loc[(reference.model == "supervised") & (reference.layer == "res4"), "tolerance"] = GUARDED_WITHIN + 0.5
    compared = compare(run, reference)["compared"]
    # res5's band from three replicates 1 point apart is already wider than 5 points (t at 1e-4 on 2 dof);
    # the per-class row of the trained model is an aggregate (reported, never failing): not counted
    band = _pick(reference, "supervised", "res5")["tolerance"]
    assert band > GUARDED_WITHIN
    unguarded = unguarded_rows(compared)
    assert sorted(zip(unguarded.model, unguarded.layer)) == [("supervised", "res4"), ("supervised", "res5")]
    summary = unguarded_summary(unguarded)
    assert summary.to_dict("records") == [{"task": "voc07_svm", "metric": "mAP", "rows": 2,
                                           "tolerance_min": GUARDED_WITHIN + 0.5, "tolerance_max": band}]
    # in the CLI's summary and on its last line: never a plain OK
    store = ResultStore(tmp_path / "run")
    for (model, task), rows in run.groupby(["model", "task"]):
        store.write_unit(f"{model}/{task}/all", rows.to_dict("records"))
    write_reference(reference, tmp_path / "ref.csv")
    assert run_check(tmp_path / "run", tmp_path / "ref.csv") == 0
    out = capsys.readouterr().out
    held = int((compared["rule"] != "aggregate").sum())
    assert f"guarded: {held - 2} of {held} held metrics" in out and "2 are UNGUARDED" in out
    assert f"RESULT: OK (2 of {held} held metrics unguarded)" in out


def test_override_tolerance_holds_every_row_against_its_stored_value(tmp_path) -> None:
    run, rep1, rep2 = _frames()
    path = tmp_path / "ref.csv"
    write_reference(build_reference(run, [rep1, rep2]), path)
    ref, _ = read_reference(path)
    assert len(compare(run, ref, tolerance=0)["regressions"]) == 0  # stored values round-trip exactly
    tiny = _shifted(run, "supervised", "res5", 1e-9, cls="cat")
    regressions = compare(tiny, ref, tolerance=0)["regressions"]
    assert regressions[["model", "class", "rule"]].values.tolist() == [["supervised", "cat", "override"]]


def _counts(step=100 / 130, value=66.923, trained=66.923):
    """A count metric (top-5 over 130 test images) of an exact model (``value``) and of a trained one."""
    rows = [{**_row("random", "pool5", "top5", value=value, determinism="exact", task="logreg"), STEP_COLUMN: step},
            {**_row("supervised", "pool5", "top5", value=trained, task="logreg"), STEP_COLUMN: step}]
    return pd.DataFrame(rows)


def test_an_exact_count_may_move_by_one_scored_image_and_not_two(tmp_path) -> None:
    path = tmp_path / "ref.csv"
    write_reference(build_reference(_counts(), []), path)
    ref, _ = read_reference(path)
    assert ref[STEP_COLUMN].tolist() == pytest.approx([100 / 130] * 2)  # stored with the reference

    def regressions(run, reference=ref, tolerance=None):
        found = compare(run, reference, tolerance)["regressions"]
        return found[["model", "rule"]].values.tolist()

    one, two = 100 / 130, 200 / 130  # one image flipped (a near-tie rounded the other way), two
    assert regressions(_counts(value=66.923 - one)) == []
    assert regressions(_counts(value=66.923 + one)) == []
    assert regressions(_counts(value=66.923 - two)) == [["random", "exact"]]
    # the step widens exact rows only: a trained row keeps its own rule (here fixed, 0.5 points)
    assert regressions(_counts(trained=66.923 - 0.6)) == [["supervised", "fixed"]]
    # the same-machine refactor check stays exact
    assert regressions(_counts(value=66.923 - one), tolerance=0) == [["random", "override"]]
    # a reference written before rows recorded their step: the run's step (the same test split)
    old = ref.drop(columns=[STEP_COLUMN])
    assert regressions(_counts(value=66.923 - one), old) == []
    assert regressions(_counts(value=66.923 - one).drop(columns=[STEP_COLUMN]), old) == [["random", "exact"]]
    # the reference's step wins over the run's: a run cannot widen its own tolerance
    assert regressions(_counts(step=5.0, value=66.923 - two)) == [["random", "exact"]]
    with pytest.raises(BenchmarkError, match="metric_step=.*in \\(0, 100\\]"):
        compare(_counts(step=150.0), old)
    result = compare(_counts(value=66.923 - one), ref)["compared"]
    assert result.set_index("model").loc["random", "tolerance"] == pytest.approx(one)
    assert result.set_index("model").loc["random", STEP_COLUMN] == pytest.approx(one)
    assert np.isnan(result.set_index("model").loc["supervised", STEP_COLUMN])


# --- damaged references ----------------------------------------------------------------------

@pytest.fixture()
def reference_file(tmp_path) -> Path:
    run, rep1, rep2 = _frames()
    path = tmp_path / "ref.csv"
    write_reference(build_reference(run, [rep1, rep2]), path)
    return path


def test_truncated_reference_is_an_error(reference_file) -> None:
    raw = reference_file.read_bytes()
    reference_file.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BenchmarkError, match=f"{reference_file}.*damaged.*promises 5 rows"):
        read_reference(reference_file)
    lines = raw.decode().splitlines(keepends=True)
    reference_file.write_text("".join(lines[:-1]))  # one whole row cut: still not a pass
    with pytest.raises(BenchmarkError, match="damaged"):
        read_reference(reference_file)


def test_edited_reference_values_and_missing_columns_are_errors(reference_file) -> None:
    header, body = reference_file.read_text().split("\n", 1)
    reference_file.write_text(header + "\n" + body.replace("41.25", "42.25"))
    with pytest.raises(BenchmarkError, match="damaged.*truncated or edited.*--update"):
        read_reference(reference_file)
    frame = pd.read_csv(pd.io.common.StringIO(body), dtype=str, keep_default_na=False)
    reference_file.write_text(frame.drop(columns=["metric"]).to_csv(index=False))  # no header: format 1
    with pytest.raises(BenchmarkError, match="lacks the column.*metric"):
        read_reference(reference_file)


def _signed(path: Path, frame: pd.DataFrame) -> None:
    """A frame written with a valid header, to reach the checks behind the checksum."""
    body = frame.to_csv(index=False).encode()
    path.write_bytes(f"# ssl-bench reference: format 2, {len(frame)} rows, sha256 "
                     f"{hashlib.sha256(body).hexdigest()}\n".encode() + body)


def test_duplicated_keys_non_numbers_and_unknown_rules_are_errors(reference_file) -> None:
    frame, _ = read_reference(reference_file)
    _signed(reference_file, pd.concat([frame, frame.iloc[[2]]]))
    with pytest.raises(BenchmarkError, match="(?s)2 rows with duplicated keys.*model=supervised"):
        read_reference(reference_file)
    bad = frame.astype(str)
    bad.loc[1, "value"] = "4l.25"
    _signed(reference_file, bad)
    with pytest.raises(BenchmarkError, match="column 'value' holds a non-number, '4l.25', on data row 2"):
        read_reference(reference_file)
    bad = frame.copy()
    bad.loc[1, "rule"] = "loose"
    _signed(reference_file, bad)
    with pytest.raises(BenchmarkError, match="unknown rule.*loose"):
        read_reference(reference_file)


def test_empty_and_garbled_references_are_errors(tmp_path) -> None:
    path = tmp_path / "ref.csv"
    path.write_text("")
    with pytest.raises(BenchmarkError, match="is empty"):
        read_reference(path)
    path.write_text("# something else\nmodel,value\n")
    with pytest.raises(BenchmarkError, match="unreadable header"):
        read_reference(path)
    with pytest.raises(BenchmarkError, match="no such reference file.*--update"):
        read_reference(tmp_path / "none.csv")


# --- end to end on a tiny run ----------------------------------------------------------------



@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    assert main(["data", "synth", "voc07", "--out", str(root / "data"), "--images", "80", "--seed", "3"]) == 0
    config = root / "bench.yaml"
    config.write_text(suite_yaml(root / "data", {"random": RANDOM}, {"voc07_svm": voc07_svm(["res5"])}))
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(root / "runs"),
                 "--device", "cpu"]) == 0
    return root / "runs" / "tiny"


def _unit_csvs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "units").glob("*.csv"))


def test_cli_planted_change_cut_reference_and_uncovered_rows(tiny_run, tmp_path, capsys) -> None:
    reference = tmp_path / "reference.csv"
    assert main(["check", str(tiny_run), "--against", str(reference), "--update"]) == 0
    assert "0 band" in capsys.readouterr().out
    ref, _ = read_reference(reference)
    assert set(ref["rule"]) == {"exact"} and (ref["determinism"] == "exact").all()
    assert main(["check", str(tiny_run), "--against", str(reference)]) == 0
    assert "RESULT: OK" in capsys.readouterr().out
    per_row = pd.read_csv(tiny_run / "check.csv")
    assert len(per_row) == len(ref) and set(per_row["rule"]) == {"exact"}

    unit = _unit_csvs(tiny_run)[0]
    record = record_path(unit)
    saved, saved_record = unit.read_bytes(), record.read_bytes()
    try:  # the random model's mAP moved by one point: an exact number, so a failure
        frame = pd.read_csv(unit, dtype=str, keep_default_na=False)
        row = frame.index[frame.metric == "mAP"][0]
        frame.loc[row, "value"] = str(float(frame.loc[row, "value"]) + 1.0)
        # saved through the store, as a run would (a hand-edited unit file fails its record instead)
        assert ResultStore(tiny_run).write_unit(frame["unit_id"].iloc[0], frame.to_dict("records")) == unit
        assert main(["check", str(tiny_run), "--against", str(reference)]) == 1
        out = capsys.readouterr().out
        assert "1 moved beyond tolerance" in out and "| exact" in out and "RESULT: FAIL" in out
    finally:
        unit.write_bytes(saved)
        record.write_bytes(saved_record)

    raw = reference.read_bytes()
    reference.write_bytes(raw[: len(raw) // 2])  # cut in half: an error (exit 2), not a pass
    assert main(["check", str(tiny_run), "--against", str(reference)]) == 2
    assert "damaged" in capsys.readouterr().err

    reference.write_bytes(raw)
    full, _ = read_reference(reference)
    write_reference(full[full["class"] != "cat"], reference)  # a reference that covers fewer rows
    assert main(["check", str(tiny_run), "--against", str(reference)]) == 1
    out = capsys.readouterr().out
    assert "not covered by the reference" in out and "RESULT: FAIL" in out
    assert main(["check", str(tiny_run), "--against", str(reference), "--allow-new"]) == 0


def test_format1_reference_cut_in_half_fails(tiny_run, tmp_path, capsys) -> None:
    """Old references (no header) cannot prove their length, but the rows they lack still fail."""
    rows = ResultStore(tiny_run).load()
    reference = tmp_path / "old.csv"
    rows.head(len(rows) // 2)[[c for c in JOIN + ["value"] if c in rows]].to_csv(reference, index=False)
    assert main(["check", str(tiny_run), "--against", str(reference)]) == 1
    out = capsys.readouterr().out
    assert "format-1" in out and "not covered by the reference" in out


def test_replicate_run_holds_only_training_units_and_keeps_replicate_zero(tiny_run, capsys) -> None:
    """A suite with nothing that trains has nothing to replicate; replicate 0's hashes are untouched."""
    config = tiny_run / "config.yaml"
    suite = load_suite("tiny", config)
    zero = plan_run(suite, tiny_run, tiny_run.parent / "feature-cache")
    assert plan_run(suite, tiny_run, tiny_run.parent / "cache", replicate=2).units == []
    stored = {u["unit_id"]: u["config_hash"] for u in json.loads((tiny_run / "manifest.json").read_text())}
    assert {u.unit_id: u.config_hash for u in zero.units} == stored
    with pytest.raises(ConfigError, match="replicate must be an integer >= 0"):
        plan_run(suite, tiny_run, tiny_run.parent / "cache", replicate=-1)


TRAINING_SUITE = """
suites:
  mixed:
    data_root: data
    models:
      random: {pretrainer: random, arch: resnet18, seed: 3}
      supervised: {pretrainer: supervised, arch: resnet18, seed: 5, epochs: 1}
    tasks:
      voc07_svm: {layers: [res5]}
      linear_places205: {layers: [res5]}
"""


def test_replicates_reseed_exactly_what_trains(tmp_path) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(TRAINING_SUITE)
    suite = load_suite("mixed", config)
    assert not unit_trains(suite, "random", "voc07_svm")
    assert unit_trains(suite, "random", "linear_places205") and unit_trains(suite, "supervised", "voc07_svm")
    zero, two = (plan_run(suite, tmp_path / "run", tmp_path / "cache", replicate=r) for r in (0, 2))
    assert {(u.model, u.task) for u in zero.units} - {(u.model, u.task) for u in two.units} == {("random", "voc07_svm")}
    hashes = {u.unit_id: u.config_hash for u in zero.units}
    assert all(hashes[u.unit_id] != u.config_hash for u in two.units)  # never mistaken for replicate 0's
    runner = UnitRunner(two, log=lambda _: None)
    assert runner.model_options("random")["seed"] == 3  # a seeded initialisation is not training
    assert runner.model_options("supervised")["seed"] == replicate_seed(5, 2) != 5
    assert runner.task_context("voc07_svm").seed == 0
    assert runner.task_context("linear_places205").seed == replicate_seed(0, 2)
    assert UnitRunner(zero, log=lambda _: None).model_options("supervised")["seed"] == 5
    seeds = {replicate_seed(s, r) for s in range(3) for r in range(1, 50)}
    assert len(seeds) == 147 and all(0 <= s < 2**31 for s in seeds)


# --- the stored reference of the mini suite --------------------------------------------------

STORED = REPO / "results" / "reference" / "goyal2019-mini.csv"


def test_stored_reference_is_intact_and_holds_exact_rows_for_every_stage() -> None:
    ref, fmt = read_reference(STORED)
    assert fmt == 2
    exact = ref[ref["rule"] == "exact"]
    assert (exact["determinism"] == "exact").all() and (exact["tolerance"] == EXACT_TOLERANCE).all()
    covered = {(task, evaluation) for task, evaluation in zip(exact["task"], exact["evaluation"])}
    # the SVM engine and AP (every layer's pooling), low-shot sampling and aggregation, and the
    # detection and normals evaluators each have numbers that no training can move
    assert {("voc07_svm", ""), ("lowshot_voc07", ""), ("lowshot_places205", ""),
            ("detection_voc07", "perturbed_ground_truth"), ("normals_nyuv2", "mean_normal_baseline")} <= covered
    layers = set(exact[(exact["task"] == "voc07_svm") & (exact["metric"] == "mAP")]["layer"])
    assert layers == {"conv1", "res2", "res3", "res4", "res5"}
    assert {"mAP_mean", "top1_mean"} <= set(exact[exact["task"].str.startswith("lowshot")]["metric"])
    band = ref[ref["rule"] == "band"]
    assert len(band) and (band["n_runs"] >= 3).all() and (band["class"] == "").all() and (band["sample"] == "").all()
    assert (ref[ref["rule"] == "aggregate"]["determinism"] == "trained").all()


def test_planted_changes_in_the_stored_reference_fail_and_its_own_values_pass() -> None:
    ref, _ = read_reference(STORED)
    run = ref[JOIN + ["value"]].copy()
    assert compare(run, ref)["regressions"].empty  # replicate 0's own values lie in their bands
    key = (run.model == "random") & (run.task == "voc07_svm") & (run.layer == "res5") & (run.metric == "mAP")
    assert key.sum() == 1
    planted = run.copy()
    planted.loc[key, "value"] += 1.0
    regressions = compare(planted, ref)["regressions"]
    assert regressions[["model", "layer", "rule"]].values.tolist() == [["random", "res5", "exact"]]
    band = ref[ref["rule"] == "band"].sort_values("tolerance").iloc[-1]  # the widest band there is
    planted = run.copy()
    where = (run[JOIN] == band[JOIN]).all(axis=1)
    planted.loc[where, "value"] = band["mean"] + 1.5 * band["tolerance"]
    regressions = compare(planted, ref)["regressions"]
    assert regressions[["model", "task", "metric", "rule"]].values.tolist() == \
        [[band["model"], band["task"], band["metric"], "band"]]


def test_a_replicate_run_is_checked_on_its_trained_rows_only(tmp_path, capsys) -> None:
    """A replicate reruns only what trains: its rows are held to their bands, and the exact rows
    it never reran are not missing."""
    from benchmark.run import write_plan

    config = tmp_path / "bench.yaml"
    config.write_text(TRAINING_SUITE)
    suite = load_suite("mixed", config)
    run, rep1, rep2 = _frames()
    reference = tmp_path / "ref.csv"
    write_reference(build_reference(run, [rep1, rep2]), reference)
    plan = plan_run(suite, tmp_path / "runs" / "mixed.replicate3", tmp_path / "cache", replicate=3)
    write_plan(plan)
    store = ResultStore(plan.run_dir)
    trained = rep1.drop(columns=["determinism"])
    store.write_unit("supervised/voc07_svm/res5", trained.to_dict("records"))
    assert main(["check", str(plan.run_dir), "--against", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "2 reference rows belong to models, tasks or layers that" in out and "0 missing" in out
    far = trained.assign(value=trained["value"] + 100)  # every trained row far outside its band
    store.write_unit("supervised/voc07_svm/res5", far.to_dict("records"))
    assert main(["check", str(plan.run_dir), "--against", str(reference)]) == 1
    assert "2 moved beyond tolerance" in capsys.readouterr().out  # the two bands; the per-class row informs


def test_a_replicate_added_to_a_reference_widens_the_bands_it_should(tmp_path) -> None:
    """``add_replicate`` gives the spreads ``build_reference`` gives with that run among the
    replicates; stored values and exact rows stay; a run that moves an exact number or lacks a
    trained row is refused."""
    run, rep1, rep2 = _frames()
    other = pd.DataFrame([_row("random", "res5", value=30.01, determinism="exact"),
                          _row("random", "res5", cls="cat", value=41.25, determinism="exact"),
                          _row("supervised", "res5", value=58.0), _row("supervised", "res5", cls="cat", value=62.0),
                          _row("supervised", "res4", value=44.0)])
    path = tmp_path / "ref.csv"
    write_reference(build_reference(run, [rep1, rep2]), path)
    reference, _ = read_reference(path)
    extended = add_replicate(reference, other)
    same_exact = other.copy()  # another machine's rounding of an exact number (within tolerance) is not spread
    same_exact.loc[0, "value"] = 30.0
    expected = build_reference(run, [rep1, rep2, same_exact])
    extended, expected = (frame.sort_values(["model", "layer", "class"], ignore_index=True)
                          for frame in (extended, expected))
    assert list(extended["rule"]) == list(expected["rule"])
    trained = extended["rule"] != "exact"
    for column in ("value", "n_runs", "mean", "std", "min", "max", "pooled_std", "pooled_dof"):
        np.testing.assert_allclose(extended.loc[trained, column].astype(float),
                                   expected.loc[trained, column].astype(float), rtol=1e-12, err_msg=column)
    # the tolerance is the rebuilt one, or the stored one where that was wider (more degrees of
    # freedom alone narrow a band: here the per-class row's)
    stored = reference.sort_values(["model", "layer", "class"], ignore_index=True)["tolerance"]
    np.testing.assert_allclose(extended.loc[trained, "tolerance"],
                               np.fmax(expected.loc[trained, "tolerance"], stored[trained]), rtol=1e-12)
    assert (expected.loc[trained, "tolerance"] < stored[trained]).any()
    before = reference.sort_values(["model", "layer", "class"], ignore_index=True)
    pd.testing.assert_frame_equal(extended.loc[~trained, before.columns], before[~trained], check_dtype=False)
    band = _pick(extended, "supervised", "res5")
    assert band["n_runs"] == 4 and band["value"] == 50.0 and band["max"] == 58.0
    assert band["std"] == pytest.approx(np.std([50, 51, 52, 58], ddof=1))
    assert _pick(extended, "random", "res5")["value"] == 30.0  # exact rows stay as stored

    write_reference(extended, path)  # a written extension reads back the same
    again, _ = read_reference(path)
    assert again["tolerance"].tolist() == pytest.approx(extended["tolerance"].tolist())

    moved = other.copy()
    moved.loc[0, "value"] = 31.0
    with pytest.raises(BenchmarkError, match="exact number"):
        add_replicate(reference, moved)
    with pytest.raises(BenchmarkError, match="lacks 1 trained row"):
        add_replicate(reference, other.iloc[:-1])


def _machine_frames():
    """Replicate 0 and two reseeded replicates of a suite with a ViT (trained, but another
    processor reproduces it) and a ResNet (trained, another processor moves it as a seed would)."""
    def rows(vit, vit_cat, resnet, top1, exact=30.0):
        return pd.DataFrame([_row("random", "res5", value=exact, determinism="exact"),
                             _row("vit", "block3", value=vit), _row("vit", "block3", cls="cat", value=vit_cat),
                             {**_row("vit", "block3", metric="top1", value=top1, task="knn"), STEP_COLUMN: 0.5},
                             _row("supervised", "res5", value=resnet)])
    return rows(40.0, 50.0, 60.0, 70.0), rows(43.0, 55.0, 61.0, 72.5), rows(38.0, 47.0, 62.0, 69.0), rows


def test_a_machine_run_holds_the_trainings_it_reproduces_within_a_point() -> None:
    """``add_machine_run``: a (model, task) whose every trained row a same-seed run on another
    machine moved by at most EXACT_TOLERANCE (or one count step) takes the ``machine`` rule,
    MACHINE_TOLERANCE around the stored value; a pair with one row moved further keeps its
    bands. A 3-point change fails a machine row and passes the band it would hide in."""
    run, rep1, rep2, rows = _machine_frames()
    reference = build_reference(run, [rep1, rep2])
    band_before = _pick(reference, "vit", "block3")["tolerance"]
    assert band_before > GUARDED_WITHIN  # seeds spread the ViT: a band cannot hold it
    other_machine = rows(40.0004, 49.999, 60.9, 70.5)  # ViT: rounding and one flipped image; ResNet: 0.9
    extended = add_machine_run(reference, other_machine)
    vit = extended[extended["model"] == "vit"]
    assert set(vit["rule"]) == {"machine"} and (vit["tolerance"] == MACHINE_TOLERANCE).all()
    assert _pick(extended, "vit", "block3")["machine_spread"] == pytest.approx(0.0004)
    assert _pick(extended, "vit", "block3", "cat")["machine_runs"] == 1
    resnet = _pick(extended, "supervised", "res5")
    assert resnet["rule"] == "band" and resnet["machine_spread"] == pytest.approx(0.9)
    assert _pick(extended, "random", "res5")["rule"] == "exact"

    def check(vit_value, knn_value=70.0, resnet_value=60.0):
        result = compare(rows(vit_value, 50.0, resnet_value, knn_value), extended)
        return sorted(zip(result["regressions"]["model"], result["regressions"]["task"]))

    assert check(40.0) == [] and check(40.99) == []
    assert check(43.0) == [("vit", "voc07_svm")] and check(37.0) == [("vit", "voc07_svm")]
    assert check(40.0, knn_value=73.0) == [("vit", "knn")]  # a count: 3 points is 6 images
    assert check(40.0, resnet_value=57.0) == []  # inside the ResNet's band: what the summary calls unguarded

    # a second machine that moves one ViT row beyond the threshold: the pair goes back to its bands
    again = add_machine_run(extended, rows(40.0, 50.3, 60.0, 70.0))
    vit_svm = (again["model"] == "vit") & (again["task"] == "voc07_svm")
    assert set(again.loc[vit_svm, "rule"]) == {"band", "aggregate"}
    assert _pick(again[again["task"] == "knn"], "vit", "block3")["rule"] == "machine"  # a pair of its own
    assert _pick(again, "vit", "block3")["tolerance"] == pytest.approx(band_before)  # its band, as it was
    wider = add_replicate(add_machine_run(reference, other_machine), rows(48.0, 50.0, 60.0, 70.0))
    assert _pick(wider, "vit", "block3")["rule"] == "machine" and _pick(wider, "vit", "block3")["tolerance"] == 1.0
    widened = add_machine_run(wider, rows(40.3, 50.0, 60.0, 70.0))  # a replicate's widening is kept when it leaves
    assert _pick(widened, "vit", "block3")["tolerance"] == pytest.approx(
        _pick(add_replicate(reference, rows(48.0, 50.0, 60.0, 70.0)), "vit", "block3")["tolerance"])
    assert _pick(widened, "vit", "block3")["tolerance"] > band_before
    assert _pick(again, "vit", "block3", "cat")["rule"] == "aggregate"
    assert _pick(again, "vit", "block3", "cat")["machine_runs"] == 2


def test_machine_runs_that_prove_nothing_are_refused(tmp_path) -> None:
    """A machine run that moves an exact number, that holds no trained row of the reference, or
    whose trained rows are the very units the reference stores, is refused; ``add_rows`` adds the
    rows a suite gained (and only those) and refuses a run with none."""
    run, rep1, rep2, rows = _machine_frames()
    reference = build_reference(run, [rep1, rep2])
    with pytest.raises(BenchmarkError, match="exact number"):
        add_machine_run(reference, rows(40.0, 50.0, 60.0, 70.0, exact=31.0))
    with pytest.raises(BenchmarkError, match="none of the reference's trained rows"):
        add_machine_run(reference, run[run["determinism"] == "exact"])
    stamped = run.assign(finished_at="2026-12-07T10:00:00+00:00")
    own = build_reference(stamped, [rep1, rep2])
    with pytest.raises(BenchmarkError, match="the very result the reference stores"):
        add_machine_run(own, stamped)

    grown = pd.concat([stamped, pd.DataFrame([_row("vit", "block3", value=12.0, task="logreg")])], ignore_index=True)
    added = add_rows(own, grown)
    assert len(added) == len(own) + 1
    new = _pick(added[added["task"] == "logreg"], "vit", "block3")
    assert (new["rule"], new["value"], new["tolerance"]) == ("fixed", 12.0, BASE_TOLERANCE)
    pd.testing.assert_frame_equal(added.iloc[:len(own)][own.columns], own, check_dtype=False)
    with pytest.raises(BenchmarkError, match="nothing to add"):
        add_rows(added, grown)
    path = tmp_path / "ref.csv"  # the machine columns survive writing and reading
    write_reference(add_machine_run(added, rows(40.0, 50.0, 60.5, 70.0)), path)
    back, _ = read_reference(path)
    assert _pick(back, "vit", "block3")["rule"] == "machine" and back["machine_runs"].max() == 1

    # a row added without replicates ("fixed") that a machine run moves by 3 points is held within
    # that move and a step, no longer at the fixed tolerance; one it reproduces takes the machine rule
    moved = add_machine_run(added, pd.concat([rows(40.0, 50.0, 60.5, 70.0), pd.DataFrame(
        [_row("vit", "block3", value=15.0, task="logreg")])], ignore_index=True))
    logreg = _pick(moved[moved["task"] == "logreg"], "vit", "block3")
    assert logreg["rule"] == "fixed" and logreg["tolerance"] == pytest.approx(3.0 + EXACT_TOLERANCE)
    assert logreg["value"] == 12.0


def test_a_run_is_held_to_the_models_tasks_and_layers_it_planned(tmp_path, capsys) -> None:
    """A run that planned fewer layers than the reference holds is not missing the others; a pair
    whose unit is not a layer (one unit for all layers) expects every layer of the reference; a
    shipped reference is found by name, and a wrong path is 'no such reference file'."""
    from benchmark.run.manifest import Unit

    run, _, _ = _frames()
    reference = build_reference(run, [])
    layer_units = [Unit("supervised/voc07_svm/res5", "supervised", "voc07_svm", "res5", "h", False)]
    nothing_ran = pd.DataFrame({"model": [], "task": [], "layer": []})
    expected = expected_rows(reference, layer_units, nothing_ran)
    rows = zip(reference["model"], reference["layer"], reference["class"], expected)
    assert [(m, layer, c) for m, layer, c, e in rows if e] == [
        ("supervised", "res5", ""), ("supervised", "res5", "cat")]
    heads = reference.assign(task="linear_places205")
    one_unit = [Unit("supervised/linear_places205/all-layers", "supervised", "linear_places205", "all-layers", "h",
                     False)]
    assert expected_rows(heads, one_unit, nothing_ran).tolist() == [False, False, True, True, True]
    assert resolve_reference("goyal2019-mini") == STORED.resolve()
    assert resolve_reference(tmp_path / "goyal2019-mini") == tmp_path / "goyal2019-mini"  # a path stays a path
    with pytest.raises(BenchmarkError, match="no such reference file: .*shipped with ssl-bench.*goyal2019-mini"):
        read_reference(tmp_path / "nowhere.csv")
