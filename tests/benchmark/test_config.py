"""benchmark.yaml loading: the shipped suites, strict keys with suggestions, duplicate keys."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from benchmark.config import (DEFAULT_CONFIG, EXECUTOR_KEYS, SUITE_KEYS, config_hash, list_suites, load_suite,
                              load_yaml)
from benchmark.errors import ConfigError
from benchmark.registry import PRETRAINERS, TASKS
from benchmark.svm.protocol import REFERENCE_COSTS, resolve_costs
from tests.paths import REPO


MINIMAL = """\
suites:
  s:
    description: tiny
    seed: 3
    models:
      rnd:
        pretrainer: random
        arch: resnet18
    tasks:
      voc07_svm:
        layers: [conv1, res5]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _error(path: Path, suite: str = "s") -> str:
    with pytest.raises(ConfigError) as info:
        load_suite(suite, path)
    return str(info.value)


# --- the shipped benchmark.yaml ----------------------------------------------------------------


def test_default_config_is_the_repo_file() -> None:
    assert DEFAULT_CONFIG == REPO / "benchmark.yaml"


from benchmark.config import pretrainer_defaults  # noqa: E402
from benchmark.options import identity_options  # noqa: E402
from benchmark.sweeps import expand_models  # noqa: E402


def _raw_repo_suites() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())["suites"]


@pytest.mark.parametrize("name", ["goyal2019", "goyal2019-mini"])
def test_repo_config_loads_both_suites(name: str) -> None:
    # compared with the file as plain PyYAML reads it, overlaid on the declared defaults
    raw = _raw_repo_suites()[name]
    suite = load_suite(name)
    assert suite.name == name and suite.source == str(DEFAULT_CONFIG)
    expected_settings = {k: raw.get(k, v) for k, v in SUITE_KEYS.items() if k not in ("models", "tasks")}
    expected_settings["executor"] = {**EXECUTOR_KEYS, **(raw.get("executor") or {})}
    assert suite.settings == expected_settings
    # a swept entry is its points (benchmark.sweeps); options added later are left out at their default
    points = expand_models(raw["models"], "benchmark.yaml", pretrainer_defaults(raw["models"]))
    assert [m.name for m in suite.models] == [name for name, _, _ in points]
    for model, (_, spec, _) in zip(suite.models, points):
        spec = dict(spec)
        assert model.pretrainer == spec.pop("pretrainer")
        declaration = PRETRAINERS.get(model.pretrainer).options
        assert model.options == identity_options({**declaration, **spec}, declaration)
    assert [t.name for t in suite.tasks] == list(raw["tasks"])
    for task in suite.tasks:
        spec = dict(raw["tasks"][task.name] or {})
        assert task.task == spec.pop("task", task.name)
        assert task.models == spec.pop("models", None)
        declaration = TASKS.get(task.task).options  # options added later are left out at their default too
        assert task.options == identity_options({**declaration, **spec}, declaration)


def test_repo_suites_follow_the_protocol() -> None:
    full = load_suite("goyal2019")
    assert [m.options["arch"] for m in full.models] == ["resnet50"]
    assert [t.task for t in full.tasks][:4] == ["voc07_svm", "lowshot_voc07", "lowshot_places205", "linear_places205"]
    assert {t.task for t in full.tasks[4:]} == {"normals_nyuv2", "detection_voc07"}
    task = full.tasks[0]
    assert task.options["solver"] == "torch"
    assert task.options["layers"] == ["conv1", "res2", "res3", "res4", "res5"]
    assert task.options["folds"] == 3 and task.options["image_size"] is None  # the reference 224 px
    assert resolve_costs(task.options["costs"], "voc07_svm") == ("reference", REFERENCE_COSTS)
    for lowshot in full.tasks[1:3]:  # the reference's low-shot protocol: k = 1..96, 5 samples, 26 costs
        assert lowshot.options["k_values"] == [1, 2, 4, 8, 16, 32, 64, 96]
        assert lowshot.options["num_samples"] == 5 and lowshot.options["costs"] == "reference"
    linear = full.tasks[3].options  # the reference's schedule at 224 px, every ResNet layer with pool5
    assert linear["schedule"] == "reference" and linear["image_size"] is None
    assert linear["batch_size"] in (None, 256) and linear["layers"][-1] == "pool5"
    mini = load_suite("goyal2019-mini")
    assert {m.pretrainer for m in mini.models} >= {"random", "supervised"}
    assert {t.task for t in mini.tasks} >= {"voc07_svm", "lowshot_voc07", "lowshot_places205", "linear_places205",
                                           "normals_nyuv2"}


def test_list_suites_descriptions() -> None:
    suites = list_suites()
    assert {"goyal2019", "goyal2019-mini"} <= set(suites)
    assert suites == {name: spec.get("description", "") for name, spec in _raw_repo_suites().items()}
    assert all(suites.values())


def test_minimal_suite_fills_defaults(tmp_path: Path) -> None:
    suite = load_suite("s", _write(tmp_path, MINIMAL))
    assert suite.settings["seed"] == 3 and suite.settings["batch_size"] == SUITE_KEYS["batch_size"]
    assert suite.models[0].options == {"arch": "resnet18", "seed": 0}
    assert suite.tasks[0].options["layers"] == ["conv1", "res5"]
    assert suite.tasks[0].options["costs"] == "reference"


# --- unknown keys -------------------------------------------------------------------------------


def test_unknown_suite_key(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.replace("    seed: 3", "    sed: 3"))
    message = _error(path)
    assert "'sed'" in message and str(path) in message and "suites.s" in message
    assert "Did you mean 'seed'?" in message


def test_unknown_model_key(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.replace("        arch: resnet18", "        acrh: resnet18"))
    message = _error(path)
    assert "'acrh'" in message and str(path) in message and "models.rnd" in message
    assert "Did you mean 'arch'?" in message


def test_unknown_task_key(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.replace("layers:", "lyaers:"))
    message = _error(path)
    assert "'lyaers'" in message and str(path) in message and "tasks.voc07_svm" in message
    assert "Did you mean 'layers'?" in message


def test_misspelt_pretrainer_key(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.replace("pretrainer: random", "pretrainr: random"))
    message = _error(path)
    assert "'pretrainr'" in message and str(path) in message and "models.rnd" in message
    assert "Did you mean 'pretrainer'?" in message


def test_model_without_pretrainer(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.replace("        pretrainer: random\n", ""))
    message = _error(path)
    assert "needs a 'pretrainer' key" in message and ", ".join(PRETRAINERS.names()) in message
    assert "Did you mean" not in message  # 'arch' is not a misspelt 'pretrainer'


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "suite:\n  s: {}\n")
    message = _error(path)
    assert "'suite'" in message and str(path) in message and "Did you mean 'suites'?" in message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.replace("layers:", "zzz:"))
    message = _error(path)
    assert "'zzz'" in message and "Did you mean" not in message
    assert "Valid keys: " + ", ".join(sorted(TASKS.get("voc07_svm").options)) in message
    assert "layers" in TASKS.get("voc07_svm").options


@pytest.mark.parametrize("text, where", [
    ("suites:\n  s:\n    tasks:\n      voc07_svm: [conv1]\n", "suites.s.tasks.voc07_svm"),
    ("suites:\n  s:\n    tasks: [voc07_svm]\n", "suites.s.tasks"),
    ("suites:\n  s:\n    models: [random]\n", "suites.s.models"),
    ("suites: [s]\n", "suites"),
    ("suites:\n  s: [1, 2]\n", "suites.s"),
])
def test_list_where_a_mapping_belongs(tmp_path: Path, text: str, where: str) -> None:
    path = _write(tmp_path, text)
    message = _error(path)
    assert f"{path}: {where} must be a mapping" in message and "got list" in message


def test_empty_sections_are_allowed(tmp_path: Path) -> None:
    suite = load_suite("s", _write(tmp_path, "suites:\n  s:\n    models:\n    tasks: {}\n"))
    assert suite.models == [] and suite.tasks == []


# --- unknown names --------------------------------------------------------------------------------


def test_unknown_suite_name_suggests_closest() -> None:
    with pytest.raises(ConfigError) as info:
        load_suite("goyal2019-mnii")
    message = str(info.value)
    assert "'goyal2019-mnii'" in message and "Did you mean 'goyal2019-mini'?" in message
    assert "Suites: " in message and "goyal2019," in message


def test_unknown_task_name_suggests_closest(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.replace("      voc07_svm:", "      voc07_svn:"))
    message = _error(path)
    assert "'voc07_svn'" in message and "Did you mean 'voc07_svm'?" in message
    assert "tasks.voc07_svn" in message and str(path) in message


def test_task_alias_with_task_key(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.replace("      voc07_svm:\n", "      my_svm:\n        task: voc07_svm\n"))
    [task] = load_suite("s", path).tasks
    assert (task.name, task.task) == ("my_svm", "voc07_svm")
    assert "task" not in task.options


def test_unknown_pretrainer_name_suggests_closest(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.replace("pretrainer: random", "pretrainer: randon"))
    message = _error(path)
    assert "'randon'" in message and "Did you mean 'random'?" in message
    assert "models.rnd" in message and str(path) in message


# --- YAML syntax -----------------------------------------------------------------------------------


def test_duplicated_key_reports_both_lines(tmp_path: Path) -> None:
    text = MINIMAL.replace("    seed: 3\n", "    seed: 3\n    seed: 4\n")
    path = _write(tmp_path, text)
    # 'seed' is on lines 4 and 5 of the file
    assert text.splitlines()[3:5] == ["    seed: 3", "    seed: 4"]
    message = _error(path)
    assert "duplicated key 'seed'" in message and str(path) in message
    assert "line 5" in message and "first at line 4" in message


def test_duplicated_key_nested_deeply(tmp_path: Path) -> None:
    text = MINIMAL.replace("        arch: resnet18\n", "        arch: resnet18\n        arch: resnet50\n")
    path = _write(tmp_path, text)
    assert text.splitlines()[8] == "        arch: resnet50"
    with pytest.raises(ConfigError, match=r"duplicated key 'arch' at line 9 \(first at line 8\)"):
        load_yaml(path)


def test_duplicated_suite_name(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "  s:\n    seed: 1\n")
    with pytest.raises(ConfigError, match=r"duplicated key 's' at line 12 \(first at line 2\)"):
        load_yaml(path)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "suites: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must contain a mapping"):
        load_yaml(_write(tmp_path, "- a\n- b\n"))


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = _write(tmp_path, "suites: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)


# --- config_hash -----------------------------------------------------------------------------------


def test_config_hash_is_order_independent_and_sensitive() -> None:
    a = {"model": ["random", {"arch": "resnet18", "seed": 0}], "unit": "res5", "seed": 0}
    b = {"seed": 0, "unit": "res5", "model": ["random", {"seed": 0, "arch": "resnet18"}]}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash({**a, "unit": "res4"}) != config_hash(a)
    assert config_hash({**a, "seed": 1}) != config_hash(a)
    # list order is meaningful (layers, costs)
    assert config_hash({"l": [1, 2]}) != config_hash({"l": [2, 1]})


def test_config_hash_is_sha256_of_sorted_json() -> None:
    obj = {"b": [1, 2.5, None], "a": {"y": "x", "x": True}}
    canonical = '{"a": {"x": true, "y": "x"}, "b": [1, 2.5, null]}'
    assert json.dumps(obj, sort_keys=True) == canonical
    assert config_hash(obj) == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_config_hash_is_stable_across_processes() -> None:
    # a resumed run must recognise its finished units: no dependence on hash randomisation
    obj = {"task": "voc07_svm", "options": {"layers": ["conv1"], "costs": "reference"}, "seed": 0}
    code = ("import json, sys; from benchmark.config import config_hash; "
            "print(config_hash(json.loads(sys.argv[1])))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(obj)], capture_output=True, text=True,
                         env=env, cwd=REPO, check=True).stdout.strip()
    assert out == config_hash(obj)


def test_executor_settings_are_validated(tmp_path: Path) -> None:
    text = MINIMAL.replace("suites:\n  s:\n", "suites:\n  s:\n    executor: {name: slurm, partiton: gpu}\n")
    with pytest.raises(ConfigError, match="partiton.*Did you mean 'partition'"):
        load_suite("s", _write(tmp_path, text))
    text = MINIMAL.replace("suites:\n  s:\n", "suites:\n  s:\n    executor: {name: kubernetes}\n")
    with pytest.raises(ConfigError, match=r"suites\.s\.executor\.name: 'kubernetes' is not allowed; "
                                          r"expected one of 'local', 'debug', 'slurm'"):
        load_suite("s", _write(tmp_path, text))
    text = MINIMAL.replace("suites:\n  s:\n", "suites:\n  s:\n    executor: {name: slurm, partition: gpu}\n")
    executor = load_suite("s", _write(tmp_path, text)).settings["executor"]
    assert executor == {**EXECUTOR_KEYS, "name": "slurm", "partition": "gpu"}


TWO_MODELS = MINIMAL.replace("""        arch: resnet18
""", """        arch: resnet18
      rnd2:
        pretrainer: random
        arch: resnet18
        seed: 1
""")


def test_task_models_restricts_the_plan(tmp_path: Path) -> None:
    from benchmark.run import plan_run

    path = _write(tmp_path, TWO_MODELS.replace("        layers: [conv1, res5]",
                                               "        layers: [conv1, res5]\n        models: [rnd2]"))
    suite = load_suite("s", path)
    assert suite.tasks[0].models == ["rnd2"] and "models" not in suite.tasks[0].options
    plan = plan_run(suite, tmp_path / "run", tmp_path / "cache")
    assert [u.unit_id for u in plan.units] == ["rnd2/voc07_svm/conv1", "rnd2/voc07_svm/res5"]
    everything = plan_run(load_suite("s", _write(tmp_path, TWO_MODELS)), tmp_path / "run", tmp_path / "cache")
    assert len(everything.units) == 4


def test_task_models_must_name_suite_models(tmp_path: Path) -> None:
    path = _write(tmp_path, TWO_MODELS.replace("        layers: [conv1, res5]",
                                               "        layers: [conv1, res5]\n        models: [rnd3]"))
    message = _error(path)
    assert "tasks.voc07_svm.models" in message and "'rnd3'" in message and "Did you mean" in message
    path = _write(tmp_path, TWO_MODELS.replace("        layers: [conv1, res5]",
                                               "        layers: [conv1, res5]\n        models: rnd2"))
    assert "must be a list of model names" in _error(path)


@pytest.mark.parametrize("options, gpu", [("", False), ("\n        svm_device: cuda", True),
                                          ("\n        svm_device: cuda:1", True),
                                          ("\n        svm_device: cuda\n        solver: liblinear", False),
                                          ("\n        svm_device: cpu", False)])
def test_svm_units_are_gpu_jobs_only_when_the_engine_is_sent_to_a_gpu(tmp_path: Path, options, gpu) -> None:
    from benchmark.run import plan_run

    path = _write(tmp_path, MINIMAL.replace("        layers: [conv1, res5]", "        layers: [conv1, res5]" + options))
    plan = plan_run(load_suite("s", path), tmp_path / "run", tmp_path / "cache")
    assert [u.needs_gpu for u in plan.units] == [gpu, gpu]
