"""Names of result-row columns that tasks write and the engine reads (the regression check, the
report), in one small module that both import."""

from __future__ import annotations

# the columns that identify a result row: two rows of one run never share all of them
JOIN = ["model", "task", "dataset", "layer", "metric", "class", "k", "sample", "cost_selection", "evaluation"]
# Keys only some rows carry ('' on the others): a key wherever both sides of a join have the
# column, so rows and references without it (other tasks, older references) join as before
OPTIONAL_JOIN = ["backend"]
# the smallest move of a count metric (100 / n scored items, points), written by the tasks on their
# rows; the regression check lets an exact row move by one step (benchmark/check.py)
STEP_COLUMN = "metric_step"
# A row may carry its per-test-image outcomes (a benchmark.significance.Outcomes) under OUTCOMES;
# the result store keeps them in a file beside the unit's CSV, named on the row in OUTCOMES_FILE
# with the row's entry in it in OUTCOMES_ENTRY. The report's significance marks read them.
OUTCOMES = "outcomes"
OUTCOMES_FILE = "outcomes_file"
OUTCOMES_ENTRY = "outcomes_entry"
