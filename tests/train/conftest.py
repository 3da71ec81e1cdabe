"""Train tests run torch on one intra-op thread.

On a small shared machine a two-thread OpenMP pool that competes with other processes
spins at every barrier: the same tiny training step then takes 5-10x longer. One
thread keeps these tests fast and their timing stable (results are unaffected).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_configure(config):
    # services.train.data decodes PNGs with torchvision.io (twice PIL's speed); torchvision
    # 0.29 deprecates it in favour of TorchCodec and warns on every call. Known, tracked
    # in docs/train-stage.md; not worth a warning per test sample.
    config.addinivalue_line(
        "filterwarnings", "ignore:The image decoding and encoding capabilities of TorchVision are deprecated:DeprecationWarning"
    )
