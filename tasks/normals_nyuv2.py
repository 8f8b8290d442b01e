"""Old import path of `normals_nyuv2`, kept only while benchmark.registry names the built-in task modules;
the task lives in `tasks.normals.nyuv2` (point the `ssl_bench.tasks` entry point there, then delete this file)."""

from tasks.normals.nyuv2 import NormalsNYUv2  # noqa: F401  (importing it registers the task)
