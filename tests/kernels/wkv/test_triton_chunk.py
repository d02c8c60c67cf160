"""The chunk-parallel Triton WKV (run by the interpreter on CPU) against the loop reference in float64."""

import os

import pytest
import torch

from spikegpt.kernels.wkv import triton_chunk as wc
from spikegpt.kernels.wkv.naive import wkv_naive
from spikegpt.kernels.wkv.triton_chunk import wkv_triton_chunked
from spikegpt.kernels.wkv.triton_recurrent import wkv_triton

# CPU through the interpreter by default; benchmarks/gpu_check.sh runs these on CUDA.
DEVICE = torch.device(os.environ.get("SPIKEGPT_TEST_DEVICE", "cpu"))


def make(B, T, C, kscale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    td, tf = torch.randn(C, generator=g), torch.randn(C, generator=g)
    k, v = torch.randn(B, T, C, generator=g) * kscale, torch.randn(B, T, C, generator=g)
    state = (torch.randn(B, C, generator=g), torch.rand(B, C, generator=g) + 0.1, torch.randn(B, C, generator=g))
    mask = torch.rand(B, T, generator=g) > 0.3
    if B > 1:
        mask[-1] = False  # a row that is all padding
    return tuple(x.to(DEVICE) for x in (td, tf, k, v)), tuple(s.to(DEVICE) for s in state), mask.to(DEVICE)


def run(fn, inputs, state, mask, dtype=torch.float32, **kw):
    """Outputs (y and the state) and gradients (of time_decay, time_first, k, v and the incoming state) under
    random cotangents on every output, as float64."""
    leaves = [x.detach().to(dtype).clone().requires_grad_() for x in inputs]
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    st = [s.detach().to(sdt).clone().requires_grad_() for s in state] if state is not None else None
    y, s = fn(*leaves, st, mask=mask, **kw)
    g = torch.Generator().manual_seed(9)
    outs = (y, *s)
    cots = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device) for o in outs]
    sum((o.double() * c).sum() for o, c in zip(outs, cots)).backward()
    grads = [x.grad for x in leaves] + ([x.grad for x in st] if st else [])
    return [o.detach().double() for o in outs] + [x.double() for x in grads]


def reference(inputs, state, mask, dtype=torch.float32):
    ins = [x.detach().to(dtype).double() for x in inputs]
    return run(wkv_naive, ins, [s.double() for s in state] if state is not None else None, mask, torch.float64)


def assert_close(got, want, tol):
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.isfinite(a).all(), f"[{i}] is not finite"
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=lambda m, i=i: f"[{i}]: {m}")


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
@pytest.mark.parametrize("shape,chunk", [((2, 1, 5), None), ((2, 7, 3), None), ((3, 21, 6), 5), ((1, 40, 17), 1)],
                         ids=lambda x: str(x))
def test_fp32_matches_reference(shape, chunk, with_state, masked):
    """Outputs, final state and every gradient (including the incoming state's, and the returned max's
    path), for ragged last chunks, chunks of one token and a chunk longer than T."""
    inputs, state, mask = make(*shape)
    got = run(wkv_triton_chunked, inputs, state if with_state else None, mask if masked else None, chunk=chunk)
    want = reference(inputs, state if with_state else None, mask if masked else None)
    assert_close(got, want, 1e-5)


def test_chunk_longer_than_t_and_several_channel_blocks(monkeypatch):
    monkeypatch.setattr(wc, "INTERPRET_BLOCK_C", 4)
    inputs, state, mask = make(2, 9, 11 if DEVICE.type == "cpu" else 75)
    got = run(wkv_triton_chunked, inputs, state, mask, chunk=64)
    assert_close(got, reference(inputs, state, mask), 1e-5)


def test_extreme_keys_decays_and_incoming_max():
    """|k| up to 60, decays from e^-0.0025 to e^-148 per token, and incoming maxima that no key reaches."""
    B, T, C = 2, 40, 6
    g = torch.Generator().manual_seed(2)
    k = (torch.rand(B, T, C, generator=g) * 2 - 1) * 60
    v = torch.randn(B, T, C, generator=g)
    td, tf = torch.linspace(-6, 5, C), torch.randn(C, generator=g) * 3
    state = (torch.randn(B, C, generator=g), torch.rand(B, C, generator=g) + 0.1, torch.randn(B, C, generator=g) * 50)
    inputs = tuple(x.to(DEVICE) for x in (td, tf, k, v))
    state = tuple(x.to(DEVICE) for x in state)
    got = run(wkv_triton_chunked, inputs, state, None, chunk=7)
    want = reference(inputs, state, None)
    assert_close(got[:4], want[:4], 1e-4)
    assert_close(got[4:], want[4:], 1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs(dtype):
    inputs, state, _ = make(2, 21, 6, kscale=2.0)
    got = run(wkv_triton_chunked, inputs, state, None, dtype)
    assert_close(got, reference(inputs, state, None, dtype), 3e-2)


def test_agrees_with_the_per_channel_kernel():
    """Both Triton designs give the same numbers (to fp32 rounding)."""
    inputs, state, mask = make(2, 19, 5)
    a = run(wkv_triton_chunked, inputs, state, mask, chunk=3)
    b = run(wkv_triton, inputs, state, mask)
    assert_close(a, b, 1e-5)


def test_bad_inputs_raise():
    (td, tf, k, v), _, _ = make(2, 5, 4)
    with pytest.raises(ValueError, match="k and v"):
        wkv_triton_chunked(td, tf, k, v[:, :3])
