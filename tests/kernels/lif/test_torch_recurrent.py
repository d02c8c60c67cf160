"""The LIF op's PyTorch path against its loop reference, and both against closed forms."""

import math

import pytest
import torch

from spikegpt.kernels import lif
from spikegpt.kernels.lif.naive import lif_naive
from spikegpt.kernels.surrogate import SURROGATES


def spike_period(x, tau=2.0, threshold=1.0):
    """Constant input x, hard reset to 0: h_n = x (1 - (1 - 1/tau)^n); first n with h_n >= threshold."""
    if x <= threshold:
        return None
    return math.ceil(math.log(1 - threshold / x) / math.log(1 - 1 / tau) - 1e-12)


@pytest.mark.parametrize("x", [1.5, 2.0, 3.0, 10.0, 0.9])
def test_constant_input_period_closed_form(x):
    T = 40
    s, _ = lif(torch.full((1, T, 1), x, dtype=torch.float64))
    n = spike_period(x)
    fired = s.flatten().nonzero().flatten().tolist()
    if n is None:
        assert fired == []
    else:
        assert fired == list(range(n - 1, T, n))


def test_soft_reset_subtracts_threshold():
    """Soft reset subtracts exactly the threshold per spike: replaying the charge equation with the op's
    own spikes, ``v_t = v_{t-1} + (x_t - v_{t-1}) / tau - threshold * s_t``, gives its final membrane."""
    x = torch.rand(2, 64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    s, v = lif(x, v_reset=None)
    # replay the membrane from the spikes alone: v_t = v_{t-1} + (x_t - v_{t-1}) / tau - s_t
    vv = torch.zeros(2, 3, dtype=torch.float64)
    for t in range(64):
        vv = vv + (x[:, t] - vv) / 2 - s[:, t]
    torch.testing.assert_close(v, vv)


SETTINGS = [
    dict(),
    dict(detach_reset=True),
    dict(v_reset=None),
    dict(v_reset=None, detach_reset=True),
    dict(v_reset=-0.2, tau=3.0, threshold=0.7),
    dict(surrogate="sigmoid", alpha=4.0),
    dict(surrogate="triangular", alpha=1.0),
    dict(surrogate="fast_sigmoid", alpha=25.0),
]


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "default")
@pytest.mark.parametrize("shape", [(2, 1, 3), (3, 29, 7), (1, 130, 5)], ids=lambda s: f"B{s[0]}-T{s[1]}-C{s[2]}")
def test_fast_path_matches_reference_fp64(shape, kw, masked):
    B, T, C = shape
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 2 + 0.5
    v00 = torch.randn(B, C, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.3 if masked else None
    gs = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    gv = torch.randn(B, C, generator=g, dtype=torch.float64)
    out = []
    fast = lambda x, v: lif(x, v, mask=mask, backend="torch", **kw)  # noqa: E731
    ref = lambda x, v: lif_naive(x, v, mask=mask, **kw)  # noqa: E731
    for fn in (fast, ref):
        x, v0 = x0.clone().requires_grad_(), v00.clone().requires_grad_()
        s, v = fn(x, v0)
        ((s * gs).sum() + (v * gv).sum()).backward()
        out.append((s, v, x.grad, v0.grad))
    for a, b, name in zip(*out, ["spikes", "membrane", "grad x", "grad v0"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
    assert set(out[0][0].unique().tolist()) <= {0.0, 1.0}


def test_reference_gradcheck_through_surrogate():
    """The reference's gradient is the surrogate chain rule: check it by finite differences of a model
    whose Heaviside is replaced by the smooth primitive of the ATan surrogate."""
    x = torch.randn(1, 6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()

    def smooth(x):  # H replaced by atan(pi/2 * a * u)/pi + 1/2, everything else as in the reference
        v, out = torch.zeros(1, 2, dtype=torch.float64), []
        for t in range(x.shape[1]):
            h = v + (x[:, t] - v) / 2
            s = torch.atan(math.pi / 2 * 2.0 * (h - 1)) / math.pi + 0.5
            v = h * (1 - s)
            out.append(s)
        return torch.stack(out, 1)

    torch.autograd.gradcheck(smooth, (x,))
    # the surrogate reference uses exactly the smooth derivative at the same h: compare one step
    x1 = x[:, :1].detach().clone().requires_grad_()
    s, _ = lif_naive(x1)
    s.sum().backward()
    x2 = x[:, :1].detach().clone().requires_grad_()
    smooth(x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("cut", [1, 17, 50])
def test_chunked_equals_whole(cut):
    x = torch.randn(2, 80, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 2
    s, v = lif(x)
    s1, v1 = lif(x[:, :cut])
    s2, v2 = lif(x[:, cut:], v1)
    torch.testing.assert_close(torch.cat([s1, s2], 1), s)
    torch.testing.assert_close(v2, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    x = (torch.randn(2, 40, 9, generator=torch.Generator().manual_seed(2)) * 2).to(dtype)
    s, v = lif(x)
    assert s.dtype == dtype and v.dtype == torch.float32
    sr, vr = lif_naive(x.double())
    torch.testing.assert_close(s.double(), sr)
    torch.testing.assert_close(v.double(), vr, rtol=1e-5, atol=1e-5)


def test_inference_saves_nothing_and_matches():
    x = torch.randn(2, 30, 4, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        s, v = lif(x)
    s2, v2 = lif(x.requires_grad_())
    assert s.grad_fn is None and s2.grad_fn is not None
    torch.testing.assert_close(s, s2.detach())
    torch.testing.assert_close(v, v2.detach())


def test_mask_holds_membrane():
    x = torch.randn(1, 25, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 2
    mask = torch.rand(1, 25, generator=torch.Generator().manual_seed(7)) > 0.4
    v0 = torch.rand(1, 3, dtype=torch.float64)
    s, v = lif(x, v0, mask=mask)
    idx = mask[0].nonzero()[:, 0]
    sc, vc = lif(x[:, idx], v0)
    torch.testing.assert_close(s[:, idx], sc)
    assert (s[:, ~mask[0]] == 0).all()
    torch.testing.assert_close(v, vc)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogate_finite_everywhere(name):
    x = torch.tensor([-float("inf"), -1e30, -3.0, 0.0, 2.0, 1e30, float("inf")])
    g = SURROGATES[name](x, 2.0)
    assert torch.isfinite(g).all() and (g >= 0).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        lif(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="v must be"):
        lif(torch.zeros(2, 3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="surrogate"):
        lif(torch.zeros(1, 2, 3), surrogate="nope")
    with pytest.raises(ValueError, match="floating"):
        lif(torch.zeros(1, 2, 3, dtype=torch.long))
