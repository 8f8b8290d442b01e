"""Former name of ``benchmark.plugin_api``, kept so that plugins written against it still import.

New code imports ``benchmark.plugin_api``."""

from .plugin_api import *  # noqa: F401,F403
from .plugin_api import LoadedModel, Pretrainer, ReportItem, RunContext, Task  # noqa: F401


def __getattr__(name: str):
    from . import plugin_api

    return getattr(plugin_api, name)
