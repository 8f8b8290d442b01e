"""Importing ssl-bench makes OpenMP threads sleep while they wait (unless the user chose a policy):
spinning threads slowed the SVM engine x2.52 beside one busy process on 2 cores, sleeping x1.49."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import benchmark, os; print(os.environ['OMP_WAIT_POLICY'])"


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_sets_a_sleeping_wait_policy_unless_chosen(given, expected) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
