"""The WKV Triton kernels (run by the interpreter on CPU) against the loop reference in float64."""

import os

import pytest
import torch

from spikegpt.kernels import wkv
from spikegpt.kernels.wkv import triton_recurrent as wt
from spikegpt.kernels.wkv.naive import wkv_naive
from spikegpt.kernels.wkv.triton_recurrent import wkv_triton

# By default these run on CPU through the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
# benchmarks/gpu_check.sh runs the same tests on the compiled kernels with
# SPIKEGPT_TEST_DEVICE=cuda TRITON_INTERPRET=0.
DEVICE = torch.device(os.environ.get("SPIKEGPT_TEST_DEVICE", "cpu"))
EXACT = DEVICE.type == "cpu"  # the interpreter repeats numpy's arithmetic bit for bit

LOW = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def make(B, T, C, kscale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    td = torch.randn(C, generator=g)
    tf = torch.randn(C, generator=g)
    k = torch.randn(B, T, C, generator=g) * kscale
    v = torch.randn(B, T, C, generator=g)
    return tuple(x.to(DEVICE) for x in (td, tf, k, v))


def random_state(B, C, seed=1):
    g = torch.Generator().manual_seed(seed)
    st = torch.randn(B, C, generator=g), torch.rand(B, C, generator=g) + 0.1, torch.randn(B, C, generator=g)
    return tuple(x.to(DEVICE) for x in st)


def random_mask(B, T, seed=5, empty_row=False):
    m = torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) > 0.3
    if empty_row:
        m[-1] = False  # a row that is all padding
    return m.to(DEVICE)


def run(fn, inputs, state, mask, dtype, **kw):
    """Outputs (y, num, den, max) and the gradients of (time_decay, time_first, k, v, *state) for random
    cotangents on every output, all as float64."""
    leaves = [x.detach().to(dtype).clone().requires_grad_() for x in inputs]
    st_leaves = [s.detach().clone().to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
                 for s in state] if state is not None else None
    y, st = fn(*leaves, st_leaves, mask=mask, **kw)
    outs = (y, *st)
    g = torch.Generator().manual_seed(9)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum() for o in outs)
    loss.backward()
    grads = [x.grad for x in leaves] + ([s.grad for s in st_leaves] if st_leaves else [])
    return [o.detach().double() for o in outs], [gr.double() for gr in grads]


def reference(inputs, state, mask, dtype=torch.float32):
    """The reference in float64 on the inputs as the kernel sees them (rounded to ``dtype``)."""
    ins = [x.detach().to(dtype).double() for x in inputs]
    st = [s.double() for s in state] if state is not None else None
    return run(wkv_naive, ins, st, mask, torch.float64)


def assert_all_close(got, want, rtol, atol, what):
    """Closeness with ``atol`` relative to each tensor's largest value: a gradient summed over B and T in
    fp32 (time_decay's) carries absolute error from its largest terms, which can cancel to a small total
    (the fp32 loop reference shows the same)."""
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.isfinite(a).all(), f"{what}[{i}] is not finite"
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m, i=i: f"{what}[{i}]: {m}")


CASES = [(2, 1, 5), (2, 7, 3), (3, 21, 6), (1, 40, 17)]


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
@pytest.mark.parametrize("shape", CASES, ids=lambda c: f"B{c[0]}-T{c[1]}-C{c[2]}")
def test_fp32_matches_reference(shape, with_state, masked):
    """Outputs, final state and the gradients of every input and of the incoming state."""
    B, T, C = shape
    inputs = make(B, T, C)
    state = random_state(B, C) if with_state else None
    mask = random_mask(B, T, empty_row=B > 1) if masked else None
    out, grads = run(wkv, inputs, state, mask, torch.float32, backend="triton")
    out_r, grads_r = reference(inputs, state, mask)
    assert_all_close(out, out_r, 1e-5, 1e-5, "output")
    assert_all_close(grads, grads_r, 1e-5, 1e-5, "grad")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=LOW.get)
def test_low_precision_inputs(dtype):
    """bf16 / fp16 k and v: computed in fp32 from the rounded inputs, y and dk, dv rounded on store."""
    B, T, C = 2, 21, 6
    inputs = make(B, T, C, kscale=2.0)
    state = random_state(B, C)
    out, grads = run(wkv, inputs, state, None, dtype, backend="triton")
    out_r, grads_r = reference(inputs, state, None, dtype)
    assert_all_close(out, out_r, 2e-2, 2e-2, "output")
    assert_all_close(grads, grads_r, 3e-2, 3e-2, "grad")
    td, tf, k, v = (x.to(dtype) for x in inputs)
    y, st = wkv(td, tf, k, v, backend="triton")
    assert y.dtype == dtype and all(s.dtype == torch.float32 for s in st)


def test_several_channel_blocks_odd_c(monkeypatch):
    """Channel blocks narrower than C (as on a GPU, 32 wide): the last block is partly masked."""
    monkeypatch.setattr(wt, "INTERPRET_BLOCK_C", 4)
    C = 11 if DEVICE.type == "cpu" else 75  # three blocks: 4 + 4 + 3 here, 32 + 32 + 11 on a GPU
    inputs = make(2, 9, C)
    state = random_state(2, C)
    mask = random_mask(2, 9)
    out, grads = run(wkv, inputs, state, mask, torch.float32, backend="triton")
    out_r, grads_r = reference(inputs, state, mask)
    assert_all_close(out, out_r, 1e-5, 1e-5, "output")
    assert_all_close(grads, grads_r, 1e-5, 1e-5, "grad")


@pytest.mark.parametrize("unroll,groups", [(1, 1), (2, 5), (16, 1)])
def test_launch_shape_changes_no_bit(unroll, groups):
    """Unroll length and checkpoint spacing change where the kernels checkpoint, never the arithmetic."""
    inputs = make(2, 13, 5)
    state = random_state(2, 5)
    mask = random_mask(2, 13)
    base = run(wkv_triton, inputs, state, mask, torch.float32)
    other = run(wkv_triton, inputs, state, mask, torch.float32, unroll=unroll, groups=groups)
    for a, b in zip(base[0] + base[1], other[0] + other[1]):
        assert torch.equal(a, b) if EXACT else torch.allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("split", [1, 6, 13])
def test_chunked_equals_whole_with_gradients(split):
    """Two calls passing the state on equal one call, and so do the gradients through the passed state."""
    B, T, C = 2, 19, 5
    td, tf, k, v = make(B, T, C)
    state = random_state(B, C)

    def two_calls(td, tf, k, v, st, mask=None):
        y1, s1 = wkv_triton(td, tf, k[:, :split], v[:, :split], st)
        y2, s2 = wkv_triton(td, tf, k[:, split:], v[:, split:], s1)
        return torch.cat([y1, y2], 1), s2

    whole = run(wkv_triton, (td, tf, k, v), state, None, torch.float32)
    chunked = run(two_calls, (td, tf, k, v), state, None, torch.float32)
    assert_all_close(chunked[0], whole[0], 1e-6, 1e-6, "output")
    assert_all_close(chunked[1], whole[1], 1e-5, 1e-5, "grad")


def test_token_by_token_step_path():
    """The T = 1 generation step (a launch of one token) chained over a sequence equals one call."""
    td, tf, k, v = make(2, 12, 7)
    y, s = wkv_triton(td, tf, k, v)
    st, ys = None, []
    with torch.no_grad():
        for t in range(12):
            yt, st = wkv_triton(td, tf, k[:, t : t + 1], v[:, t : t + 1], st)
            ys.append(yt)
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=1e-6, atol=1e-6)
    for a, b in zip(st, s):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_extreme_keys_and_decays():
    """|k| up to 60 and decays from e^-0.0025 to e^-148 per token: finite, and equal to float64."""
    B, T, C = 2, 40, 6
    g = torch.Generator().manual_seed(2)
    k = (torch.rand(B, T, C, generator=g) * 2 - 1) * 60
    v = torch.randn(B, T, C, generator=g)
    td = torch.linspace(-6, 5, C)
    tf = torch.randn(C, generator=g) * 3
    state = (torch.randn(B, C, generator=g), torch.rand(B, C, generator=g) + 0.1, torch.randn(B, C, generator=g) * 50)
    td, tf, k, v = (x.to(DEVICE) for x in (td, tf, k, v))
    state = tuple(x.to(DEVICE) for x in state)
    out, grads = run(wkv, (td, tf, k, v), state, None, torch.float32, backend="triton")
    out_r, grads_r = reference((td, tf, k, v), state, None)
    assert_all_close(out, out_r, 1e-4, 1e-4, "output")
    assert_all_close(grads, grads_r, 1e-3, 1e-4, "grad")


def test_padding_equals_compacted_sequence():
    """Padding anywhere: real tokens get what the sequence without the padding gives; padding gets 0."""
    td, tf, k, v = make(1, 30, 4)
    st = random_state(1, 4)
    mask = random_mask(1, 30, seed=11)
    y, s = wkv_triton(td, tf, k, v, st, mask=mask)
    idx = mask[0].nonzero()[:, 0]
    yc, sc = wkv_triton(td, tf, k[:, idx], v[:, idx], st)
    torch.testing.assert_close(y[:, idx], yc, rtol=1e-6, atol=1e-6)
    assert (y[:, ~mask[0]] == 0).all()
    for a, b in zip(s, sc):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_inference_keeps_no_checkpoints(monkeypatch):
    """Without a gradient the forward launch writes no checkpoints; with one it writes them."""
    seen = []
    impl = wt._fwd_impl

    def spy(*args):
        out = impl(*args)
        seen.append((args[-1], out[-1].numel()))
        return out

    monkeypatch.setattr(wt, "_fwd_impl", spy)
    td, tf, k, v = make(1, 9, 3)
    wkv_triton(td, tf, k, v)
    wkv_triton(td, tf, k.requires_grad_(), v)
    assert seen[0] == (False, 0)
    assert seen[1][0] is True and seen[1][1] > 0


def test_bad_inputs_raise():
    td, tf, k, v = make(2, 5, 4)
    with pytest.raises(ValueError, match="fp64|float64"):
        wkv(td.double(), tf.double(), k.double(), v.double(), backend="triton")
    with pytest.raises(ValueError, match="unroll"):
        wkv_triton(td, tf, k, v, unroll=0)
    with pytest.raises(ValueError, match="k and v"):
        wkv_triton(td, tf, k, v[:, :3])
