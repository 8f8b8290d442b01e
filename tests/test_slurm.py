"""The mini protocol through a real one-node SLURM cluster on localhost, via submitit.

Needs root to install/start the daemons (CI runs as root); elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.results import ResultStore
from tests.suites import RANDOM, SUPERVISED_1_EPOCH, suite_yaml, voc07_svm

from .slurm_local import SlurmUnavailable, local_slurm

pytestmark = pytest.mark.slow

LOWSHOT = {"layers": ["res5"], "image_size": 32, "k_values": [1, 4], "num_samples": 2, "costs": [0.1, 1.0],
           "n_jobs": 1}


def slurm_suite(data, executor: str) -> str:
    # a job runs torch with its cpus-per-task as threads (benchmark.cpus): with every core of the
    # node, as many as the local run has, so that the floating-point sums, and the numbers, agree
    cores = len(os.sched_getaffinity(0))
    jobs = {"name": executor, "partition": "debug", "gpus_per_node": 0, "cpus_per_task": cores,
            "cpus_per_svm_task": cores, "mem_gb": 1, "timeout_min": 20}
    return suite_yaml(data, {"random": RANDOM, "supervised": SUPERVISED_1_EPOCH},
                      {"voc07_svm": voc07_svm(), "lowshot_voc07": LOWSHOT}, executor=jobs)


KEY = ["model", "task", "layer", "metric", "class", "k", "sample", "cost_selection"]


def _rows(run_dir):
    df = ResultStore(run_dir).load()
    return df[KEY + ["value"]].fillna("").astype({"k": str, "sample": str}).sort_values(KEY).reset_index(drop=True)


def test_slurm_executor_matches_the_local_run(tmp_path, monkeypatch) -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("starting slurmctld/slurmd needs root")
    data = tmp_path / "data"
    assert main(["data", "synth", "voc07", "--out", str(data), "--images", "200", "--seed", "3"]) == 0
    configs = {}
    for executor in ("local", "slurm"):
        configs[executor] = tmp_path / f"{executor}.yaml"
        configs[executor].write_text(slurm_suite(data, executor))
    assert main(["run", "--suite", "tiny", "--config", str(configs["local"]), "--out", str(tmp_path / "local"),
                 "--device", "cpu"]) == 0
    try:
        with local_slurm(tmp_path / "slurm") as env:
            monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])
            assert main(["run", "--suite", "tiny", "--config", str(configs["slurm"]),
                         "--out", str(tmp_path / "cluster"), "--device", "cpu"]) == 0
    except SlurmUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    run_dir = tmp_path / "cluster" / "tiny"
    pd.testing.assert_frame_equal(_rows(run_dir), _rows(tmp_path / "local" / "tiny"))
    # every unit ran in a SLURM job: submitit folders hold their logs
    logs = list((run_dir / "submitit").rglob("*_log.out"))
    assert len(logs) >= 2 + 6  # 2 prepare jobs + 6 unit jobs (3 per model)
    assert main(["status", str(run_dir)]) == 0
