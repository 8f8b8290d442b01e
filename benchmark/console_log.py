"""Where the messages of the library go when ssl-bench runs as a program.

Library modules (``benchmark``, ``tasks``, ``pretrainers``) log through
``logging.getLogger(__name__)`` and never print; the processes ssl-bench starts (the command line,
a SLURM job, a spawned training rank) call ``configure_console_logging`` once, which shows those
messages as they were printed before logging existed: the bare message, information on stdout,
warnings and errors on stderr. Another program that imports ssl-bench configures logging its own way.
"""

from __future__ import annotations

import logging
import sys

# The loggers of ssl-bench's own packages: other libraries' loggers (timm, detectron2, submitit)
# keep their own configuration, so their messages do not start to show on the console.
LIBRARY_LOGGERS = ("benchmark", "tasks", "pretrainers")


class _ConsoleHandler(logging.StreamHandler):
    """Writes to ``sys.stdout`` or ``sys.stderr`` as they are when a record is emitted, not as they
    were at set-up: a redirected or captured stream (``contextlib.redirect_stdout``, pytest's
    capsys) gets the messages, as it got the prints they replace."""

    def __init__(self, to_stderr: bool):
        self.to_stderr = to_stderr
        super().__init__()

    @property
    def stream(self):
        return sys.stderr if self.to_stderr else sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the stream is looked up instead
        pass


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


def configure_console_logging(level: int = logging.INFO) -> None:
    """Show the library's messages at ``level`` and above: below WARNING on stdout, the rest on
    stderr, each as its bare message. Calling it again replaces the handlers it installed."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
            logger.removeHandler(handler)
        information, warnings = _ConsoleHandler(to_stderr=False), _ConsoleHandler(to_stderr=True)
        information.addFilter(_below_warning)
        warnings.setLevel(logging.WARNING)
        for handler in (information, warnings):
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        logger.setLevel(level)
        # shown once, by these handlers, even when another library gives the root logger a handler
        logger.propagate = False
