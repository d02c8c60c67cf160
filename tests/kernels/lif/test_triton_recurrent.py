"""The LIF Triton kernels (run by the interpreter on CPU) against the loop reference."""

import os

import pytest
import torch

from spikegpt.kernels import lif
from spikegpt.kernels.lif import triton_recurrent as lt
from spikegpt.kernels.lif.naive import lif_naive
from spikegpt.kernels.lif.triton_recurrent import lif_triton

# By default these run on CPU through the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
# benchmarks/gpu_check.sh runs the same tests on the compiled kernels with
# SPIKEGPT_TEST_DEVICE=cuda TRITON_INTERPRET=0.
DEVICE = torch.device(os.environ.get("SPIKEGPT_TEST_DEVICE", "cpu"))
EXACT = DEVICE.type == "cpu"  # the interpreter repeats numpy's arithmetic bit for bit


def make(B, T, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g) * 1.5 + 0.8  # fires often, and often not
    v0 = torch.randn(B, C, generator=g) * 0.5
    return x.to(DEVICE), v0.to(DEVICE)


def random_mask(B, T, seed=5):
    return (torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) > 0.3).to(DEVICE)


def run(fn, x, v0, mask, **kw):
    """Spikes, final membrane, and the gradients of x and v0 for random cotangents on both outputs."""
    xx = x.detach().clone().requires_grad_()
    vv = v0.detach().clone().requires_grad_()
    s, v = fn(xx, vv, mask=mask, **kw)
    g = torch.Generator().manual_seed(3)
    loss = (s.double() * torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.device)).sum()
    loss = loss + (v.double() * torch.randn(v.shape, generator=g, dtype=torch.float64).to(v.device)).sum()
    loss.backward()
    return s.detach(), v.detach(), xx.grad, vv.grad


SETTINGS = [
    dict(),
    dict(detach_reset=True),
    dict(v_reset=None),
    dict(v_reset=None, detach_reset=True),
    dict(v_reset=-0.2, tau=3.0, threshold=0.7),
    dict(surrogate="sigmoid", alpha=4.0),
    dict(surrogate="triangular", alpha=1.0),
    dict(surrogate="fast_sigmoid", alpha=25.0),
    dict(surrogate="straight_through"),
]


def _kw_id(kw):
    return "-".join(f"{k}={v}" for k, v in kw.items()) or "default"


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("kw", SETTINGS, ids=_kw_id)
@pytest.mark.parametrize("shape", [(2, 1, 3), (2, 17, 7)], ids=lambda s: f"B{s[0]}-T{s[1]}-C{s[2]}")
def test_fp32_matches_reference(shape, kw, masked):
    """Spikes identical (same arithmetic), membrane and gradients of x and v0 to fp32 rounding."""
    x, v0 = make(*shape)
    mask = random_mask(shape[0], shape[1]) if masked else None
    s, v, gx, gv = run(lif, x, v0, mask, backend="triton", **kw)
    s_r, v_r, gx_r, gv_r = run(lif_naive, x, v0, mask, **kw)
    assert torch.equal(s, s_r)
    assert 0 < s.sum() < s.numel() or shape[1] == 1
    torch.testing.assert_close(v, v_r, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, gx_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gv, gv_r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs(dtype):
    """bf16 / fp16 x: the same fp32 arithmetic on the rounded input, spikes and dL/dx in x's dtype."""
    x, v0 = make(2, 33, 6)
    x = x.to(dtype)
    s, v, gx, gv = run(lif, x, v0, None, backend="triton")
    s_r, v_r, gx_r, gv_r = run(lif_naive, x, v0, None)
    assert s.dtype == dtype and gx.dtype == dtype and v.dtype == torch.float32
    assert torch.equal(s, s_r)
    torch.testing.assert_close(v, v_r, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx.float(), gx_r.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gv, gv_r, rtol=1e-5, atol=1e-6)


def test_several_channel_blocks_odd_c(monkeypatch):
    monkeypatch.setattr(lt, "INTERPRET_BLOCK_C", 4)
    x, v0 = make(2, 9, 11 if DEVICE.type == "cpu" else 75)  # three channel blocks, the last partial
    mask = random_mask(2, 9)
    got = run(lif, x, v0, mask, backend="triton")
    want = run(lif_naive, x, v0, mask)
    assert torch.equal(got[0], want[0])
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unroll", [1, 3, 16])
def test_unroll_changes_no_bit(unroll):
    x, v0 = make(2, 13, 5)
    mask = random_mask(2, 13)
    base = run(lif_triton, x, v0, mask)
    other = run(lif_triton, x, v0, mask, unroll=unroll)
    for a, b in zip(base, other):
        assert torch.equal(a, b) if EXACT else torch.allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("split", [1, 7])
def test_chunked_equals_whole_with_gradients(split):
    """Two calls passing the membrane on equal one call, gradients through the passed membrane too."""
    x, v0 = make(2, 15, 4)

    def two_calls(x, v, mask=None):
        s1, v1 = lif_triton(x[:, :split], v)
        s2, v2 = lif_triton(x[:, split:], v1)
        return torch.cat([s1, s2], 1), v2

    whole = run(lif_triton, x, v0, None)
    chunked = run(two_calls, x, v0, None)
    assert torch.equal(whole[0], chunked[0])
    for a, b in zip(whole[1:], chunked[1:]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_training_saves_only_h_and_inference_nothing(monkeypatch):
    """A launch that needs a gradient writes h (fp32, one value per element) and the backward keeps
    only that (and the mask); a launch without one writes no h at all."""
    seen = []
    impl = lt._fwd_impl

    def spy(*args):
        out = impl(*args)
        seen.append(out[2])
        return out

    monkeypatch.setattr(lt, "_fwd_impl", spy)
    x, v0 = make(2, 6, 3)
    with torch.no_grad():
        lif_triton(x, v0)
    lif_triton(x, v0)  # no input needs a gradient
    s, _ = lif_triton(x.requires_grad_(), v0)
    assert seen[0].numel() == 0 and seen[1].numel() == 0
    assert seen[2].shape == x.shape and seen[2].dtype == torch.float32
    saved = [t for t in s.grad_fn.saved_tensors if t is not None]
    assert [tuple(t.shape) for t in saved] == [tuple(x.shape)]


def test_surrogates_finite_far_from_threshold():
    """Inputs far from the threshold give finite gradients (0 for the bounded surrogates)."""
    x = torch.tensor([[[-1e4], [1e4], [3.0], [-3e4]]], device=DEVICE).expand(1, 4, 2).contiguous()
    for name in ("atan", "fast_sigmoid", "sigmoid", "triangular", "straight_through"):
        _, _, gx, gv = run(lif_triton, x, torch.zeros(1, 2, device=DEVICE), None, surrogate=name, alpha=4.0)
        assert torch.isfinite(gx).all() and torch.isfinite(gv).all(), name


def test_bad_inputs_raise():
    x, v0 = make(1, 4, 3)
    with pytest.raises(ValueError, match="float64"):
        lif(x.double(), v0.double(), backend="triton")
    with pytest.raises(ValueError, match="surrogate"):
        lif_triton(x, v0, surrogate="nope")
    with pytest.raises(ValueError, match="unroll"):
        lif_triton(x, v0, unroll=0)
