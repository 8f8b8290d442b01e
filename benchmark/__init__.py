"""ssl-bench: benchmark frozen visual representations with the Goyal et al. 2019 protocol."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning (unless the user chose otherwise).
# Cluster nodes and CI machines are rarely idle: spinning threads compete with other processes
# for the cores. Measured with perf/svm_sweep.py --compete 1 on 2 cores: the SVM engine slowed
# x2.52 beside one busy process with spinning threads, x1.49 with sleeping ones (idle: within
# 10 %). Set here, before torch starts its OpenMP runtime, so every entry point gets it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
