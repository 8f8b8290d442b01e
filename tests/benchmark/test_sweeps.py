"""Sweeps in a suite: expansion into named points, nested data subsets from a recorded seed,
config hashes of the point that is the entry itself, and the data of the scaling figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.config import config_hash, load_suite
from benchmark.errors import ConfigError
from benchmark.options import Float, Int, identity_options
from benchmark.run import plan_run
from benchmark.scaling import annotate, log_axis, scaling_curves
from benchmark.sweeps import expand_models, nested_subset, sweep_columns


def test_cartesian_points_with_readable_names_in_order():
    models = {"a": {"pretrainer": "random"},
              "jig": {"pretrainer": "pretext", "method": "jigsaw", "method_options": {"num_permutations": 100},
                      "sweep": {"method_options.num_permutations": [10, 100], "arch": ["resnet18", "resnet50"]}}}
    out = expand_models(models, "f: suites.s.models")
    assert [name for name, _, _ in out] == [
        "a", "jig.num_permutations-10.arch-resnet18", "jig.num_permutations-10.arch-resnet50",
        "jig.num_permutations-100.arch-resnet18", "jig.num_permutations-100.arch-resnet50"]
    name, raw, sweep = out[2]
    assert raw == {"pretrainer": "pretext", "method": "jigsaw", "method_options": {"num_permutations": 10},
                   "arch": "resnet50"}
    assert sweep == {"sweep": "jig", "axes": {"method_options.num_permutations": 10, "arch": "resnet50"}}
    assert sweep_columns(sweep) == {"sweep": "jig", "sweep:method_options.num_permutations": 10,
                                    "sweep:arch": "resnet50"}
    assert models["jig"]["method_options"] == {"num_permutations": 100}  # the entry itself is not modified


def test_the_point_equal_to_the_entry_keeps_its_name():
    models = {"j": {"pretrainer": "pretext", "method": "jigsaw", "sweep": {"data_fraction": [0.25, 1.0]}}}
    names = [n for n, _, _ in expand_models(models, "w", {"pretext": {"data_fraction": 1.0}})]
    assert names == ["j.data_fraction-0.25", "j"]
    # without knowing the default, no point claims the entry's name
    assert [n for n, _, _ in expand_models(models, "w")] == ["j.data_fraction-0.25", "j.data_fraction-1.0"]


@pytest.mark.parametrize("sweep, message", [
    ({"data_fraction": []}, "non-empty list"),
    ({"data_fraction": [0.5, 0.5]}, "repeat"),
    ([0.5], "mapping of option key paths"),
    ({"pretrainer": ["random"]}, "cannot be swept"),
    ({"a.seed": [1, 2], "b.seed": [1, 2]}, "same name"),
    ({"data_fraction": [{"x": 1}]}, "non-empty list"),
])
def test_bad_sweeps_are_refused_naming_the_key(sweep, message):
    with pytest.raises(ConfigError, match=message) as info:
        expand_models({"m": {"pretrainer": "random", "sweep": sweep}}, "bench.yaml: suites.s.models")
    assert "bench.yaml: suites.s.models.m" in str(info.value)


def test_point_names_clashing_with_models_or_breaking_the_name_rule():
    with pytest.raises(ConfigError, match="named like other models"):
        expand_models({"m.seed-1": {"pretrainer": "random"},
                       "m": {"pretrainer": "random", "sweep": {"seed": [1, 2]}}}, "w")
    with pytest.raises(ConfigError, match="cannot be used"):
        expand_models({"m" * 60: {"pretrainer": "random", "sweep": {"seed": [1, 2]}}}, "w")
    # characters outside the name rule are spelt '_'
    out = expand_models({"p": {"pretrainer": "pretext", "sweep": {"data": ["voc07:trainval", "/x/y"]}}}, "w")
    assert [n for n, _, _ in out] == ["p.data-voc07_trainval", "p.data-_x_y"]


SUITE = """
suites:
  s:
    models:
      plain: {pretrainer: random, arch: resnet18, seed: 3}
      swept:
        pretrainer: random
        arch: resnet18
        seed: 3
        sweep: {seed: [3, 4]}
      pre:
        pretrainer: pretext
        method: rotation
        arch: resnet18
        sweep: {data_fraction: [0.5, 1.0], data_seed: [0, 1]}
    tasks:
      voc07_svm: {layers: [res5], models: [plain, swept, pre]}
"""


def test_suite_expansion_hashes_and_task_model_lists(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(SUITE)
    suite = load_suite("s", path)
    names = [m.name for m in suite.models]
    assert names == ["plain", "swept", "swept.seed-4", "pre.data_fraction-0.5.data_seed-0",
                     "pre.data_fraction-0.5.data_seed-1", "pre", "pre.data_fraction-1.0.data_seed-1"]
    # a task's list names the entry itself (the point that kept it) exactly
    assert suite.tasks[0].models == ["plain", "swept", "pre"]
    plan = plan_run(suite, tmp_path / "run", tmp_path / "cache")
    by_model = {u.model: u.config_hash for u in plan.units}
    # the point equal to the entry has the entry's hash, i.e. that of the same model without a sweep
    assert by_model["plain"] == by_model["swept"]
    pre = next(m for m in suite.models if m.name == "pre")
    assert "data_fraction" not in pre.options and "data_seed" not in pre.options  # options at default: left out
    half = next(m for m in suite.models if m.name == "pre.data_fraction-0.5.data_seed-1")
    assert (half.options["data_fraction"], half.options["data_seed"]) == (0.5, 1)
    assert half.row_columns() == {"sweep": "pre", "sweep:data_fraction": 0.5, "sweep:data_seed": 1}


def test_a_bad_point_value_names_the_sweep_point(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(SUITE.replace("[0.5, 1.0]", "[0.5, 2.0]"))
    with pytest.raises(ConfigError, match=r"suites\.s\.models\.pre \(sweep point pre\.data_fraction-2\.0\.data_seed-0\)"
                                          r"\.data_fraction: 2\.0"):
        load_suite("s", path)


def test_task_models_naming_a_sweep_without_its_own_point_means_all_points(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(SUITE.replace("sweep: {seed: [3, 4]}", "sweep: {seed: [5, 6]}")
                    .replace("models: [plain, swept, pre]", "models: [swept]"))
    assert load_suite("s", path).tasks[0].models == ["swept.seed-5", "swept.seed-6"]


def test_options_added_later_stay_out_of_the_identity_at_default():
    spec = {"a": Int(1), "new": Float(1.0, omit_at_default=True)}
    assert identity_options({"a": 1, "new": 1.0}, spec) == {"a": 1}
    assert identity_options({"a": 1, "new": 0.5}, spec) == {"a": 1, "new": 0.5}
    assert config_hash(identity_options({"a": 1, "new": 1.0}, spec)) == config_hash({"a": 1})


def test_nested_subsets_from_a_seed():
    keys = [f"img{i:04d}.jpg" for i in range(1000)]
    quarter, half, whole = (set(keys[i] for i in nested_subset(keys, f, seed=7)) for f in (0.25, 0.5, 1.0))
    assert len(quarter) == 250 and len(half) == 500 and whole == set(keys)
    assert quarter < half < whole  # nested
    # the same images whatever order the files were listed in
    shuffled = list(np.random.default_rng(0).permutation(keys))
    assert {shuffled[i] for i in nested_subset(shuffled, 0.25, seed=7)} == quarter
    # another seed draws another subset; the indices are ascending
    other = {keys[i] for i in nested_subset(keys, 0.25, seed=8)}
    assert other != quarter and len(other) == 250
    idx = nested_subset(keys, 0.3, seed=7)
    assert list(idx) == sorted(idx) and len(idx) == 300
    assert len(nested_subset(keys[:3], 0.01, seed=0)) == 1  # at least one image; ceil(0.3 * 1000) above
    with pytest.raises(ConfigError, match="data_fraction"):
        nested_subset(keys, 0.0, seed=0)


def test_pretext_subset_is_keyed_by_relative_paths(tmp_path):
    from pretrainers.pretext.trainer import select_subset

    for root in (tmp_path / "a", tmp_path / "b"):
        (root / "x").mkdir(parents=True)
    names = [f"x/{i}.jpg" for i in range(40)]
    a = select_subset([tmp_path / "a" / n for n in names], tmp_path / "a", 0.25, 0)
    b = select_subset([tmp_path / "b" / n for n in reversed(names)], tmp_path / "b", 0.25, 0)
    assert len(a) == 10
    assert sorted(p.relative_to(tmp_path / "a") for p in a) == sorted(p.relative_to(tmp_path / "b") for p in b)


def _sweep_rows():
    rows = []
    values = {(0.25, 0, "res4"): 10.0, (0.25, 1, "res4"): 14.0, (1.0, 0, "res4"): 30.0, (1.0, 1, "res4"): 31.0,
              (0.25, 0, "res5"): 5.0, (0.25, 1, "res5"): 7.0, (1.0, 0, "res5"): 20.0, (1.0, 1, "res5"): 26.0}
    for (fraction, seed, layer), value in values.items():
        rows.append({"model": f"m{fraction}-{seed}", "task": "voc07_svm", "layer": layer, "metric": "mAP",
                     "value": value, "sweep": "m", "sweep:data_fraction": fraction, "sweep:seed": seed})
        rows.append({"model": f"m{fraction}-{seed}", "task": "voc07_svm", "layer": layer, "metric": "AP",
                     "class": "cat", "value": 99.0, "sweep": "m", "sweep:data_fraction": fraction, "sweep:seed": seed})
    rows.append({"model": "other", "task": "voc07_svm", "layer": "res5", "metric": "mAP", "value": 1.0})
    # a task run for one point only (its `models:` list) draws no curve
    rows.append({"model": "m1.0-0", "task": "linear_places205", "layer": "res5", "metric": "top1", "value": 5.0,
                 "sweep": "m", "sweep:data_fraction": 1.0, "sweep:seed": 0})
    return pd.DataFrame(rows)


def test_scaling_curve_data_averages_over_the_seed_axis():
    curves = scaling_curves(_sweep_rows())
    assert set(curves["axis"]) == {"data_fraction"}  # the seed axis is a spread, not a curve
    assert curves[["layer", "x", "n"]].values.tolist() == [["res4", "0.25", 2], ["res4", "1.0", 2],
                                                           ["res5", "0.25", 2], ["res5", "1.0", 2]]
    np.testing.assert_allclose(curves["mean"], [12.0, 30.5, 6.0, 23.0])
    np.testing.assert_allclose(curves["std"], [np.std([10, 14], ddof=1), np.std([30, 31], ddof=1),
                                               np.std([5, 7], ddof=1), np.std([20, 26], ddof=1)])
    assert curves["log_axis"].all()  # 0.25 .. 1: a factor of 4


def test_scaling_with_two_position_axes_draws_one_curve_per_value_of_the_other():
    df = pd.DataFrame([{"model": f"{n}-{a}", "task": "t", "layer": "res5", "metric": "mAP", "value": float(n + len(a)),
                        "sweep": "j", "sweep:method_options.num_permutations": n, "sweep:arch": a}
                       for n in (10, 100, 1000) for a in ("resnet18", "resnet50")])
    curves = scaling_curves(df)
    perms = curves[curves["axis"] == "method_options.num_permutations"]
    assert sorted(set(perms["fixed"])) == ["arch=resnet18", "arch=resnet50"]
    assert perms[perms["fixed"] == "arch=resnet50"]["mean"].tolist() == [18.0, 108.0, 1008.0]
    archs = curves[curves["axis"] == "arch"]
    assert len(archs) == 6 and not archs["log_axis"].any()


def test_log_axis_rule():
    assert log_axis([10, 100]) and log_axis([0.25, 1.0])
    assert not log_axis([0.5, 1.0]) and not log_axis(["resnet18", "resnet50"]) and not log_axis([0, 10])


def test_rows_of_a_run_get_their_sweep_columns_from_its_config(tmp_path):
    (tmp_path / "config.yaml").write_text(SUITE)
    (tmp_path / "invocation.json").write_text(json.dumps({"suite": "s"}))
    df = pd.DataFrame({"model": ["plain", "pre.data_fraction-0.5.data_seed-1", "pre"], "value": [1.0, 2.0, 3.0]})
    out = annotate(df, tmp_path)
    assert out["sweep"].tolist()[1:] == ["pre", "pre"] and pd.isna(out["sweep"].iloc[0])
    assert out["sweep:data_fraction"].tolist()[1:] == [0.5, 1.0]
    assert annotate(df, tmp_path / "missing").equals(df)


def test_checkpoint_names_made_before_data_fraction_existed_hold():
    from benchmark.config import DEFAULT_CONFIG
    from pretrainers.supervised import Supervised

    suite = load_suite("goyal2019-mini", DEFAULT_CONFIG)
    spec = next(m for m in suite.models if m.name == "supervised")
    # the name of the mini suite's supervised checkpoint before the option existed
    assert Supervised(**spec.options).config_hash() == "21a9c117acd38751"
    assert Supervised(**{**spec.options, "data_fraction": 0.5}).config_hash() != "21a9c117acd38751"
    assert Supervised(**{**spec.options, "data_fraction": 1.0, "data_seed": 0}).config_hash() == "21a9c117acd38751"
    # the mini suite's sweep: the 1.0 point is the jigsaw model itself, the 0.25 point a new model
    jigsaw = [m for m in suite.models if m.sweep.get("sweep") == "jigsaw"]
    assert [(m.name, m.sweep["axes"]) for m in jigsaw] == [("jigsaw.data_fraction-0.25", {"data_fraction": 0.25}),
                                                          ("jigsaw", {"data_fraction": 1.0})]
    assert "data_fraction" not in jigsaw[1].options
