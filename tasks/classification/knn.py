"""`knn`: weighted k-nearest-neighbour classification on frozen features (DINO's evaluation).

Per layer (one unit each): the training part's cached features are the neighbour bank, the test
split the queries; cosine similarity of L2-normalised features, votes exp(s / T), every k of
``k_values`` from one top-k search (``knn_classifier``), top-1 and top-5. Nothing is selected: every
k is reported (rows say ``selection: none``). ``few_shot: [n, ...]``: the bank is n images per
class drawn from the training part (``draws`` seeded draws, never from validation or test): per
draw and mean/std/min/max/ci95 over draws.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from benchmark.plugin_api import LoadedModel, RunContext, Task
from benchmark.options import Float, Int, ListOf, declare
from benchmark.row_schema import OUTCOMES, STEP_COLUMN
from benchmark.significance import Outcomes

from .common import (COMPUTE_DEVICE, DATA_OPTIONS, DINO_K, DINO_T, DRAWS, FEW_SHOT, MEAN_PER_CLASS, ClassificationTask,
                     draw_rows, few_shot_draw, headline_metric, mean_per_class_row, part_rows, transfer_column)

if TYPE_CHECKING:
    from benchmark.models import Architecture

NAME = "knn"


class KNN(ClassificationTask, Task):
    name = NAME
    trains = False  # a search and a vote: fixed features give fixed answers
    options = declare({
        **DATA_OPTIONS,
        "k_values": ListOf(Int(min=1), list(DINO_K), min_length=1, unique=True),
        "temperature": Float(DINO_T, min=0, min_open=True),
        "few_shot": FEW_SHOT,
        "draws": DRAWS,
        "knn_device": COMPUTE_DEVICE,
        "train_chunk": Int(16384, min=1),  # bank rows per similarity block: bounds memory
        "query_chunk": Int(1024, min=1),
    })

    def units(self, arch: Architecture) -> list[str]:
        return self.layers(arch)

    def run(self, ctx: RunContext, model: LoadedModel, unit: str) -> list[dict]:
        from benchmark.provenance import resolve_device

        from .knn_classifier import knn_classify

        layer, c = unit, self.config
        data = self.data(ctx)
        features = self.split_features(ctx, model, data)
        bank, bank_rows = part_rows(features, data.train, layer)
        test, test_rows = part_rows(features, data.test, layer)
        queries = test if len(test_rows) == len(test) else test[test_rows]
        train_labels = data.train.labels
        device = resolve_device(c.knn_device)

        def classify(rows, with_outcomes=False):
            return knn_classify(bank, train_labels[rows], queries, data.test.labels, data.num_classes,
                                ks=c.k_values, temperature=c.temperature, train_rows=bank_rows[rows],
                                train_chunk=c.train_chunk, query_chunk=c.query_chunk, device=device,
                                with_outcomes=with_outcomes)

        common = {**self.common_row(model, data, layer), "temperature": c.temperature,
                  "feature_dim": int(bank.shape[1]), "selection": "none: every k reported, nothing chosen",
                  "evaluated_on": data.test.description, "knn_device": str(device),
                  STEP_COLUMN: 100.0 / len(test_rows)}  # top-1 and top-5 count test images
        rows = []
        headline = headline_metric(data)  # the protocol's metric of a transfer dataset: top1 elsewhere
        scores_by_k, correct_by_k = classify(np.arange(len(bank_rows)), with_outcomes=True)
        for k, scores in scores_by_k.items():
            for metric, value in scores.items():
                outcomes = {OUTCOMES: Outcomes("top1", correct_by_k[k])} if metric == "top1" else {}
                rows.append({**common, "evaluation": f"{k}-NN", "neighbours": k, "metric": metric, "value": value,
                             "bank": data.train.description, **outcomes,
                             # the leaderboard's across-datasets tables (benchmark.report_datasets)
                             "transfer_column": transfer_column(data, f"{NAME} {layer} {k}-NN", metric)})
            if headline == MEAN_PER_CLASS:
                rows.append(mean_per_class_row(
                    {**common, "evaluation": f"{k}-NN", "neighbours": k, "bank": data.train.description},
                    correct_by_k[k], data.test.labels, transfer_column(data, f"{NAME} {layer} {k}-NN", MEAN_PER_CLASS)))
        for shots in c.few_shot:
            per_draw = {}
            for draw in range(c.draws):
                chosen = few_shot_draw(train_labels, shots, ctx.seed, draw)
                if chosen is None:
                    break
                for k, scores in classify(chosen).items():
                    for metric, value in scores.items():
                        per_draw.setdefault((k, metric), []).append(value)
            if not per_draw:
                rows.append({**common, "k": shots, "metric": "skipped", "value": float("nan"),
                             "note": f"a class of {data.train.description} has fewer than {shots} images"})
                continue
            for (k, metric), values in per_draw.items():
                rows += draw_rows({**common, "evaluation": f"{k}-NN", "neighbours": k,
                                   "bank": f"{shots} per class from {data.train.description}, seed {ctx.seed}"},
                                  shots, metric, values)
        return rows
