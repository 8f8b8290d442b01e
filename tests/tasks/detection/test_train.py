"""Fast R-CNN C4 training: the frozen mode leaves conv1..res4 bit-identical, fine-tuning changes
them but never the BatchNorm statistics, a short run learns (mAP above the untrained head), a
run killed between checkpoints resumes to the same weights and numbers; schedules, option errors,
the detectron2 key renaming and the VOC2012 reader."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from benchmark.datasets.synth_voc import synth_voc07
from benchmark.datasets.voc import VOC_CLASSES, load_voc
from tasks.detection.data import DetectionData
from tasks.detection.detectron2_backend import convert_key, convert_to_detectron2, require_detectron2
from tasks.detection.evaluate import evaluate_detections
from tasks.detection.model import FastRCNNC4
from tasks.detection.train import DetectionSetup, detect, resolve_schedule, train_detector
from benchmark.errors import ConfigError, DatasetError
from benchmark.models import create_model
from tasks.detection.voc07 import DetectionVOC07

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Single intra-op thread: faster on the shared cores, identical numbers for compared runs."""


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    synth_voc07(root, n_images=48, seed=0, min_side=64, max_side=80)
    return root


@pytest.fixture(scope="module")
def data(voc):
    return (DetectionData.from_voc([load_voc(voc, "trainval")]), DetectionData.from_voc([load_voc(voc, "test")]))


def grid_proposals(data: DetectionData, stride: int = 8) -> list[np.ndarray]:
    """Sliding windows (squares and 2:1 boxes): simple, model-independent proposals."""
    out = []
    for width, height in data.sizes:
        boxes = []
        for side in (18, 26, 36, 48, 60):
            for w, h in ((side, side), (side, side // 2), (side // 2, side)):
                for x in range(0, max(width - w, 0) + 1, stride):
                    for y in range(0, max(height - h, 0) + 1, stride):
                        boxes.append([x, y, x + w, y + h])
        out.append(np.array(boxes, dtype=np.float32))
    return out


def setup_for(iterations: int, *, checkpoint_every: int = 100, lr: float = 0.08) -> DetectionSetup:
    schedule = resolve_schedule("custom", "voc07", iterations=iterations, milestones=[], batch_size=2, base_lr=lr,
                                warmup_iterations=0)
    return DetectionSetup(schedule=schedule, seed=1, scale=64, max_size=96, rois_per_image=16,
                          checkpoint_every=checkpoint_every, fingerprint=f"test-{iterations}")


def detector(freeze_at: int = 4, seed: int = 0) -> tuple[FastRCNNC4, nn.Module]:
    network = create_model("resnet18", seed=seed)
    return FastRCNNC4(network, "resnet18", roi_size=4, freeze_at=freeze_at,
                      generator=torch.Generator().manual_seed(0)), network


def bn_buffers_match(module: nn.Module, source: nn.Module) -> bool:
    """Every FrozenBatchNorm2d of ``module`` holds exactly the statistics of ``source``'s BN."""
    frozen = {k: v for k, v in module.state_dict().items() if k.rsplit(".", 1)[-1] in ("running_mean", "running_var")}
    assert frozen
    original = source.state_dict()
    return all(torch.equal(v, original[k]) for k, v in frozen.items())


def test_frozen_training_leaves_conv1_to_res4_bit_identical_and_learns(data, tmp_path) -> None:
    train, test = data
    model, network = detector(freeze_at=4, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = {k: v.clone() for k, v in network.state_dict().items()}
    # 240 iterations: at 120 the held-out AP (0.0080 with the packages of 2026-12-01) sat on the
    # bound below; at 240 it is 0.0251, the training images' 0.206
    setup = setup_for(240)
    props_train, props_test = grid_proposals(train), grid_proposals(test)
    untrained = evaluate_detections(detect(model, train, props_train, setup, CPU), train.ground_truth, 20)
    untrained_test = evaluate_detections(detect(model, test, props_test, setup, CPU), test.ground_truth, 20)
    train_detector(model, train, props_train, setup, tmp_path, CPU)
    after = model.state_dict()
    for key, value in after.items():
        if key.split(".")[0] in ("stem", "res2", "res3", "res4"):
            assert torch.equal(value, before[key]), key
    assert not torch.equal(after["res5.0.conv1.weight"], before["res5.0.conv1.weight"])
    assert not torch.equal(after["cls_score.weight"], before["cls_score.weight"])
    assert bn_buffers_match(model.res5, network.layer4)
    # the benchmark's own network was copied, never trained
    assert all(torch.equal(v, source[k]) for k, v in network.state_dict().items())
    trained = evaluate_detections(detect(model, train, props_train, setup, CPU), train.ground_truth, 20)
    trained_test = evaluate_detections(detect(model, test, props_test, setup, CPU), test.ground_truth, 20)
    print("untrained", np.nanmean(untrained["ap11"]), "trained", np.nanmean(trained["ap11"]),
          "untrained test", np.nanmean(untrained_test["ap11"]), "test", np.nanmean(trained_test["ap11"]))
    assert np.nanmean(trained["ap11"]) > np.nanmean(untrained["ap11"]) + 0.15
    # held-out images: a random trunk and 24 training images generalise little, but above the
    # untrained detector's own held-out AP (the floor). How far above depends on the processor's
    # rounding through training: 0.0251 on the machine of 2026-11-30, 0.0026 on an AMD EPYC
    # (2026-12-01; untrained 0.0003 on both), so the margin is only that it is above
    assert np.nanmean(trained_test["ap11"]) > np.nanmean(untrained_test["ap11"])


def test_finetune_changes_the_trunk_but_not_batchnorm(data, tmp_path) -> None:
    train, _ = data
    model, network = detector(freeze_at=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_detector(model, train, grid_proposals(train), setup_for(3), tmp_path, CPU)
    after = model.state_dict()
    for key in ("stem.0.weight", "res2.0.conv1.weight", "res3.0.conv1.weight", "res4.0.conv1.weight"):
        assert not torch.equal(after[key], before[key]), key
    # FrozenBatchNorm: statistics and affine parameters exactly the source network's
    assert bn_buffers_match(model, _renamed(network))
    for key, value in after.items():
        if key.endswith((".weight", ".bias")) and ("bn" in key or "downsample.1" in key or key.startswith("stem.1")):
            assert torch.equal(value, before[key]), key


def _renamed(network: nn.Module) -> nn.Module:
    """The torchvision network with the detector's stage names, to compare BN buffers by key."""
    holder = nn.Module()
    holder.stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
    holder.res2, holder.res3, holder.res4, holder.res5 = network.layer1, network.layer2, network.layer3, network.layer4
    return holder


@pytest.mark.parametrize("freeze_at", [4, 0])
def test_resume_after_crash_equals_uninterrupted(data, tmp_path, freeze_at) -> None:
    train, test = data
    props, props_test = grid_proposals(train), grid_proposals(test, stride=16)
    setup = setup_for(7, checkpoint_every=3)
    full, _ = detector(freeze_at)
    train_detector(full, train, props, setup, tmp_path / "full", CPU)

    crashed, _ = detector(freeze_at)

    def crash(done: int) -> None:
        if done == 5:  # after the checkpoint at 3, before the next one
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_detector(crashed, train, props, setup, tmp_path / "resumed", CPU, on_iteration=crash)
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3 and not state["done"]
    resumed, _ = detector(freeze_at)  # a fresh process: new detector, nothing in memory
    train_detector(resumed, train, props, setup, tmp_path / "resumed", CPU)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    a = detect(full, test, props_test, setup, CPU)
    b = detect(resumed, test, props_test, setup, CPU)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    logs = [(tmp_path / d / "log.csv").read_text() for d in ("full", "resumed")]
    assert logs[0] == logs[1] and len(logs[0].splitlines()) == 8


def test_schedules_scale_with_the_batch() -> None:
    ref = resolve_schedule("reference", "voc07")
    assert (ref.iterations, ref.milestones, ref.lr, ref.warmup_iterations) == (30_000, (22_000,), 0.002, 500)
    big = resolve_schedule("reference", "voc07+12", batch_size=16)
    assert (big.iterations, big.milestones, big.warmup_iterations) == (20_000, (16_500,), 125)
    assert big.lr == pytest.approx(0.008)
    assert ref.lr_at(0) == pytest.approx(0.002 / 3)
    assert ref.lr_at(250) == pytest.approx(0.002 * (1 / 3 * 0.5 + 0.5))
    assert ref.lr_at(500) == pytest.approx(0.002) and ref.lr_at(22_000) == pytest.approx(0.0002)
    with pytest.raises(ConfigError, match="only apply to schedule: custom"):
        resolve_schedule("reference", "voc07", iterations=10)
    with pytest.raises(ConfigError, match="milestones"):
        resolve_schedule("custom", "voc07", iterations=10, milestones=[12])
    with pytest.raises(ConfigError, match="unknown schedule"):
        resolve_schedule("fast", "voc07")


def test_task_option_errors(voc, tmp_path) -> None:
    from benchmark.plugin_api import RunContext
    from benchmark.features import FeatureCache
    from benchmark.models.backbone import get_architecture

    def task(**options):
        return DetectionVOC07(**{**DetectionVOC07.options, **options})

    ctx = RunContext(run_dir=tmp_path, data_root=voc, cache=FeatureCache(tmp_path / "c"), device=CPU)
    with pytest.raises(ConfigError, match=r"detection_voc07'\.proposals: 'edgeboxes' is not allowed; expected one of "
                                          r"'auto', 'selective_search', 'rpn', 'files'"):
        task(proposals="edgeboxes").check_data(ctx)
    with pytest.raises(ConfigError, match="proposal_files.voc07_trainval"):
        task(proposals="files").check_data(ctx)
    with pytest.raises(ConfigError, match=r"detection_voc07'\.modes\[1\]: 'linear' is not allowed; "
                                          r"expected one of 'frozen', 'finetune'"):
        task(modes=["frozen", "linear"]).check_data(ctx)
    with pytest.raises(ConfigError, match="C4 structure"):
        task().units(get_architecture("alexnet"))
    assert task(modes=["finetune"]).units(get_architecture("resnet18")) == ["finetune"]
    with pytest.raises(DatasetError, match="VOC2012"):  # voc07+12 needs VOC2012 next to VOC2007
        task(train_set="voc07+12").check_data(ctx)


def test_detectron2_backend_without_detectron2_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "detectron2", None)  # not importable, also where it is installed
    with pytest.raises(ConfigError, match=r"make detectron2.*pip install --no-build-isolation "
                                          r"'git\+https://github.com/facebookresearch/detectron2"):
        require_detectron2()
    with pytest.raises(ConfigError, match="detectron2 is not importable"):
        DetectionVOC07(**{**DetectionVOC07.options, "backend": "detectron2"}).check_options()


def _expected_detectron2_names(blocks=(3, 4, 6, 3)) -> set[str]:
    """detectron2's R50-C4 parameter names, written out from its ResNet / Res5ROIHeads layout."""
    names = {"backbone.stem.conv1.weight"} | {f"backbone.stem.conv1.norm.{p}" for p in
                                              ("weight", "bias", "running_mean", "running_var")}
    for stage, count in enumerate(blocks, start=2):
        prefix = "roi_heads.res5" if stage == 5 else f"backbone.res{stage}"
        for block in range(count):
            convs = ["conv1", "conv2", "conv3"] + (["shortcut"] if block == 0 else [])
            for conv in convs:
                names.add(f"{prefix}.{block}.{conv}.weight")
                names |= {f"{prefix}.{block}.{conv}.norm.{p}"
                          for p in ("weight", "bias", "running_mean", "running_var")}
    return names


def test_torchvision_to_detectron2_key_renaming() -> None:
    state = torchvision.models.resnet50(weights=None).state_dict()
    converted = convert_to_detectron2(state)
    assert set(converted) == _expected_detectron2_names()
    assert convert_key("layer1.0.downsample.1.running_var") == "backbone.res2.0.shortcut.norm.running_var"
    assert convert_key("layer3.5.bn3.weight") == "backbone.res4.5.conv3.norm.weight"
    assert convert_key("layer4.2.conv2.weight") == "roi_heads.res5.2.conv2.weight"
    assert convert_key("bn1.bias") == "backbone.stem.conv1.norm.bias"
    assert convert_key("fc.weight") is None and convert_key("layer2.0.bn1.num_batches_tracked") is None
    np.testing.assert_array_equal(converted["backbone.res3.1.conv2.weight"], state["layer2.1.conv2.weight"].numpy())
    # every kept tensor lands on its own name
    kept = [k for k in state if convert_key(k) is not None]
    assert len(kept) == len(converted)
    with pytest.raises(ConfigError, match="not a ResNet key"):
        convert_key("features.0.weight")


def _write_voc2012(root: Path) -> None:
    """Two VOC2012-style images: underscore ids, float coordinates, person parts, no difficult tag."""
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    ids = ["2008_000001", "2008_000002"]
    for image_id in ids:
        Image.new("RGB", (50, 40), (90, 90, 90)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    (voc / "Annotations" / "2008_000001.xml").write_text(
        "<annotation><folder>VOC2012</folder><filename>2008_000001.jpg</filename>"
        "<object><name>person</name><pose>Left</pose><truncated>0</truncated><occluded>1</occluded>"
        "<bndbox><xmin>10.5</xmin><ymin>4</ymin><xmax>30</xmax><ymax>39</ymax></bndbox><difficult>0</difficult>"
        "<part><name>head</name><bndbox><xmin>12</xmin><ymin>5</ymin><xmax>20</xmax><ymax>12</ymax></bndbox></part>"
        "</object></annotation>")
    (voc / "Annotations" / "2008_000002.xml").write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>40</xmax>"
        "<ymax>30</ymax></bndbox></object><object><name>cat</name><difficult>1</difficult><bndbox><xmin>5</xmin>"
        "<ymin>5</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")


def test_voc2012_layout_is_read_by_the_same_reader(tmp_path) -> None:
    _write_voc2012(tmp_path)
    split = load_voc(tmp_path, "trainval", year="2012")
    assert split.image_ids == ["2008_000001", "2008_000002"]
    person, dog, cat = (VOC_CLASSES.index(c) for c in ("person", "dog", "cat"))
    assert split.labels[0, person] == 1 and split.labels[1, dog] == 1 and split.labels[1, cat] == -1
    assert [o.box for o in split.objects[0]] == [(10, 4, 30, 39)]  # the part's box is not an object
    data = DetectionData.from_voc([split])
    np.testing.assert_array_equal(data.ground_truth[1].boxes, [[0, 1, 40, 30], [4, 4, 9, 9]])
    assert data.sizes == [(50, 40), (50, 40)]


def test_task_end_to_end_with_rpn_proposals_and_a_proposal_file(voc, tmp_path) -> None:
    """The task on generated data: RPN proposals (cached, then reused by a second task reading them
    as a Detectron file), rows per class and metric, a rerun answers from the finished checkpoint."""
    from benchmark.plugin_api import RunContext
    from benchmark.features import FeatureCache
    from pretrainers.common import freeze

    options = dict(modes=["frozen"], proposals="rpn", rpn_iterations=10, rpn_anchor_sizes=[16, 32, 64],
                   rpn_post_nms=100, proposal_limit_train=100, proposal_limit_test=30, scale=64, max_size=96,
                   size_multiple=16, roi_size=4, rois_per_image=16, schedule="custom", iterations=12, milestones=[8],
                   batch_size=2, base_lr=0.08, checkpoint_every=5, evaluate_untrained=True)
    task = DetectionVOC07(**{**DetectionVOC07.options, **options})
    ctx = RunContext(run_dir=tmp_path / "run", data_root=voc, cache=FeatureCache(tmp_path / "cache"), device=CPU)
    model = freeze("random", "resnet18", create_model("resnet18", seed=0), {})
    task.check_data(ctx)
    rows = task.run(ctx, model, "frozen")
    checks = [r for r in rows if r.get("evaluation") == "perturbed_ground_truth"]
    assert [r["metric"] for r in checks] == ["mAP", "mAP_all", "mAP50_95"]
    assert all(r["determinism"] == "exact" and 0 < r["value"] < 100 for r in checks)
    rows = [r for r in rows if r.get("evaluation") != "perturbed_ground_truth"]
    by_metric = {}
    for row in rows:
        by_metric.setdefault(row["metric"], []).append(row)
    assert {m: len(r) for m, r in by_metric.items()} == {"AP": 20, "AP_all": 20, "AP50_95": 20, "mAP": 1,
                                                        "mAP_all": 1, "mAP50_95": 1, "mAP_untrained_head": 1}
    per_class = [r["value"] for r in by_metric["AP"] if not np.isnan(r["value"])]
    assert by_metric["mAP"][0]["value"] == pytest.approx(np.mean(per_class))
    assert all(r["proposals"] == "rpn" and r["layer"] == "frozen" and r["train_set"] == "voc07" for r in rows)
    assert 0 < rows[0]["proposals_per_image_test"] <= 30
    files = sorted((tmp_path / "cache" / "proposals").glob("rpn-*.pkl"))
    assert len(files) == 2
    # a rerun reads the proposals and the finished checkpoint: same rows, no training
    rerun = DetectionVOC07(**{**DetectionVOC07.options, **options, "evaluate_untrained": False})
    again = rerun.run(ctx, model, "frozen")
    assert [r["value"] for r in again] == [r["value"] for r in rows + checks if r["metric"] != "mAP_untrained_head"]
    # the generated proposals as Detectron files: the same numbers through proposals: files
    from tasks.detection.proposals import read_proposals

    train_ids = set(load_voc(voc, "trainval").image_ids)
    train_file = next(f for f in files if set(read_proposals(f)) == train_ids)
    test_file = next(f for f in files if f != train_file)
    by_file = DetectionVOC07(**{**DetectionVOC07.options, **options, "evaluate_untrained": False, "proposals": "files",
                                "proposal_files": {"voc07_trainval": str(train_file), "voc07_test": str(test_file)}})
    by_file.check_data(ctx)
    file_rows = by_file.run(ctx, model, "frozen")
    assert [r["value"] for r in file_rows] == [r["value"] for r in again]
