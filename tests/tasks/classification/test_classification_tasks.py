"""knn, logreg and linear_probe end to end on a generated dataset (random ResNet-18 at 32 px), each
number recomputed independently from the cached features: numpy brute-force kNN, scikit-learn
logistic regression, the probe's saved heads scored in numpy."""

import json
import textwrap
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from benchmark.cli import main
from benchmark.datasets.classification import load_classification
from benchmark.datasets.synth_classification import synth_classification
from benchmark.results import ResultStore
from tasks.classification.common import few_shot_draw

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
        layers: [res5, pool5]
        image_size: 32
        k_values: [1, 5, 200]
        few_shot: [2]
        draws: 2
        train_chunk: 7
        query_chunk: 5
      logreg:
        layers: [pool5]
        image_size: 32
        costs: [0.1, 10.0, 1000.0]
        few_shot: [2]
        draws: 2
      linear_probe:
        layers: [res5, pool5]
        image_size: 32
        learning_rates: [0.01, 0.1, 1.0]
        epochs: 3
        batch_size: 16
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("classification_tasks")
    synth_classification(root / "data", num_classes=4, per_split={"train": 12, "test": 4}, min_side=32, max_side=40)
    config = root / "bench.yaml"
    config.write_text(textwrap.dedent(SUITE).format(data=root / "data"))
    out = root / "runs"
    assert main(["run", "--suite", "tiny", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    cache = out / "feature-cache"
    feats = {}
    for meta in cache.rglob("*.json"):
        m = json.loads(meta.read_text())
        feats[m["split"], m["layer"]] = np.load(meta.with_suffix(".npy")).astype(np.float64)
    data = load_classification(root / "data", "synth-classification")
    df = ResultStore(out / "tiny").load()
    return SimpleNamespace(df=df, feats=feats, data=data, run_dir=out / "tiny")


def part(run, which, layer):
    p = getattr(run.data, which)
    return run.feats[p.split.name, layer][p.indices], p.labels


def brute_knn(train, train_labels, test, k, T=0.07, classes=4):
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = qn @ tn.T
    preds = []
    for row in sims:
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        scores = np.zeros(classes)
        np.add.at(scores, train_labels[order], np.exp(row[order] / T))
        preds.append(np.lexsort((np.arange(classes), -scores))[0])
    return np.array(preds)


def value(df, **where):
    rows = df
    for key, v in where.items():
        rows = rows[rows[key].astype(str).str.replace(r"\.0$", "", regex=True) == str(v)]
    assert len(rows) == 1, where
    return float(rows["value"].iloc[0])


def test_knn_rows_equal_brute_force(run):
    df = run.df[run.df.task == "knn"]
    for layer in ("res5", "pool5"):
        train, train_labels = part(run, "train", layer)
        test, test_labels = part(run, "test", layer)
        for k in (1, 5, 200):  # 200 > n: every neighbour
            correct = brute_knn(train, train_labels, test, k) == test_labels
            expected = 100 * np.mean(correct)
            got = value(df[df.k.isna()], layer=layer, metric="top1", evaluation=f"{k}-NN")
            assert got == pytest.approx(expected, abs=1e-9)
            # each test image's outcome is kept for the significance marks
            row = df[df.k.isna() & (df.layer == layer) & (df.metric == "top1") & (df.evaluation == f"{k}-NN")].iloc[0]
            saved = ResultStore(run.run_dir).read_outcomes(row["outcomes_file"], row["outcomes_entry"])
            assert np.array_equal(saved.values, correct.astype(float)) and saved.statistic == "top1"
        draws = []
        for d in range(2):
            chosen = few_shot_draw(train_labels, 2, 0, d)
            draws.append(100 * np.mean(brute_knn(train[chosen], train_labels[chosen], test, 5) == test_labels))
        assert value(df, layer=layer, metric="top1_mean", evaluation="5-NN", k=2) == pytest.approx(np.mean(draws))
    assert set(df["selection"].dropna()) == {"none: every k reported, nothing chosen"}
    scored = df[df.metric != "skipped"]  # every top-1/top-5 counts the test images: one is 100 / n points
    assert np.allclose(scored["metric_step"].astype(float), 100 / len(run.data.test))


def test_logreg_choice_on_val_and_test_equal_sklearn(run):
    df = run.df[run.df.task == "logreg"]
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    (Xtr, ytr), (Xva, yva), (Xte, yte) = (part(run, w, "pool5") for w in ("train", "val", "test"))
    models = {C: LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(norm(Xtr), ytr) for C in (0.1, 10.0, 1000.0)}
    val = {C: 100 * np.mean(m.predict(norm(Xva)) == yva) for C, m in models.items()}
    chosen = max(val, key=lambda C: (val[C], -C))  # best on val, smaller C on ties
    full = df[df.k.isna() & (df.metric == "top1")]
    assert float(full["cost"].iloc[0]) == chosen
    assert float(full["value"].iloc[0]) == pytest.approx(100 * np.mean(models[chosen].predict(norm(Xte)) == yte))
    saved = ResultStore(run.run_dir).read_outcomes(full["outcomes_file"].iloc[0], full["outcomes_entry"].iloc[0])
    assert np.array_equal(saved.values, (models[chosen].predict(norm(Xte)) == yte).astype(float))
    for C in val:
        assert value(df, metric="val_top1", evaluation=f"C={C:g}") == pytest.approx(val[C])
    assert (df.loc[df.metric == "top1", "cost_selection"] == "C by top-1 on val").all()
    step = df.set_index("metric")["metric_step"].astype(float)  # the images each count is over
    assert np.allclose(step[["top1", "top5", "top1_mean"]], 100 / len(yte))
    assert np.allclose(step["val_top1"], 100 / len(yva))


def test_few_shot_draws_reproducible_and_disjoint_from_val_and_test(run):
    labels = run.data.train.labels
    a, b = few_shot_draw(labels, 2, 0, 0), few_shot_draw(labels, 2, 0, 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, few_shot_draw(labels, 2, 0, 1))
    assert np.bincount(labels[a]).tolist() == [2, 2, 2, 2]
    rows_on_disk = run.data.train.indices[a]  # positions in the on-disk train split
    assert not set(rows_on_disk) & set(run.data.val.indices)  # val was carved out of the same split
    assert run.data.test.split.name != run.data.train.split.name
    assert few_shot_draw(labels, 50, 0, 0) is None  # a class cannot supply 50


def test_probe_selected_head_is_the_best_on_val(run):
    df = run.df[run.df.task == "linear_probe"]
    heads = torch.load(next(run.run_dir.rglob("heads.pt")), weights_only=True)
    _, yva = part(run, "val", "pool5")
    scores = []  # grid order: layer, pooling, lr
    for layer in ("res5", "pool5"):
        Xva, _ = part(run, "val", layer)
        for pooling in ("flat", "mean"):
            key = f"{layer}/{pooling}"
            if key not in heads:
                continue
            x = Xva if pooling == "flat" else Xva.reshape(len(Xva), -1, 4).mean(-1)
            for h, lr in enumerate(heads[key]["lrs"].tolist()):
                logits = x @ heads[key]["weight"][h].double().numpy() + heads[key]["bias"][h].double().numpy()
                top1 = 100 * np.mean(np.argmax(logits, 1) == yva)
                scores.append((top1, layer, pooling, lr, logits))
    best = max(scores, key=lambda s: s[0])  # max returns the first maximum: grid order on ties
    row = df[(df.layer == "all") & (df.metric == "top1")].iloc[0]
    assert (row.selected_layer, row.selected_pooling) == (best[1], best[2])
    assert float(row.selected_lr) == pytest.approx(best[3])
    assert float(row.val_top1) == pytest.approx(best[0])
    Xte, yte = part(run, "test", best[1])
    x = Xte if best[2] == "flat" else Xte.reshape(len(Xte), -1, 4).mean(-1)
    key, h = f"{best[1]}/{best[2]}", heads[f"{best[1]}/{best[2]}"]["lrs"].tolist().index(best[3])
    logits = x @ heads[key]["weight"][h].double().numpy() + heads[key]["bias"][h].double().numpy()
    assert float(row.value) == pytest.approx(100 * np.mean(np.argmax(logits, 1) == yte), abs=1e-9)
    curves = pd.read_csv(next(run.run_dir.rglob("curves.csv")))
    assert len(curves) == 3 * 3 * 3  # epochs x (res5 flat, res5 mean, pool5 flat) x lrs
    assert (df.loc[df.metric.isin(["top1", "top5"]), "cost_selection"] == "val").all()
