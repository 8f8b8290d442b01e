import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: on a shared 2-core machine intra-op threads cost far more than they gain."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
