"""The detectron2 backend's pieces that need no detectron2 (fast): strict loading of the converted
weights, worker sizing, the evaluator-lines -> detections conversion, the option checks, and the
build recipe of tools/build_detectron2.py (its C++ stand-in, and refusing an unexpected sdist)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torchvision

from benchmark.datasets.voc import VOC_CLASSES
from benchmark.errors import CheckpointError, ConfigError
from benchmark.models.backbone import get_architecture
from tasks.detection.detectron2_backend import (
    check_arch,
    check_converted_weights,
    convert_to_detectron2,
    dataloader_workers,
    detections_from_voc_lines,
)
from tasks.detection.evaluate import box_iou
from tasks.detection.voc07 import DetectionVOC07

REPO = Path(__file__).resolve().parents[3]


def _build_tool():
    spec = importlib.util.spec_from_file_location("build_detectron2", REPO / "tools" / "build_detectron2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _r50_c4_shapes() -> dict[str, tuple]:
    """detectron2's R50-C4 state dict shapes: the converted trunk plus the heads it adds (RPN on
    1024-channel res4 with 15 anchors, box predictor on 2048-d res5 features for 20 classes)."""
    converted = convert_to_detectron2(torchvision.models.resnet50(weights=None).state_dict())
    shapes = {k: v.shape for k, v in converted.items()}
    heads = {"proposal_generator.rpn_head.conv.weight": (1024, 1024, 3, 3),
             "proposal_generator.rpn_head.conv.bias": (1024,),
             "proposal_generator.rpn_head.objectness_logits.weight": (15, 1024, 1, 1),
             "proposal_generator.rpn_head.objectness_logits.bias": (15,),
             "proposal_generator.rpn_head.anchor_deltas.weight": (60, 1024, 1, 1),
             "proposal_generator.rpn_head.anchor_deltas.bias": (60,),
             "roi_heads.box_predictor.cls_score.weight": (21, 2048), "roi_heads.box_predictor.cls_score.bias": (21,),
             "roi_heads.box_predictor.bbox_pred.weight": (80, 2048), "roi_heads.box_predictor.bbox_pred.bias": (80,)}
    return {**shapes, **heads}


def test_converted_weights_load_strictly() -> None:
    converted = convert_to_detectron2(torchvision.models.resnet50(weights=None).state_dict())
    shapes = _r50_c4_shapes()
    assert check_converted_weights(shapes, converted) == sorted(k for k in shapes if k not in converted)
    assert len(check_converted_weights(shapes, converted)) == 10
    # a trunk key the model lacks (e.g. a ResNet-101 trunk into an R50 model), a shape mismatch,
    # and a model key left random that is not a new head: each named
    extra = {**converted, "backbone.res4.6.conv1.weight": np.zeros((256, 1024, 1, 1))}
    with pytest.raises(CheckpointError, match=r"1 not in detectron2's model: backbone\.res4\.6\.conv1\.weight"):
        check_converted_weights(shapes, extra)
    wrong = {**converted, "backbone.stem.conv1.weight": np.zeros((64, 3, 3, 3))}
    with pytest.raises(CheckpointError, match=r"1 shape differs: backbone\.stem\.conv1\.weight: \(64, 3, 3, 3\) vs "
                                              r"model \(64, 3, 7, 7\)"):
        check_converted_weights(shapes, wrong)
    missing = {k: v for k, v in converted.items() if not k.startswith("roi_heads.res5.2.")}
    with pytest.raises(CheckpointError, match=r"15 model keys without a converted weight .*roi_heads\.res5\.2\.conv1"):
        check_converted_weights(shapes, missing)


def test_dataloader_workers_follow_the_usable_cores(monkeypatch) -> None:
    import benchmark.cpus

    monkeypatch.setattr(benchmark.cpus, "usable_cpus", lambda: (2, "affinity mask"))
    assert dataloader_workers(4) == 1  # two usable cores: one worker, one training process
    monkeypatch.setattr(benchmark.cpus, "usable_cpus", lambda: (16, "machine"))
    assert dataloader_workers(4) == 4 and dataloader_workers(0) == 0
    monkeypatch.setattr(benchmark.cpus, "usable_cpus", lambda: (1, "cgroup CPU quota"))
    assert dataloader_workers(8) == 0
    # the real mask of this process
    if hasattr(os, "sched_getaffinity"):
        assert dataloader_workers(64) <= len(os.sched_getaffinity(0)) - 1


def test_voc_lines_to_detections() -> None:
    # detectron2 writes xmin + 1, ymin + 1 (VOC's 1-based pixels) of its continuous 0-based boxes
    lines = {VOC_CLASSES.index("dog"): ["000002 0.900 11.0 21.0 40.0 50.0", "000001 0.125 1.0 1.0 9.5 9.0"],
             VOC_CLASSES.index("aeroplane"): ["000002 0.050 5.0 6.0 7.0 8.0"]}
    out = detections_from_voc_lines(lines, ["000001", "000002"])
    np.testing.assert_array_equal(out["labels"], [1, 12, 12])  # 1-based (dog: 12th class), classes in index order
    np.testing.assert_array_equal(out["images"], [1, 1, 0])
    np.testing.assert_array_equal(out["scores"], [0.05, 0.9, 0.125])
    np.testing.assert_array_equal(out["boxes"], [[4, 5, 7, 8], [10, 20, 40, 50], [0, 0, 9.5, 9]])
    # VOC's IoU of inclusive boxes (11..40 x 21..50 and 11..30 x 21..50: widths +1) on these boxes
    assert box_iou(out["boxes"][1], [10, 20, 30, 50])[0, 0] == pytest.approx((20 * 30) / (30 * 30))


def test_detectron2_option_checks(monkeypatch) -> None:
    assert check_arch("resnet101") == 101
    with pytest.raises(ConfigError, match="resnet18 is not. Use backend: torchvision"):
        check_arch("resnet18")
    monkeypatch.setitem(sys.modules, "detectron2", sys.modules[__name__])  # importable for require_detectron2
    task = DetectionVOC07(**{**DetectionVOC07.options, "backend": "detectron2", "proposals": "selective_search"})
    with pytest.raises(ConfigError, match="detectron2 trains its own RPN jointly"):
        task.check_options()
    with pytest.raises(ConfigError, match="resnet18 is not"):  # refused when the plan is made
        DetectionVOC07(**{**DetectionVOC07.options, "backend": "detectron2"}).units(get_architecture("resnet18"))


def test_build_recipe_stub_names_the_missing_cpp_op(tmp_path) -> None:
    tool = _build_tool()
    (tmp_path / "stub_c.py").write_text(tool.C_STUB)
    sys.path.insert(0, str(tmp_path))
    try:
        import stub_c
    finally:
        sys.path.remove(str(tmp_path))
    with pytest.raises(RuntimeError, match=r"detectron2\._C\.deform_conv_forward is a C\+\+ op.*built without"):
        stub_c.deform_conv_forward
    assert not hasattr(stub_c, "__wrapped__")  # introspection (pickle, inspect) sees a plain module
    assert tool.NUMPY_ALIAS.sub(lambda m: m.group(1), "np.int, np.float32, np.bool_, np.str) np.object]") == \
        "int, np.float32, np.bool_, str) object]"


def test_build_recipe_refuses_an_unexpected_sdist(tmp_path, capsys) -> None:
    tool = _build_tool()
    (tmp_path / "setup.py").write_text('setup(name="detectron2-other")\n')
    with pytest.raises(SystemExit, match=r"setup\.py: expected 1 occurrence\(s\) of 'name=\"pb1-detectron2\",', "
                                         r"found 0: not the sdist this recipe is for"):
        tool.apply_patches(tmp_path)


def test_leaderboard_keeps_the_backends_apart() -> None:
    import pandas as pd

    from benchmark.report import leaderboard

    rows = pd.DataFrame([
        {"model": "m", "task": "detection_voc07", "layer": "frozen", "metric": "mAP", "class": "", "value": 40.0,
         "backend": "torchvision"},
        {"model": "m", "task": "detection_voc07", "layer": "frozen", "metric": "mAP", "class": "", "value": 50.0,
         "backend": "detectron2"},
        {"model": "m", "task": "detection_voc07", "layer": "frozen", "metric": "mAP", "class": "", "value": 30.0,
         "evaluation": "perturbed_ground_truth"},
        {"model": "m", "task": "voc07_svm", "layer": "res5", "metric": "mAP", "class": "", "value": 60.0}])
    board = leaderboard(rows)
    assert board.loc["m"].to_dict() == {"detection_voc07/frozen:mAP [torchvision]": 40.0,
                                        "detection_voc07/frozen:mAP [detectron2]": 50.0,
                                        "detection_voc07/frozen:mAP (perturbed_ground_truth)": 30.0,
                                        "voc07_svm/res5:mAP": 60.0}


def test_layer_plot_keeps_the_backends_apart(tmp_path, monkeypatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.axes
    import pandas as pd

    from benchmark.report import plot_layers

    titles, lines = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, title, *a, **k: titles.append(title))
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, *a, **k: (lines.append(list(y)), original(self, x, y, *a, **k))[1])
    rows = pd.DataFrame([
        {"model": "m", "task": "detection_voc07", "layer": "frozen", "metric": "mAP", "class": "", "value": 40.0,
         "backend": "torchvision"},
        {"model": "m", "task": "detection_voc07", "layer": "frozen", "metric": "mAP", "class": "", "value": 50.0,
         "backend": "detectron2"}])
    assert plot_layers(rows, tmp_path / "board.png").stat().st_size > 1000
    assert titles == ["detection_voc07 [torchvision]", "detection_voc07 [detectron2]"]
    assert lines == [[40.0], [50.0]]  # never their mean, 45
