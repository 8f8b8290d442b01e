"""The time-left estimate of ``ssl-bench status``, on hand-made states."""

from __future__ import annotations

from benchmark.run.plan import Unit
from benchmark.run.status import UnitState, time_left


def _unit(task: str, name: str) -> Unit:
    return Unit(f"m/{task}/{name}", "m", task, name, "hash", needs_gpu=False)


def test_time_left_uses_each_tasks_mean_and_subtracts_time_spent() -> None:
    states = [
        (_unit("svm", "a"), UnitState("done")),
        (_unit("svm", "b"), UnitState("done")),
        (_unit("svm", "c"), UnitState("pending")),                 # 15 s (mean of 10 and 20)
        (_unit("svm", "d"), UnitState("running", started=1000.0)),  # 15 - 5 spent = 10 s
        (_unit("svm", "e"), UnitState("running", started=900.0)),   # over its mean already: 0, not negative
        (_unit("svm", "f"), UnitState("failed")),                  # needs a retry, not counted
        (_unit("heads", "a"), UnitState("pending")),               # no finished unit of its task: unknown
    ]
    durations = {"m/svm/a": 10.0, "m/svm/b": 20.0}
    seconds, unknown = time_left(states, durations, now=1005.0)
    assert seconds == 25.0 and unknown == 1


def test_nothing_left_when_everything_finished() -> None:
    states = [(_unit("svm", "a"), UnitState("done"))]
    assert time_left(states, {"m/svm/a": 3.0}, now=0.0) == (0.0, 0)
