"""``wkv``'s dispatch and argument checks: which implementation runs, and how ``chunk_size`` reaches the
PyTorch path (read at every call, never bound at import)."""

import pytest
import torch

from spikegpt.kernels import wkv
from spikegpt.kernels.backend import resolve_backend
from spikegpt.kernels.wkv import torch_chunk


def make(B=2, T=50, C=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    td, tf = torch.randn(C, generator=g, dtype=dtype), torch.randn(C, generator=g, dtype=dtype)
    k, v = torch.randn(B, T, C, generator=g, dtype=dtype), torch.randn(B, T, C, generator=g, dtype=dtype)
    return td, tf, k, v


@pytest.fixture
def plans(monkeypatch):
    """The chunk length each call of the PyTorch path's planner is given (and the T it plans for)."""
    seen = []
    plan = torch_chunk._plan

    def spy(T, chunk):
        seen.append((T, chunk))
        return plan(T, chunk)

    monkeypatch.setattr(torch_chunk, "_plan", spy)
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_automatic_choice_on_cpu_is_the_pytorch_path(plans, dtype):
    td, tf, k, v = make(dtype=dtype)
    assert resolve_backend(None, k, "wkv") == "torch"
    wkv(td, tf, k, v)
    assert plans == [(50, torch_chunk.CHUNK_SIZE)]


def test_chunk_size_is_read_at_call_time(plans, monkeypatch):
    """``CHUNK_SIZE`` is looked up at every call (changing it after import changes the next call's chunks),
    ``chunk_size=`` overrides it, and neither depends on T (the old chunk length was about sqrt(T))."""
    td, tf, k, v = make()
    default = torch_chunk.CHUNK_SIZE
    wkv(td, tf, k, v, backend="torch")
    wkv(td, tf, k[:, :20], v[:, :20], backend="torch")
    monkeypatch.setattr(torch_chunk, "CHUNK_SIZE", 7)
    wkv(td, tf, k, v, backend="torch")
    wkv(td, tf, k, v)  # automatic dispatch on CPU
    wkv(td, tf, k, v, backend="torch", chunk_size=11)
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[0, :13] = False
    wkv(td, tf, k, v, mask=mask, backend="torch")  # padding changes neither T nor the chunk length
    assert plans == [(50, default), (20, default), (50, 7), (50, 7), (50, 11), (50, 7)]


@pytest.mark.parametrize("chunk_size", [0, -3])
@pytest.mark.parametrize("T,grad", [(1, False), (1, True), (9, False), (9, True)],
                         ids=["step", "one-token-grad", "seq", "seq-grad"])
def test_chunk_size_below_one_raises(T, grad, chunk_size):
    """On every path of the PyTorch implementation, the one-token step without gradients included."""
    td, tf, k, v = make(T=T)
    with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="chunk_size"):
        wkv(td, tf, k.requires_grad_(grad), v, backend="torch", chunk_size=chunk_size)


def test_module_chunk_size_below_one_raises(monkeypatch):
    td, tf, k, v = make(T=1)
    monkeypatch.setattr(torch_chunk, "CHUNK_SIZE", 0)
    with torch.no_grad(), pytest.raises(ValueError, match="chunk_size"):
        wkv(td, tf, k, v)
