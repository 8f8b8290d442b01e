import pytest
import torch

from benchmark.console_log import configure_console_logging

# The library logs instead of printing: its messages are shown as the command line shows them, so
# the tests that read captured stdout and stderr see what a user sees.
configure_console_logging()


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: on a shared 2-core machine intra-op threads cost far more than they gain."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
