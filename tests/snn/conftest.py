"""The SNN tests run many tiny ops step by step; on a busy 2-core machine intra-op threading makes those
tens of times slower (measured: 0.7 ms vs 35 ms per e-prop step), so each test here runs single-threaded
and restores the previous setting afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
