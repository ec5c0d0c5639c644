"""Model tests run single-threaded.

They check numbers, not speed. On a machine whose cores are shared with other jobs, two-thread
PyTorch kernels on these small inputs stall at their thread barriers (a 3D ResNet-101 step took
~100x longer with 2 threads than with 1 under a load of 3 on 2 cores), so one thread keeps the
suite's time predictable. The previous setting is restored after each test.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
