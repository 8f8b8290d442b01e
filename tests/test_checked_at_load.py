"""Hardening, checked at load: declared option types and ranges, names that become paths, YAML
alias bombs, device requests, checkpoints holding pickled objects, and Ctrl-C. Every bad input is
refused before any work, with the file, the key path, the value and what is allowed."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from benchmark import cli
from benchmark.checkpoint import read_checkpoint
from benchmark.cli import main
from benchmark.config import DEFAULT_CONFIG, config_hash, load_suite, load_yaml
from benchmark.errors import CheckpointError, ConfigError
from benchmark.options import NAME_MAX_LENGTH, Int, ListOf, Options, declare, validate
from benchmark.registry import PRETRAINERS, TASKS
from benchmark.run import plan_run

REPO = Path(__file__).resolve().parent.parent

SUITE = """\
suites:
  s:
    data_root: {data}
    num_workers: 0
    models:
      random:
        pretrainer: random
        arch: resnet18
    tasks:
      voc07_svm:
        layers: [res5]
        image_size: 32
        costs: [1.0]
        n_jobs: 1
"""


def _config(tmp_path: Path, edit=None, text: str | None = None) -> Path:
    """bench.yaml from SUITE, after ``edit(raw dict)`` changed it (or ``text`` as given)."""
    path = tmp_path / "bench.yaml"
    if text is None:
        raw = yaml.safe_load(SUITE.format(data=tmp_path / "data"))
        if edit is not None:
            edit(raw["suites"]["s"])
        text = yaml.safe_dump(raw, sort_keys=False)
    path.write_text(text)
    return path


def _model(name: str, **options):
    return lambda s: s["models"].__setitem__(name, options)


def _task(name: str, **options):
    return lambda s: s["tasks"].__setitem__(name, options)


def _set(block: str | tuple[str, str], key: str, value):
    """Sets ``key`` in the suite block ("") or in one of its entries (("tasks", "voc07_svm"))."""
    return lambda s: (s if block == "" else s[block[0]][block[1]]).__setitem__(key, value)


# --- 1. declared, typed options ------------------------------------------------------------------

BAD_OPTIONS = [
    # (edit of the suite, key path in the message, the value as shown, what is allowed)
    (_task("lowshot_voc07", k_values=[1, 2, -4]), "tasks.lowshot_voc07.k_values[2]", "-4", "an integer >= 1"),
    (_task("lowshot_places205", num_samples=0), "tasks.lowshot_places205.num_samples", "0", "an integer >= 1"),
    (_set("", "batch_size", "64"), "s.batch_size", "'64'", "an integer >= 1"),
    (_set("", "batch_size", -8), "s.batch_size", "-8", "an integer >= 1"),
    (_set("", "seed", -1), "s.seed", "-1", "an integer >= 0"),
    (_set("", "num_workers", 1.5), "s.num_workers", "1.5", "an integer >= 0"),
    (_set(("tasks", "voc07_svm"), "image_size", -64), "tasks.voc07_svm.image_size", "-64", "an integer >= 16"),
    (_set(("tasks", "voc07_svm"), "folds", 1), "tasks.voc07_svm.folds", "1", "an integer >= 2"),
    (_set(("tasks", "voc07_svm"), "costs", "referense"), "tasks.voc07_svm.costs", "'referense'",
     "one of 'reference', 'vissl' or a list of at least 1 items, each a number > 0"),
    (_set(("tasks", "voc07_svm"), "costs", [0.1, -1.0]), "tasks.voc07_svm.costs[1]", "-1.0", "a number > 0"),
    (_set(("tasks", "voc07_svm"), "solver", "sklearn"), "tasks.voc07_svm.solver", "'sklearn'",
     "one of 'torch', 'liblinear'"),
    (_set(("tasks", "voc07_svm"), "span_coordinates", "yes"), "tasks.voc07_svm.span_coordinates", "'yes'",
     "true or false"),
    (_set(("tasks", "voc07_svm"), "layers", [1, 2]), "tasks.voc07_svm.layers[0]", "1", "a layer name"),
    (_task("linear_places205", schedule="fast"), "tasks.linear_places205.schedule", "'fast'",
     "one of 'reference', 'vissl', 'custom'"),
    (_task("linear_places205", schedule="custom", epochs=-3, milestones=[]), "tasks.linear_places205.epochs", "-3",
     "a number > 0"),
    (_task("linear_places205", world_size=0), "tasks.linear_places205.world_size", "0",
     "one of 'auto' or an integer >= 1"),
    (_task("normals_nyuv2", train_short_side=[300]), "tasks.normals_nyuv2.train_short_side", "[300]",
     "[low, high] with low <= high"),
    (_task("detection_voc07", rpn_lr="fast"), "tasks.detection_voc07.rpn_lr", "'fast'", "a number > 0"),
    (_model("sup", pretrainer="supervised", arch="resnet18", lr=-0.1), "models.sup.lr", "-0.1", "a number > 0"),
    (_model("sup", pretrainer="supervised", arch="resnet18", epochs="ten"), "models.sup.epochs", "'ten'",
     "an integer >= 1"),
    (_model("sup", pretrainer="supervised", arch="resnet18", crop_scale=[0.0, 1.0]), "models.sup.crop_scale[0]",
     "0.0", "a number > 0 and <= 1"),
    (_model("r", pretrainer="random", arch="resnet19"), "models.r.arch", "'resnet19'", "Did you mean 'resnet18'?"),
    (_model("jig", pretrainer="pretext", method="jigsaw", arch="resnet18", method_options={"num_permutations": "many"}),
     "models.jig.method_options.num_permutations", "'many'", "an integer >= 1"),
    (_model("m", pretrainer="pretext", method="moco", arch="resnet18", method_options={"momentum": 1.5}),
     "models.m.method_options.momentum", "1.5", "a number >= 0 and <= 1"),
    (_model("rot", pretrainer="pretext", method="rotatoin", arch="resnet18"), "models.rot.method", "'rotatoin'",
     "Did you mean 'rotation'?"),
    (_model("rot", pretrainer="pretext", method="rotation", arch="resnet18", optimizer="adam"), "models.rot.optimizer",
     "'adam'", "one of 'sgd', 'lars'"),
    (lambda s: s.__setitem__("executor", {"name": "slurm", "mem_gb": -1}), "s.executor.mem_gb", "-1",
     "an integer >= 1"),
    (lambda s: s.__setitem__("executor", {"name": "kubernetes"}), "s.executor.name", "'kubernetes'",
     "one of 'local', 'debug', 'slurm'"),
]


@pytest.mark.parametrize("edit, key, value, allowed", BAD_OPTIONS, ids=[case[1] for case in BAD_OPTIONS])
def test_bad_option_values_are_refused_at_load(tmp_path, edit, key, value, allowed) -> None:
    path = _config(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        load_suite("s", path)
    message = str(info.value)
    assert message.startswith(f"{path}: suites.s"), message
    assert f"{key}: {value} is not allowed; expected" in message and allowed in message, message


def test_a_missing_required_option_is_named(tmp_path) -> None:
    path = _config(tmp_path, _model("ck", pretrainer="checkpoint", arch="resnet18"))
    with pytest.raises(ConfigError, match=rf"{path}: suites\.s\.models\.ck\.path is required"):
        load_suite("s", path)
    path = _config(tmp_path, _model("p", pretrainer="pretext", arch="resnet18"))
    with pytest.raises(ConfigError, match=r"models\.p\.method is required; expected one of .*rotation"):
        load_suite("s", path)


def test_layers_must_exist_in_every_evaluated_architecture(tmp_path) -> None:
    def edit(s):
        s["models"]["alex"] = {"pretrainer": "random", "arch": "alexnet"}
        s["tasks"]["voc07_svm"]["layers"] = ["conv1", "res5"]
    path = _config(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        load_suite("s", path)
    assert (f"{path}: suites.s.tasks.voc07_svm.layers[1]: 'res5' is not a layer of alexnet (the architecture of "
            f"model 'alex'); expected one of conv1") in str(info.value)
    # res5 is the other model's layer: the message names both ways out
    assert ("'res5' is a layer of 'random' only: leave 'layers' out (each model then gets its own architecture's "
            "default layers), or give the task 'models: [random]' and add an instance for 'alex', e.g. "
            "'voc07_svm_alex: {task: voc07_svm, models: [alex], layers: [...]}'") in str(info.value)

    def no_layers(s):  # without layers, each model its own architecture's defaults
        edit(s)
        del s["tasks"]["voc07_svm"]["layers"]
    assert load_suite("s", _config(tmp_path, no_layers)).tasks[0].options["layers"] is None

    def only_resnet(s):  # the task evaluates only the ResNet: its layers are fine
        edit(s)
        s["tasks"]["voc07_svm"]["models"] = ["random"]
    assert load_suite("s", _config(tmp_path, only_resnet)).tasks[0].options["layers"] == ["conv1", "res5"]


def test_bad_option_fails_the_cli_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    import benchmark.models.backbone as backbone

    monkeypatch.setattr(backbone, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    path = _config(tmp_path, _task("lowshot_voc07", k_values=[1, 2, -4]))
    out = tmp_path / "runs"
    code = main(["run", "--suite", "s", "--config", str(path), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}: suites.s.tasks.lowshot_voc07.k_values[2]: -4 is not allowed; expected" in err
    assert "Traceback" not in err and not out.exists()


# task instances added to the suites since the hashes were stored (the classification tasks; the
# transfer datasets, linear and finetune of the mini suite)
ADDED_TASKS = {"knn", "logreg", "linear_probe", "logreg_cifar10", "logreg_flowers102", "logreg_voc2007", "linear",
               "finetune"}


def test_every_suite_of_benchmark_yaml_loads_and_its_config_hashes_are_unchanged() -> None:
    """The declarations changed how options are checked, not what they are: the hash that decides
    whether a unit is done is the one computed before they were typed (tests/data, made on main)."""
    before = json.loads((REPO / "tests" / "data" / "config_hashes_before_typed_options.json").read_text())
    # models added since (with their own task instances) may only add units, never change one
    added = {"goyal2019-mini": {"vit"}, "goyal2019": set()}
    # units dropped from a suite since, deliberately (with their reference rows): CI time
    removed = {"goyal2019-mini": {"random/detection_voc07/frozen"}, "goyal2019": set()}
    for name in ("goyal2019-mini", "goyal2019"):
        suite = load_suite(name, DEFAULT_CONFIG)
        plan = plan_run(suite, Path("/nonexistent/run"), Path("/nonexistent/cache"))
        # units and models added since are sweep points (benchmark.sweeps), models with their own
        # task instances (the ViT) or units of the classification tasks; every earlier one is unchanged
        new = added[name] | {m.name for m in suite.models if m.sweep and m.name not in before[f"{name}:models"]}
        hashes = {u.unit_id: u.config_hash for u in plan.units}
        assert not removed[name] & set(hashes)
        kept = {u: h for u, h in before[name].items() if u not in removed[name]}
        assert {u: hashes.get(u) for u in kept} == kept
        assert all(u.split("/")[0] in new or u.split("/")[1] in ADDED_TASKS for u in set(hashes) - set(before[name]))
        assert {m.name: config_hash({**m.options}) for m in suite.models if m.name not in new} \
            == before[f"{name}:models"]


def test_validated_options_are_a_read_only_typed_mapping() -> None:
    options = validate({"k": [1, 2]}, declare({"k": ListOf(Int(min=1), [1]), "n": Int(3, min=0)}), "here")
    assert isinstance(options, Options) and options.k == [1, 2] and options["n"] == 3 and options.get("x") is None
    for mutate in (lambda: options.__setitem__("n", 4), lambda: options.update(n=4), lambda: options.pop("n"),
                   lambda: setattr(options, "n", 4), lambda: options.__delitem__("n")):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    with pytest.raises(AttributeError, match="no option 'x'"):
        options.x
    # what the run directory, the cache and job pickles do with it: the same as with a dict
    assert json.dumps(options, sort_keys=True) == json.dumps({"k": [1, 2], "n": 3}, sort_keys=True)
    assert pickle.loads(pickle.dumps(options)) == options and copy.deepcopy(options) == options
    assert yaml.safe_load(yaml.safe_dump({"o": options})) == {"o": {"k": [1, 2], "n": 3}}
    # a value is kept as given: an int where a number is declared is not turned into a float
    assert type(validate({"lr": 1}, PRETRAINERS.get("supervised").options, "m")["lr"]) is int


def test_a_plugin_made_in_code_gets_defaults_and_the_same_checks() -> None:
    task = TASKS.get("voc07_svm")(layers=["res5"])
    assert task.config.folds == 3 and task.config["solver"] == "torch"
    with pytest.raises(ConfigError, match=r"task 'voc07_svm'\.folds: 0 is not allowed; expected an integer >= 2"):
        TASKS.get("voc07_svm")(folds=0)
    with pytest.raises(ConfigError, match=r"unknown key 'fold' in task 'voc07_svm'\. Did you mean 'folds'\?"):
        TASKS.get("voc07_svm")(fold=3)
    # the declaration reads as {key: default}, as plugins written before typed options expect
    assert dict(TASKS.get("voc07_svm").options)["costs"] == "reference"


def test_pretrain_cli_refuses_bad_arguments_before_training(tmp_path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "x.pth"
    for argv, expected in (
        (["--batch-size", "-1"], "ssl-bench pretrain.batch_size: -1 is not allowed; expected an integer >= 1"),
        (["--image-size", "8"], "ssl-bench pretrain.image_size: 8 is not allowed; expected an integer >= 16"),
        (["--lr", "-0.5"], "ssl-bench pretrain.lr: -0.5 is not allowed; expected a number >= 0"),
        (["--arch", "resnet5"], "ssl-bench pretrain.arch: 'resnet5' is not allowed"),
        (["--opt", "temperature=-1"], "ssl-bench pretrain.method_options.temperature: -1 is not allowed; "
                                       "expected a number > 0"),
        (["--device", "gpu"], "ssl-bench pretrain --device: device 'gpu' cannot be used"),
    ):
        code = main(["pretrain", "simclr", "--data", str(images), "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "Traceback" not in err, (argv, err)
        assert not out.exists() and not out.with_name("x.partial.pth").exists()


# --- 2. names that become paths ------------------------------------------------------------------

BAD_NAMES = ["../escape", "/abs/path", "a/b", "moco v2", "moco:v2", ".hidden", "a..b", "", "x" * (NAME_MAX_LENGTH + 1),
             "tab\tname", "back\\slash"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_model_and_task_names_are_checked_against_the_character_set(tmp_path, name) -> None:
    path = _config(tmp_path, _model(name, pretrainer="random", arch="resnet18"))
    with pytest.raises(ConfigError) as info:
        load_suite("s", path)
    message = str(info.value)
    assert f"{path}: suites.s.models: model name {name!r} cannot be used" in message
    assert "A-Z a-z 0-9 _ . -" in message and "no '..'" in message

    def task(s):
        s["tasks"][name] = {"task": "voc07_svm", "layers": ["res5"]}
    with pytest.raises(ConfigError, match=r"suites\.s\.tasks: task name .* cannot be used"):
        load_suite("s", _config(tmp_path, task))


def test_suite_names_and_dataset_splits_are_checked(tmp_path) -> None:
    text = SUITE.format(data=tmp_path).replace("  s:\n", "  ../../outside:\n", 1)
    path = _config(tmp_path, text=text)
    with pytest.raises(ConfigError, match=rf"{path}: suites: suite name '../../outside' cannot be used"):
        load_suite("../../outside", path)
    path = _config(tmp_path, _set(("tasks", "voc07_svm"), "train_split", "../../etc"))
    with pytest.raises(ConfigError, match=r"tasks\.voc07_svm\.train_split: '\.\./\.\./etc' is not allowed; expected "
                                          r"a name of 1-64 characters"):
        load_suite("s", path)
    path = _config(tmp_path, _model("sup", pretrainer="supervised", arch="resnet18", split="a/b"))
    with pytest.raises(ConfigError, match=r"models\.sup\.split: 'a/b' is not allowed"):
        load_suite("s", path)
    path = _config(tmp_path, _model("rot", pretrainer="pretext", method="rotation", arch="resnet18", data="voc07:../x"))
    with pytest.raises(ConfigError,
                       match=r"models\.rot\.data: 'voc07:\.\./x' is not allowed; expected an image folder"):
        load_suite("s", path)


def test_the_names_of_benchmark_yaml_stay_valid() -> None:
    for name in ("goyal2019", "goyal2019-mini"):
        suite = load_suite(name, DEFAULT_CONFIG)
        assert suite.models and suite.tasks


# --- 3. YAML aliases -----------------------------------------------------------------------------

def _bomb(levels: int = 9) -> str:
    """A billion-laughs document: each level repeats the previous one ten times."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines)


def test_an_alias_bomb_inside_a_valid_option_is_refused_quickly(tmp_path) -> None:
    # the bomb sits under a key that exists (description), so only the alias bound can stop it
    text = SUITE.format(data=tmp_path).replace(
        "    num_workers: 0\n",
        "    num_workers: 0\n    description: &top\n"
        + "\n".join("      " + line for line in _bomb().splitlines()) + "\n",
        1)
    path = _config(tmp_path, text=text)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert time.perf_counter() - start < 5
    assert str(info.value).startswith(f"{path}: YAML aliases (*name) expand this document by more than 10,000")
    assert "billion laughs" in str(info.value)
    assert main(["run", "--suite", "s", "--config", str(path), "--out", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


def test_recursive_aliases_are_refused_and_modest_ones_accepted(tmp_path) -> None:
    path = _config(tmp_path, text="suites: &s\n  s: *s\n")
    with pytest.raises(ConfigError, match=rf"{path}: the value anchored at line 1 contains an alias of itself"):
        load_yaml(path)
    shared = SUITE.format(data=tmp_path).replace("layers: [res5]", "layers: &layers [res4, res5]") + \
        "      other:\n        task: voc07_svm\n        layers: *layers\n"
    suite = load_suite("s", _config(tmp_path, text=shared))
    assert [t.options["layers"] for t in suite.tasks] == [["res4", "res5"], ["res4", "res5"]]


def test_pretrain_opt_values_use_the_same_loader(tmp_path, capsys) -> None:
    from pretrainers.pretext.trainer import parse_opts

    with pytest.raises(ConfigError, match="duplicated key 'a'"):
        parse_opts(["x={a: 1, a: 2}"])
    nested = "{" + ", ".join(f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}" if i else "x"] * 10) + "]"
                             for i in range(8)) + "}"
    with pytest.raises(ConfigError, match=r"--opt 'x=.*': YAML aliases \(\*name\) expand"):
        parse_opts([f"x={nested}"])
    assert parse_opts(["x=[&a 1, *a, *a]"]) == {"x": [1, 1, 1]}


# --- 4. devices ----------------------------------------------------------------------------------

@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _run(tmp_path, path, *extra) -> tuple[int, Path]:
    out = tmp_path / "runs"
    return main(["run", "--suite", "s", "--config", str(path), "--out", str(out), *extra]), out


def test_cuda_without_a_gpu_is_refused_at_start_up(tmp_path, capsys, no_gpu) -> None:
    path = _config(tmp_path)
    code, out = _run(tmp_path, path, "--device", "cuda")
    err = capsys.readouterr().err
    assert code == 2 and "--device: device 'cuda' cannot be used: this machine has no usable CUDA GPU" in err
    assert not (out / "s" / "units").exists() and not (out / "s").exists()
    path = _config(tmp_path, _set("", "device", "cuda:0"))
    code, out = _run(tmp_path, path)
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: suites.s.device: device 'cuda:0' cannot be used: this machine has no" in err
    path = _config(tmp_path, _set(("tasks", "voc07_svm"), "svm_device", "cuda"))
    code, out = _run(tmp_path, path, "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: suites.s.tasks.voc07_svm.svm_device: device 'cuda' cannot be used" in err
    assert not (out / "s").exists()


def test_a_gpu_index_out_of_range_is_refused(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code, out = _run(tmp_path, _config(tmp_path), "--device", "cuda:3")
    err = capsys.readouterr().err
    assert code == 2 and "device 'cuda:3' cannot be used: this machine has 2 CUDA GPU(s), cuda:0..cuda:1" in err
    assert not (out / "s").exists()


def test_unknown_device_strings_are_refused(tmp_path, capsys, no_gpu) -> None:
    for bad in ("gpu", "cuda:x", "tpu", "CPU"):
        code, out = _run(tmp_path, _config(tmp_path), "--device", bad)
        err = capsys.readouterr().err
        assert code == 2 and f"--device: device {bad!r} cannot be used: it is not a device ssl-bench knows; use " \
            f"auto, cpu, cuda, cuda:N or mps" in err
    path = _config(tmp_path, _set("", "device", "gpu"))
    with pytest.raises(ConfigError, match=rf"{path}: suites\.s\.device: 'gpu' is not allowed; expected auto, cpu"):
        load_suite("s", path)
    path = _config(tmp_path, _set(("tasks", "voc07_svm"), "svm_device", "cuda0"))
    with pytest.raises(ConfigError, match=r"tasks\.voc07_svm\.svm_device: 'cuda0' is not allowed"):
        load_suite("s", path)


def test_resume_checks_the_device_the_run_was_started_with(tmp_path, capsys, no_gpu) -> None:
    from benchmark.run import write_plan

    run_dir = tmp_path / "runs" / "s"
    write_plan(plan_run(load_suite("s", _config(tmp_path)), run_dir, tmp_path / "cache", device="cuda:1"))
    assert main(["resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'invocation.json'} (device): device 'cuda:1' cannot be used: this machine has no usable" in err
    assert not (run_dir / "units").exists()


def test_slurm_runs_check_only_the_form_of_device_requests(tmp_path, no_gpu) -> None:
    """The driver of a SLURM run may sit on a login node without a GPU; its jobs get one."""
    from benchmark.run import check_devices

    plan = plan_run(load_suite("s", _config(tmp_path)), tmp_path / "run", tmp_path / "cache", device="cuda")
    check_devices(plan, "slurm")
    with pytest.raises(ConfigError, match="this machine has no usable CUDA GPU"):
        check_devices(plan, "local")
    plan.device = "gpu"
    with pytest.raises(ConfigError, match=r"--device: 'gpu' is not allowed; expected auto, cpu"):
        check_devices(plan, "slurm")


# --- 5. checkpoints holding pickled objects ------------------------------------------------------

class _Payload:
    """Runs a command when unpickled, as a hostile checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Config:
    pass


@pytest.mark.parametrize("kind", ["module", "class", "code", "code-legacy-format"])
def test_pickled_objects_are_refused_with_a_safe_way_out(tmp_path, kind) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / f"{kind}.pth"
    objects = {"module": {"model": torch.nn.Linear(2, 2)}, "class": {"state_dict": {}, "cfg": _Config()},
               "code": {"x": _Payload(marker)}, "code-legacy-format": {"x": _Payload(marker)}}[kind]
    if kind == "code-legacy-format":
        with open(path, "wb") as handle:
            torch.save(objects, handle, _use_new_zipfile_serialization=False)
    else:
        torch.save(objects, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert f"checkpoint {path} holds pickled Python objects" in message
    assert "ssl-bench (which reads checkpoints with torch.load(weights_only=True)) will not execute them" in message
    assert "in an environment you trust" in message and "torch.save(model.state_dict()" in message
    assert "weights_only=False" not in message and "set to `False`" not in message and "corrupt" not in message
    assert not marker.exists() and path.read_bytes() == before


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_a_plain_pickle_or_garbage_is_not_called_safe_to_load(tmp_path) -> None:
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"x": _Config()}, protocol=4))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (raw, garbage):
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and "weights_only" not in message and "False" not in message


def test_the_checkpoint_pretrainer_reports_pickled_objects_for_the_model(tmp_path) -> None:
    from benchmark.plugin_api import RunContext
    from benchmark.features import FeatureCache

    path = tmp_path / "moco.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    pretrainer = PRETRAINERS.get("checkpoint")(arch="resnet18", path=str(path))
    ctx = RunContext(run_dir=tmp_path, data_root=tmp_path, cache=FeatureCache(tmp_path / "c"),
                     device=torch.device("cpu"))
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(torch\.nn\.modules\.linear\.Linear\)"):
        pretrainer.build(ctx, "m")


# --- 6. Ctrl-C -----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["status", "RUN"], ["report", "RUN"], ["list", "suites"],
                                     ["run", "--suite", "s"], ["pretrain", "rotation", "--data", "d", "--out", "o"]])
def test_ctrl_c_in_any_sub_command_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch, command) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    parser = cli.build_parser

    def patched():
        built = parser()
        for action in built._subparsers._group_actions:
            for sub in action.choices.values():
                sub.set_defaults(func=interrupted)
        return built
    monkeypatch.setattr(cli, "build_parser", patched)
    assert main(command) == 130
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssl-bench: interrupted (Ctrl-C); finished results are kept.")
    assert "Traceback" not in captured.err + captured.out
    if command[0] == "pretrain":  # a plugin's sub-command brings its own hint
        assert lines[0].endswith("Run the same command again to resume from the last checkpoint.")


def test_a_real_sigint_stops_the_process_cleanly(tmp_path) -> None:
    out = tmp_path / "synth"
    process = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "data", "synth", "voc07", "--out", str(out),
                                "--images", "20000", "--seed", "0"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               # a shell starts background jobs with SIGINT ignored, and Python keeps an
                               # ignored SIGINT ignored: give the child the default, as a terminal would
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not any(out.rglob("*.jpg")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["ssl-bench: interrupted (Ctrl-C); finished results are kept."]


def test_ctrl_c_during_a_run_leaves_finished_units_byte_identical(tmp_path, capsys, monkeypatch) -> None:
    from tasks.voc07_svm import VOC07SVM

    assert main(["data", "synth", "voc07", "--out", str(tmp_path / "data"), "--images", "40", "--seed", "1"]) == 0

    def edit(s):
        s["tasks"]["second"] = {"task": "voc07_svm", "layers": ["res4"], "image_size": 32, "costs": [1.0],
                                "n_jobs": 1}
    path = _config(tmp_path, edit)
    out = tmp_path / "runs"
    assert main(["run", "--suite", "s", "--config", str(path), "--out", str(out), "--device", "cpu",
                 "--tasks", "voc07_svm"]) == 0
    units = out / "s" / "units"
    finished = {p: p.read_bytes() for p in units.rglob("*") if p.is_file()}
    assert finished
    original = VOC07SVM.run

    def interrupted(self, ctx, model, unit):
        if unit == "res4":
            raise KeyboardInterrupt
        return original(self, ctx, model, unit)
    monkeypatch.setattr(VOC07SVM, "run", interrupted)
    capsys.readouterr()
    assert main(["run", "--suite", "s", "--config", str(path), "--out", str(out), "--device", "cpu"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssl-bench: interrupted (Ctrl-C)") and "ssl-bench resume" in err[0]
    assert {p: p.read_bytes() for p in finished} == finished
    assert not list(units.rglob("*.running"))  # the interrupted unit is not left marked as running


# --- a refusal before work writes nothing (issue 47) ---------------------------------------------


def _classification_data(base: Path) -> Path:
    """data/ds (CSV lists, 2 classes) and data/tree (ImageFolder, 2 classes), tiny images."""
    from benchmark.datasets.synth_classification import synth_classification

    data = base / "data"
    synth_classification(data, name="ds", num_classes=2, per_split={"train": 3, "test": 1}, layout="csv",
                         min_side=32, max_side=36)
    synth_classification(data, name="tree", num_classes=2, per_split={"train": 3, "test": 1}, min_side=32, max_side=36)
    return data


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _replace_line(path: Path, index: int, line: str) -> None:
    lines = _lines(path)
    lines[index] = line
    path.write_text("\n".join(lines) + "\n")


def _malformed_line(data):
    _replace_line(data / "ds" / "test.csv", 1, "just-a-path.jpg")
    return "ds", "test.csv:2: expected 'path,label'"


def _label_missing_from_train(data):
    path = _lines(data / "ds" / "test.csv")[1].split(",")[0]
    _replace_line(data / "ds" / "test.csv", 1, f"{path},cow")
    return "ds", "test.csv: label 'cow'"


def _empty_class_folder(data):
    (data / "tree" / "train" / "class_02").mkdir()
    return "tree", "class_02 holds no images"


def _missing_dataset(data):
    return "absent", "absent does not exist"


def _missing_image(data):
    _replace_line(data / "ds" / "train.csv", 1, "images/train/class_00/nope.jpg,class_00")
    return "ds", "nope.jpg"


def _empty_image(data):
    path = _lines(data / "ds" / "train.csv")[1].split(",")[0]
    (data / "ds" / path).write_bytes(b"")
    return "ds", "empty files (0 bytes)"


def _escaping_path(data):
    (data / "secret.jpg").write_bytes(b"x")
    _replace_line(data / "ds" / "train.csv", 1, "../secret.jpg,class_00")
    return "ds", "train.csv:2: path '../secret.jpg' leaves the dataset folder"


def _symlink_outside(data):
    (data / "secret.jpg").write_bytes(b"x")
    image = data / "ds" / _lines(data / "ds" / "train.csv")[1].split(",")[0]
    image.unlink()
    image.symlink_to(data / "secret.jpg")
    return "ds", "train.csv:2: path 'images/train/class_00"


def _binary_list(data):
    (data / "ds" / "test.csv").write_bytes(bytes(range(256)))
    return "ds", "test.csv is not UTF-8 text"


REFUSALS = [_malformed_line, _label_missing_from_train, _empty_class_folder, _missing_dataset, _missing_image,
            _empty_image, _escaping_path, _symlink_outside, _binary_list]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _run_refused(tmp_path: Path, dataset: str, capsys, *extra: str, task: dict | None = None) -> str:
    """``ssl-bench run`` of a knn task on ``dataset`` (or of ``task``): refused (exit 2), the output
    folder (holding one file of the user's) and the feature cache as they were. Returns the error."""
    config = tmp_path / "bench.yaml"
    task = task or {"task": "knn", "dataset": dataset, "layers": ["res5"], "image_size": 32}
    config.write_text(yaml.safe_dump({"suites": {"s": {
        "data_root": str(tmp_path / "data"), "num_workers": 0,
        "models": {"random": {"pretrainer": "random", "arch": "resnet18"}},
        "tasks": {"probe": task}}}}))
    out, cache = tmp_path / "out", tmp_path / "cache" / "features"
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("the user's")
    before = _files(tmp_path / "data")
    code = main(["run", "--suite", "s", "--config", str(config), "--out", str(out), "--cache", str(cache),
                 "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert _files(out) == {"keep.txt"}  # no run directory, no lock
    assert not (tmp_path / "cache").exists()  # no cache folder
    assert _files(tmp_path / "data") == before  # nor anything beside the data
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


@pytest.mark.parametrize("fault", REFUSALS, ids=lambda f: f.__name__.strip("_"))
def test_a_data_refusal_before_work_leaves_the_output_tree_untouched(tmp_path, capsys, fault) -> None:
    dataset, expected = fault(_classification_data(tmp_path))
    err = _run_refused(tmp_path, dataset, capsys)
    assert expected in err


def _voc_missing(voc):
    shutil.rmtree(voc / "JPEGImages")
    return "are missing"


def _voc_id_with_path(voc):
    split = voc / "ImageSets" / "Main" / "test.txt"
    split.write_text(split.read_text() + "../../../../etc/passwd\n")
    return "is not a file name"


def _voc_binary_split(voc):
    (voc / "ImageSets" / "Main" / "trainval.txt").write_bytes(bytes(range(256)))
    return "trainval.txt is not UTF-8 text"


def _voc_malformed_annotation(voc):
    first = (voc / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    (voc / "Annotations" / f"{first}.xml").write_text("<annotation><object>")
    return f"{first}.xml"


@pytest.mark.parametrize("fault", [_voc_missing, _voc_id_with_path, _voc_binary_split, _voc_malformed_annotation],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_voc_refusal_before_work_leaves_the_output_tree_untouched(tmp_path, capsys, fault) -> None:
    from benchmark.datasets.synth_voc import synth_voc07

    synth_voc07(tmp_path / "data", n_images=12, seed=0)
    expected = fault(tmp_path / "data" / "VOCdevkit" / "VOC2007")
    task = {"task": "voc07_svm", "layers": ["res5"], "image_size": 32, "costs": [1.0], "n_jobs": 1}
    assert expected in _run_refused(tmp_path, "", capsys, task=task)


def test_other_refusals_before_work_leave_the_output_tree_untouched(tmp_path, capsys, monkeypatch) -> None:
    _classification_data(tmp_path)
    # a device this machine lacks
    assert "cuda:7" in _run_refused(tmp_path, "ds", capsys, "--device", "cuda:7")
    # not enough space: refused after the lock was taken, which is given back and removed with its folders
    import benchmark.diskspace as diskspace

    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda path: type("U", (), {"free": 0})())
    err = _run_refused(tmp_path, "ds", capsys)
    assert "are free there" in err


@pytest.mark.parametrize("keyword, value, expected", [
    ("depth", "x", "'depth' is 'x' (str); timm VisionTransformer expects an integer (its default is 12)"),
    ("depth", "2.5", "'depth' is 2.5 (float); timm VisionTransformer expects an integer"),
    ("qkv_bias", "3", "'qkv_bias' is 3 (int); timm VisionTransformer expects true or false (its default is True), "
                      "e.g. qkv_bias=true"),
    ("drop_rate", "high", "'drop_rate' is 'high' (str); timm VisionTransformer expects a number"),
])
def test_a_timm_keyword_of_the_wrong_type_names_keyword_value_and_type(tmp_path, capsys, keyword, value,
                                                                       expected) -> None:
    arch = f"timm/vit_tiny_patch16_224[img_size=32,{keyword}={value}]"
    config = _config(tmp_path, lambda s: s["models"]["random"].update(arch=arch))
    out = tmp_path / "out"
    assert main(["run", "--suite", "s", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"architecture '{arch}': keyword {expected}" in err and "Traceback" not in err
    assert not out.exists()


def _hf_like_folder(folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("member", ["config.json", "model.safetensors"])
def test_a_checkpoint_folder_file_linking_outside_is_refused_naming_it(tmp_path, member) -> None:
    from benchmark.checkpoint import read_weights

    folder = _hf_like_folder(tmp_path / "ckpt")
    elsewhere = tmp_path / f"elsewhere-{member}"
    (folder / member).rename(elsewhere)
    (folder / member).symlink_to(elsewhere)
    with pytest.raises(CheckpointError) as caught:
        read_weights(folder)
    assert f"checkpoint folder {folder}: {member} is a symlink pointing outside the folder, to {elsewhere}" \
        in str(caught.value)


def test_a_hugging_face_cache_snapshot_may_link_to_its_blobs(tmp_path) -> None:
    from benchmark.checkpoint import read_weights

    repo = tmp_path / "hub" / "models--org--vit"
    snapshot = _hf_like_folder(repo / "snapshots" / "abc123")
    (repo / "blobs").mkdir()
    for member in ("config.json", "model.safetensors"):  # the layout huggingface_hub writes
        (snapshot / member).rename(repo / "blobs" / member)
        (snapshot / member).symlink_to(Path("../..") / "blobs" / member)
    content, config = read_weights(snapshot)
    assert config == {"model_type": "vit"} and list(content) == ["w"]


# --- VOC and Places205 lists stay inside their folders (issue 47) ---------------------------------


@pytest.fixture
def voc(tmp_path):
    from benchmark.datasets.synth_voc import synth_voc07

    synth_voc07(tmp_path / "data", n_images=12, seed=0)
    return tmp_path / "data" / "VOCdevkit" / "VOC2007"


@pytest.mark.parametrize("image_id", ["../../../secret", "/etc/passwd", ".."])
def test_a_voc_image_id_holding_a_path_is_refused_with_file_and_line(voc, image_id) -> None:
    from benchmark.datasets.voc import load_voc
    from benchmark.errors import DatasetError

    split = voc / "ImageSets" / "Main" / "test.txt"
    split.write_text(split.read_text() + f"{image_id}\n")
    line = len(split.read_text().splitlines())
    with pytest.raises(DatasetError, match=f"{split}:{line}: image id '{image_id}' is not a file name"):
        load_voc(voc.parent.parent, "test")


def test_a_voc_jpeg_linking_outside_or_a_binary_split_file_is_refused(voc, tmp_path) -> None:
    from benchmark.datasets.voc import load_voc
    from benchmark.errors import DatasetError

    first = (voc / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    image = voc / "JPEGImages" / f"{first}.jpg"
    (tmp_path / "secret.jpg").write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(DatasetError, match=f"path '{first}.jpg' is a symlink .*pointing outside"):
        load_voc(voc.parent.parent, "test")
    (voc / "ImageSets" / "Main" / "test.txt").write_bytes(b"\x00\xff\xfe" * 10)
    with pytest.raises(DatasetError, match="test.txt is not UTF-8 text"):
        load_voc(voc.parent.parent, "test")


@pytest.fixture
def places(tmp_path):
    from benchmark.datasets.synth_places import synth_places205

    return synth_places205(tmp_path / "data", num_classes=2, train_per_class=2, val_per_class=1, min_side=32,
                           max_side=36)


@pytest.mark.parametrize("listed", ["../../secret.jpg", "/etc/passwd", "a/../../secret.jpg"])
def test_a_places_list_path_leaving_the_images_folder_is_refused_with_file_and_line(places, listed) -> None:
    from benchmark.datasets.places import load_places205
    from benchmark.errors import DatasetError

    lists = places / "trainvalsplit_places205" / "val_places205.csv"
    lists.write_text(lists.read_text() + f"{listed} 0\n")
    line = len(lists.read_text().splitlines())
    with pytest.raises(DatasetError, match=f"{lists}:{line}: path '{listed}' leaves the images folder"):
        load_places205(places, "val")


def test_a_places_image_linking_outside_is_refused(places, tmp_path) -> None:
    from benchmark.datasets.places import load_places205
    from benchmark.errors import DatasetError

    image = places / "images" / "a" / "abbey" / "00000001.jpg"
    (tmp_path / "secret.jpg").write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(DatasetError, match="path 'a/abbey/00000001.jpg' is a symlink .*pointing outside"):
        load_places205(places, "train")


def test_a_decompression_bomb_image_is_refused_naming_it(tmp_path, monkeypatch) -> None:
    from PIL import Image

    from benchmark.datasets.images import open_rgb
    from benchmark.errors import DatasetError

    path = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 = 4096 pixels: over twice the limit
    with pytest.raises(DatasetError, match=f"image {path} is refused: .*decompression bomb"):
        open_rgb(path)


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"<html>not an image</html>"],
                         ids=["empty", "truncated", "html"])
def test_a_corrupt_image_is_refused_naming_it(tmp_path, content) -> None:
    from benchmark.datasets.images import open_rgb
    from benchmark.errors import DatasetError

    path = tmp_path / "image.jpg"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=f"image {path} is corrupt or not an image"):
        open_rgb(path)


def test_follow_symlinks_lets_a_run_read_linked_images_and_is_recorded_in_its_rows(tmp_path, capsys) -> None:
    from benchmark.results import ResultStore

    data = _classification_data(tmp_path)
    image = data / "ds" / _lines(data / "ds" / "train.csv")[1].split(",")[0]
    image.rename(tmp_path / "shared.jpg")  # a real image, kept elsewhere and linked into the dataset
    image.symlink_to(tmp_path / "shared.jpg")
    config = tmp_path / "bench.yaml"
    task = {"task": "knn", "dataset": "ds", "layers": ["res5"], "image_size": 32, "k_values": [1],
            "knn_device": "cpu"}

    def write(follow: bool) -> None:
        config.write_text(yaml.safe_dump({"suites": {"s": {
            "data_root": str(data), "num_workers": 0, "batch_size": 8,
            "models": {"random": {"pretrainer": "random", "arch": "resnet18"}},
            "tasks": {"knn": {**task, **({"follow_symlinks": True} if follow else {})}}}}}))

    write(False)
    command = ["run", "--suite", "s", "--config", str(config), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(command) == 2
    assert "set the dataset option follow_symlinks: true" in capsys.readouterr().err
    write(True)
    assert main(command) == 0, capsys.readouterr().err
    rows = ResultStore(tmp_path / "out" / "s").load()
    assert len(rows) and rows["follow_symlinks"].eq(True).all()


@pytest.mark.parametrize("key", ["labeled_file", "splits_file", "normals_file"])
def test_a_nyuv2_file_option_leaving_the_dataset_folder_is_refused_naming_it(tmp_path, key) -> None:
    from benchmark.datasets.nyuv2 import load_nyuv2
    from benchmark.errors import DatasetError

    (tmp_path / "NYUv2").mkdir()
    with pytest.raises(DatasetError, match=f"NYUv2 option {key}: path '../../secret.mat' leaves the dataset folder"):
        load_nyuv2(tmp_path / "NYUv2", "train", **{key: "../../secret.mat"})
