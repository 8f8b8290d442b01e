"""Old import path of `lowshot_voc07`, kept only while benchmark.registry names the built-in task modules;
the task lives in `tasks.lowshot.voc07` (point the `ssl_bench.tasks` entry point there, then delete this file)."""

from tasks.lowshot.voc07 import LowShotVOC07  # noqa: F401  (importing it registers the task)
