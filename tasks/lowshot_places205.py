"""Old import path of `lowshot_places205`, kept only while benchmark.registry names the built-in task modules;
the task lives in `tasks.lowshot.places205` (point the `ssl_bench.tasks` entry point there, then delete this file)."""

from tasks.lowshot.places205 import LowShotPlaces205  # noqa: F401  (importing it registers the task)
