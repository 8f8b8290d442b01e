"""Old import path of `linear_places205`, kept only while benchmark.registry names the built-in task modules;
the task lives in `tasks.linear.places205` (point the `ssl_bench.tasks` entry point there, then delete this file)."""

from tasks.linear.places205 import LinearPlaces205  # noqa: F401  (importing it registers the task)
