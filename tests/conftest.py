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


@pytest.fixture(scope="session")
def synth_voc07(tmp_path_factory):
    """A factory of generated VOC2007 data roots, each made once per test session (per xdist
    worker) and shared by the modules that ask for the same size and seed. Read-only: a test that
    damages data makes its own copy."""
    from benchmark.cli import main

    made = {}

    def data_root(images: int, seed: int):
        if (images, seed) not in made:
            root = tmp_path_factory.mktemp(f"voc07_{images}_{seed}")
            assert main(["data", "synth", "voc07", "--out", str(root), "--images", str(images),
                         "--seed", str(seed)]) == 0
            made[images, seed] = root
        return made[images, seed]

    return data_root
