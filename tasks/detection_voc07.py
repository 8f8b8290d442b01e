"""Old import path of `detection_voc07`, kept only while benchmark.registry names the built-in task modules;
the task lives in `tasks.detection.voc07` (point the `ssl_bench.tasks` entry point there, then delete this file)."""

from tasks.detection.voc07 import DetectionVOC07  # noqa: F401  (importing it registers the task)
