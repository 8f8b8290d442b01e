"""The leaderboard's across-datasets tables: one per comparable column, datasets and their mean."""

import numpy as np
import pandas as pd

from benchmark.report_datasets import across_datasets, across_datasets_lines


def test_table_per_column_with_mean_and_no_mean_for_a_missing_dataset():
    rows = [("a", "food", "knn pool5 20-NN top1", 50.0), ("a", "dtd", "knn pool5 20-NN top1", 70.0),
            ("b", "food", "knn pool5 20-NN top1", 40.0),
            ("a", "food", "logreg pool5 top1", 60.0), ("a", "dtd", "logreg pool5 top1", 80.0),
            ("a", "dtd", "", 1.0)]
    df = pd.DataFrame(rows, columns=["model", "dataset", "transfer_column", "value"])
    tables = across_datasets(df)
    assert list(tables) == ["knn pool5 20-NN top1", "logreg pool5 top1"]
    knn = tables["knn pool5 20-NN top1"]
    assert list(knn.columns) == ["food", "dtd", "mean of 2 datasets"]
    assert knn.loc["a", "mean of 2 datasets"] == 60.0 and np.isnan(knn.loc["b", "mean of 2 datasets"])
    assert tables["logreg pool5 top1"].loc["a", "mean of 2 datasets"] == 70.0
    assert "## Across datasets" in across_datasets_lines(df)
    assert across_datasets_lines(df.drop(columns="transfer_column")) == []
    assert across_datasets_lines(df[df.dataset == "food"]) == []  # one dataset: nothing to average
