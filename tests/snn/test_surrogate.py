"""Surrogate spike functions: exact step forward, backward equal to closed-form derivatives and to autograd
of the smooth primitive each one stands in for."""

import math

import pytest
import torch

from spikegpt.snn import surrogate

X = torch.linspace(-3, 3, 601, dtype=torch.float64)

# closed forms written out here, independently of the library
CLOSED_FORMS = {
    "atan": (surrogate.atan, 2.0, lambda x, a: (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)),
    "fast_sigmoid": (surrogate.fast_sigmoid, 25.0, lambda x, a: 1 / (1 + a * x.abs()) ** 2),
    "sigmoid": (surrogate.sigmoid, 4.0, lambda x, a: a * torch.exp(-a * x) / (1 + torch.exp(-a * x)) ** 2),
    "triangular": (surrogate.triangular, 2.0, lambda x, a: torch.where(x.abs() < 1 / a, a - a * a * x.abs(), 0 * x)),
}
# smooth primitives (antiderivatives), also written here
PRIMITIVES = {
    "atan": lambda x, a: torch.atan(math.pi / 2 * a * x) / math.pi,
    "fast_sigmoid": lambda x, a: x / (1 + a * x.abs()),
    "sigmoid": lambda x, a: 1 / (1 + torch.exp(-a * x)),
    "triangular": lambda x, a: torch.where(x.abs() < 1 / a, a * x - a * a * x * x.abs() / 2, torch.sign(x) / 2),
}


def _backward(fn, x):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y.sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_forward_is_exact_step_and_backward_is_closed_form(name):
    factory, a, closed = CLOSED_FORMS[name]
    fn = factory(a)
    y, g = _backward(fn, X)
    assert torch.equal(y, (X >= 0).double())
    torch.testing.assert_close(g, closed(X, a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fn.grad(X), closed(X, a), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_backward_equals_autograd_of_smooth_primitive(name):
    factory, a, _ = CLOSED_FORMS[name]
    x = X[(X.abs() - 1 / a).abs() > 1e-9]  # the triangle's kinks are not differentiable points
    xp = x.clone().requires_grad_(True)
    PRIMITIVES[name](xp, a).sum().backward()
    _, g = _backward(factory(a), x)
    torch.testing.assert_close(g, xp.grad, rtol=1e-10, atol=1e-12)
    # the library's own table of primitives agrees too
    xq = x.clone().requires_grad_(True)
    surrogate.PRIMITIVES[name](xq, a).sum().backward()
    torch.testing.assert_close(xq.grad, xp.grad, rtol=1e-10, atol=1e-12)


def test_sigmoid_is_finite_for_huge_inputs():
    x = torch.tensor([-1e6, -1e3, -100.0, 0.0, 100.0, 1e3, 1e6, float("inf"), -float("inf")])
    _, g = _backward(surrogate.sigmoid(25.0), x)
    assert torch.isfinite(g).all()
    assert g[4] == 0 and g[0] == 0 and g[3] == 25.0 / 4


def test_triangular_is_a_triangle_of_unit_area():
    a = 2.0
    g = surrogate.triangular(a).grad(X)
    assert g.max().item() == pytest.approx(a)
    assert (g[X.abs() >= 1 / a] == 0).all()
    assert torch.trapezoid(g, X).item() == pytest.approx(1.0, abs=1e-4)
    # not a constant: it decreases away from 0 on both sides
    assert g[300] > g[350] > g[390] and g[300] > g[250] > g[210]


def test_straight_through_and_custom():
    _, g = _backward(surrogate.straight_through(), X)
    assert torch.equal(g, torch.ones_like(X))
    fn = surrogate.custom(lambda x: torch.exp(-x * x))
    y, g = _backward(fn, X)
    assert torch.equal(y, (X >= 0).double())
    torch.testing.assert_close(g, torch.exp(-X * X))
    assert "custom" in repr(fn)


def test_grad_out_is_multiplied_through():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64)
    (surrogate.atan(3.0)(x) * w).sum().backward()
    torch.testing.assert_close(x.grad, w * (1.5 / (1 + (math.pi / 2 * 3.0 * x.detach()) ** 2)))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown surrogate"):
        surrogate.resolve("nope")
    with pytest.raises(ValueError, match="positive"):
        surrogate.atan(0.0)
    with pytest.raises(ValueError, match="callable"):
        surrogate.custom(3)
    with pytest.raises(ValueError, match="spike_grad"):
        surrogate.resolve(3)


def test_matches_snntorch_surrogates():
    import snntorch.surrogate as snn_sg

    x = torch.randn(200, dtype=torch.float64) * 0.3
    x = x[x != 0]
    pairs = [(surrogate.atan(2.0), snn_sg.atan(2.0)), (surrogate.fast_sigmoid(25.0), snn_sg.fast_sigmoid(25)),
             (surrogate.sigmoid(5.0), snn_sg.sigmoid(5))]
    for ours, theirs in pairs:
        y1, g1 = _backward(ours, x)
        y2, g2 = _backward(theirs, x)
        torch.testing.assert_close(y1, y2.to(y1.dtype))
        torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-9)
