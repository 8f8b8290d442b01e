"""The transfer protocol in the classification tasks (issue 42): the per-dataset metric (mean
per-class accuracy beside top-1) in knn, logreg and linear_probe, and Kornblith et al.'s linear
protocol as logreg options (``costs: kornblith``, ``select_by: protocol_metric``, ``refit: true``),
end to end on a generated FGVC Aircraft (official val split, a mean-per-class dataset) and recomputed
with scikit-learn from the cached features."""

import json
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from benchmark.cli import main
from benchmark.datasets.classification import load_classification
from benchmark.datasets.synth_transfer import synth_transfer
from benchmark.results import ResultStore
from benchmark.row_schema import OUTCOMES, OUTCOMES_ENTRY, OUTCOMES_FILE
from tasks.classification.common import headline_metric, mean_per_class_row, transfer_column
from tasks.classification.logreg import BINARY_C_FACTOR, KORNBLITH_COSTS, KORNBLITH_WEIGHT_DECAYS

SUITE = """
suites:
  tiny:
    data_root: {data}
    num_workers: 0
    batch_size: 32
    models:
      random:
        pretrainer: random
        arch: resnet18
    tasks:
      knn:
        dataset: fgvc_aircraft
        layout: fgvc_aircraft
        layers: [pool5]
        image_size: 32
        k_values: [1, 3]
      logreg:
        dataset: fgvc_aircraft
        layout: fgvc_aircraft
        layers: [pool5]
        image_size: 32
        costs: kornblith
        select_by: protocol_metric
        refit: true
        l2_normalise: false
        few_shot: []
        max_iter: 3000
      linear_probe:
        dataset: fgvc_aircraft
        layout: fgvc_aircraft
        layers: [pool5]
        image_size: 32
        learning_rates: [0.1]
        poolings: [flat]
        epochs: 2
        batch_size: 4
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer_protocol")
    synth_transfer(root / "data", "fgvc_aircraft")
    config = root / "bench.yaml"
    config.write_text(textwrap.dedent(SUITE).format(data=root / "data"))
    out = root / "runs"
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    feats = {}
    for meta in (out / "feature-cache").rglob("*.json"):
        m = json.loads(meta.read_text())
        feats[m["split"], m["layer"]] = np.load(meta.with_suffix(".npy")).astype(np.float64)
    data = load_classification(root / "data", "fgvc_aircraft", layout="fgvc_aircraft")
    return SimpleNamespace(df=ResultStore(out / "tiny").load(), feats=feats, data=data, run_dir=out / "tiny")


def part(run, which):
    p = getattr(run.data, which)
    return run.feats[p.split.name, "pool5"][p.indices], p.labels


def test_mean_per_class_row_equals_balanced_accuracy():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], [1, 5, 9, 2])  # unbalanced: mean per class differs from top-1
    predicted = np.where(rng.random(len(labels)) < 0.6, labels, rng.integers(0, 4, len(labels)))
    correct = (predicted == labels).astype(float)
    row = mean_per_class_row({"metric_step": 1.0, "layer": "x"}, correct, labels, "t")
    assert row["value"] == pytest.approx(100 * balanced_accuracy_score(labels, predicted))
    assert row["value"] != pytest.approx(100 * correct.mean())
    assert row["metric"] == "mean_per_class" and "metric_step" not in row and row["transfer_column"] == "t"
    assert row[OUTCOMES].statistic == "mean_per_class" and np.array_equal(row[OUTCOMES].classes, labels)


def test_transfer_column_on_the_protocol_metric_row_and_top1_elsewhere():
    plain = SimpleNamespace(protocol={})  # an ImageFolder/CSV dataset: as before
    pets = SimpleNamespace(protocol={"protocol_metric": "mean_per_class_accuracy"})
    food = SimpleNamespace(protocol={"protocol_metric": "top1"})
    assert headline_metric(plain) == headline_metric(food) == "top1" and headline_metric(pets) == "mean_per_class"
    assert transfer_column(plain, "knn pool5 20-NN", "top1") == "knn pool5 20-NN top1"
    assert transfer_column(plain, "knn pool5 20-NN", "top5") == ""
    assert transfer_column(food, "knn pool5 20-NN", "top1") == "knn pool5 20-NN protocol metric"
    assert transfer_column(pets, "knn pool5 20-NN", "top1") == ""
    assert transfer_column(pets, "knn pool5 20-NN", "mean_per_class") == "knn pool5 20-NN protocol metric"


def test_kornblith_costs_are_inverse_weight_decays():
    # Ericsson et al.'s linear.py: wd_range = torch.logspace(-6, 5, 45); C = 1 / wd
    assert len(KORNBLITH_COSTS) == 45
    assert KORNBLITH_WEIGHT_DECAYS[0] == pytest.approx(1e-6) and KORNBLITH_WEIGHT_DECAYS[-1] == pytest.approx(1e5)
    assert min(KORNBLITH_COSTS) == pytest.approx(1e-5) and max(KORNBLITH_COSTS) == pytest.approx(1e6)
    assert np.allclose(np.diff(np.log10(KORNBLITH_WEIGHT_DECAYS)), 11 / 44)


def test_knn_reports_mean_per_class_with_outcomes(run):
    df = run.df[run.df.task == "knn"]
    _, y_test = part(run, "test")
    for k in (1, 3):
        rows = df[(df.evaluation == f"{k}-NN")].set_index("metric")
        top1 = rows.loc["top1"]
        saved = ResultStore(run.run_dir).read_outcomes(top1["outcomes_file"], top1["outcomes_entry"])
        mpc = rows.loc["mean_per_class"]
        predicted = np.where(saved.values > 0, y_test, -1)  # a wrong answer is any other class for the metric
        assert float(mpc["value"]) == pytest.approx(100 * balanced_accuracy_score(y_test, predicted))
        mine = ResultStore(run.run_dir).read_outcomes(mpc["outcomes_file"], mpc["outcomes_entry"])
        assert mine.statistic == "mean_per_class" and np.array_equal(mine.classes, y_test)
        # the across-datasets column is on the protocol metric's row
        assert mpc["transfer_column"] == f"knn pool5 {k}-NN protocol metric"
        assert str(top1["transfer_column"]) in ("", "nan")


def test_logreg_kornblith_choice_on_val_and_refit_equal_sklearn(run):
    df = run.df[run.df.task == "logreg"]
    (Xtr, ytr), (Xva, yva), (Xte, yte) = (part(run, w) for w in ("train", "val", "test"))
    val = {}
    for C in sorted(KORNBLITH_COSTS):  # raw features (l2_normalise: false), as Ericsson et al.
        model = LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(Xtr, ytr)
        val[C] = 100 * balanced_accuracy_score(yva, model.predict(Xva))
    chosen = max(val, key=lambda C: (val[C], -C))  # best on val by mean per class, smaller C on ties
    refit = LogisticRegression(C=chosen, tol=1e-10, max_iter=20000).fit(np.vstack([Xtr, Xva]), np.r_[ytr, yva])
    predicted = refit.predict(Xte)
    rows = df[df.evaluation.isna()].set_index("metric")
    assert float(rows.loc["top1", "cost"]) == pytest.approx(chosen)
    assert float(rows.loc["mean_per_class", "value"]) == pytest.approx(100 * balanced_accuracy_score(yte, predicted))
    assert float(rows.loc["top1", "value"]) == pytest.approx(100 * np.mean(predicted == yte))
    for metric in ("top1", "mean_per_class"):
        row = rows.loc[metric]
        assert row["refit"] == "train+val" and int(row["n_refit"]) == len(ytr) + len(yva)
        assert row["cost_preset"] == "kornblith" and row["cost_selection"] == "C by mean_per_class on val"
        assert "test evaluated once, after the refit" in row["selection"]
    assert rows.loc["mean_per_class", "transfer_column"] == "logreg pool5 protocol metric"
    per_cost = df[df.metric == "val_mean_per_class"]
    assert len(per_cost) == 45
    for C in (min(val), chosen, max(val)):
        assert float(per_cost[np.isclose(per_cost.cost.astype(float), C)]["value"].iloc[0]) == pytest.approx(val[C])


def test_linear_probe_reports_mean_per_class(run):
    df = run.df[(run.df.task == "linear_probe") & (run.df.layer == "all")].set_index("metric")
    assert df.loc["mean_per_class", "transfer_column"] == "linear_probe best head protocol metric"
    mine = ResultStore(run.run_dir).read_outcomes(df.loc["mean_per_class", "outcomes_file"],
                                                   df.loc["mean_per_class", "outcomes_entry"])
    _, y_test = part(run, "test")
    assert float(df.loc["mean_per_class", "value"]) == pytest.approx(mine.value())
    assert np.array_equal(mine.classes, y_test)


VOC_SUITE = """
suites:
  voc:
    data_root: {data}
    num_workers: 0
    batch_size: 32
    models:
      random:
        pretrainer: random
        arch: resnet18
    tasks:
      logreg:
        dataset: voc2007
        layout: voc2007
        layers: [pool5]
        image_size: 32
        costs: [0.1, 10.0, 1000.0]  # apart enough for the near-separable fits to rank alike (see the test)
        refit: true
        few_shot: [2]
        tol: 1.0e-9  # the oracle's precision: at C = 1000 a looser fit swaps two test images' ranks
        max_iter: 5000
"""


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    from benchmark.datasets.synth_voc import synth_voc07

    root = tmp_path_factory.mktemp("transfer_voc")
    synth_voc07(root / "data" / "voc2007", n_images=160, seed=3, min_side=40, max_side=56)  # every class in each split
    config = root / "bench.yaml"
    config.write_text(textwrap.dedent(VOC_SUITE).format(data=root / "data"))
    out = root / "runs"
    assert main(["run", "--suite", "voc", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    feats = {}
    for meta in (out / "feature-cache").rglob("*.json"):
        m = json.loads(meta.read_text())
        feats[m["split"], m["layer"]] = np.load(meta.with_suffix(".npy")).astype(np.float64)
    data = load_classification(root / "data", "voc2007", layout="voc2007", multi_label=True)
    store = ResultStore(out / "voc")
    return SimpleNamespace(df=store.load(), store=store, feats=feats, data=data)


def test_logreg_voc2007_one_vs_rest_choice_on_val_and_refit_equal_sklearn(voc_run):
    from benchmark.metrics import eleven_point_map

    run = voc_run
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    (Xtr, Ltr), (Xva, Lva), (Xte, Lte) = ((norm(f), y) for f, y in (part(run, w) for w in ("train", "val", "test")))
    assert Ltr.shape[1] == 20 and (Lte == -1).any()  # difficult-only entries are in the test ranking's labels

    def scores(X, L, C, Xq):  # per class: the 2-class multinomial problem at C = scikit-learn's binary one at 2 C
        return np.stack([LogisticRegression(C=BINARY_C_FACTOR * C, tol=1e-10, max_iter=20000).fit(X, L[:, k] == 1)
                         .decision_function(Xq) for k in range(L.shape[1])], axis=1)

    # three costs, not the 45 of costs: kornblith: at C >= 1e5 random features are nearly separable
    # and two solvers' huge-norm solutions, each within its tolerance, rank a few images differently
    val = {C: 100 * eleven_point_map(Lva, scores(Xtr, Ltr, C, Xva)) for C in (0.1, 10.0, 1000.0)}
    chosen = max(val, key=lambda C: (round(val[C], 6), -C))  # one C for all classes, smaller C on ties
    test = scores(np.vstack([Xtr, Xva]), np.vstack([Ltr, Lva]), chosen, Xte)
    df = run.df[run.df.task == "logreg"]
    row = df[df.metric == "voc07_11point_map"].iloc[0]
    assert float(row["cost"]) == pytest.approx(chosen)
    assert float(row["value"]) == pytest.approx(100 * eleven_point_map(Lte, test), abs=1e-6)
    assert row["refit"] == "train+val" and row["transfer_column"] == "logreg pool5 protocol metric"
    # the per-image outcomes behind the significance marks give the same mAP (percentile-ranked scores)
    outcomes = run.store.read_outcomes(row[OUTCOMES_FILE], row[OUTCOMES_ENTRY])
    assert outcomes.statistic == "voc07_11point_map" and outcomes.values.shape == Lte.shape
    assert outcomes.value() == pytest.approx(float(row["value"]), abs=1e-9)
    assert np.array_equal(outcomes.classes, Lte)
    per_cost = df[df.metric == "val_voc07_11point_map"]
    for C in val:
        assert float(per_cost[np.isclose(per_cost.cost.astype(float), C)]["value"].iloc[0]) == pytest.approx(val[C])
    aps = df[df.metric == "ap11"]
    assert len(aps) == 20 and float(aps["value"].astype(float).mean()) == pytest.approx(float(row["value"]))
    assert (df[df.metric == "skipped"]["k"].astype(float) == 2).all()  # few-shot is not defined on multi-label
