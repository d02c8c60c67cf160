"""STDP: the classical exponential window for single pairs, all-to-all sums against a pairwise reference,
bounds, and the module writing its update into .grad."""

import math

import pytest
import torch
from torch import nn

from spikegpt.snn.stdp import STDP, stdp_step


def run(pre, post, **kw):
    """pre (T, N_pre), post (T, N_post) spike trains of one sample -> summed dW."""
    state, total = None, 0
    for t in range(pre.shape[0]):
        dw, state = stdp_step(pre[t][None], post[t][None], state, **kw)
        total = total + dw
    return total


def train(T, times):
    s = torch.zeros(T, 1, dtype=torch.float64)
    for t in times:
        s[t, 0] = 1
    return s


@pytest.mark.parametrize("dt", [1, 3, 10, -1, -4, -12, 0])
def test_single_pair_follows_exponential_window(dt):
    tau_pre, tau_post, ap, am = 8.0, 12.0, 0.02, 0.03
    t_pre = 20
    dw = run(train(40, [t_pre]), train(40, [t_pre + dt]), tau_pre=tau_pre, tau_post=tau_post, a_plus=ap, a_minus=am)
    if dt > 0:  # pre before post: potentiation
        expected = ap * math.exp(-dt / tau_pre)
        assert dw.item() > 0
    elif dt < 0:
        expected = -am * math.exp(dt / tau_post)
        assert dw.item() < 0
    else:
        expected = 0.0
    assert dw.item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_all_to_all_sum_matches_pairwise_reference():
    torch.manual_seed(0)
    T, npre, npost = 60, 5, 4
    pre = (torch.rand(T, npre) < 0.15).double()
    post = (torch.rand(T, npost) < 0.15).double()
    kw = dict(tau_pre=6.0, tau_post=9.0, a_plus=0.01, a_minus=0.015)
    got = run(pre, post, **kw)
    ref = torch.zeros(npost, npre, dtype=torch.float64)
    for i in range(npost):
        for j in range(npre):
            for tp in torch.nonzero(pre[:, j]).flatten().tolist():
                for tq in torch.nonzero(post[:, i]).flatten().tolist():
                    d = tq - tp
                    if d > 0:
                        ref[i, j] += kw["a_plus"] * math.exp(-d / kw["tau_pre"])
                    elif d < 0:
                        ref[i, j] -= kw["a_minus"] * math.exp(d / kw["tau_post"])
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-14)


def test_batch_is_averaged():
    pre = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    st = None
    _, st = stdp_step(pre, torch.zeros(2, 1, dtype=torch.float64), st)
    dw, _ = stdp_step(torch.zeros(2, 1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64), st,
                      tau_pre=5.0, a_plus=0.1)
    assert dw.item() == pytest.approx(0.1 * math.exp(-1 / 5) / 2)


def test_bounds():
    torch.manual_seed(1)
    T = 400
    pre = (torch.rand(T, 1, 6) < 0.3).double()
    post = torch.roll(pre[:, :, :4], 1, dims=0)  # post follows pre by one step: strong potentiation
    for bounds in ("hard", "soft"):
        w = torch.full((4, 6), 0.5, dtype=torch.float64)
        st = None
        for t in range(T):
            dw, st = stdp_step(pre[t], post[t], st, a_plus=0.05, a_minus=0.01, weight=w, bounds=bounds,
                               w_min=0.0, w_max=1.0)
            w = w + dw
            assert w.min() >= 0.0 and w.max() <= 1.0 + 1e-12
        assert w.max() > 0.9  # it did move towards the upper bound
        if bounds == "hard":
            assert (w == 1.0).any()
        else:
            assert (w < 1.0).all()  # soft bounds approach but never reach
    # soft bounds: potentiation scales with (w_max - w)
    pre1, post1 = torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    _, st = stdp_step(pre1, 0 * post1)
    d_lo, _ = stdp_step(0 * pre1, post1, st, weight=torch.tensor([[0.2]], dtype=torch.float64), bounds="soft")
    d_hi, _ = stdp_step(0 * pre1, post1, st, weight=torch.tensor([[0.8]], dtype=torch.float64), bounds="soft")
    assert d_lo.item() / d_hi.item() == pytest.approx(0.8 / 0.2)


def test_module_writes_grad_and_sgd_reproduces_functional():
    torch.manual_seed(2)
    layer = nn.Linear(5, 3, bias=False).double()
    with torch.no_grad():
        layer.weight.uniform_(0.2, 0.8)
    w0 = layer.weight.detach().clone()
    pre = (torch.rand(30, 2, 5) < 0.3).double()
    post = (torch.rand(30, 2, 3) < 0.3).double()
    kw = dict(tau_pre=5.0, tau_post=5.0, a_plus=0.05, a_minus=0.04, bounds="hard", w_min=0.0, w_max=1.0)
    rule = STDP(layer, **kw)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    w, st = w0.clone(), None
    for t in range(30):
        opt.zero_grad()
        dw = rule(pre[t], post[t])
        torch.testing.assert_close(layer.weight.grad, -dw)
        opt.step()
        ref, st = stdp_step(pre[t], post[t], st, weight=w, **kw)
        w = w + ref
        torch.testing.assert_close(layer.weight.detach(), w)
    # accumulating several steps before one optimizer step sees the pending weight
    rule.reset()
    layer.weight.grad = None
    for t in range(5):
        rule(pre[t], post[t])
    opt.step()
    assert layer.weight.min() >= 0 and layer.weight.max() <= 1


def test_bad_input():
    with pytest.raises(ValueError, match="needs the current weight"):
        stdp_step(torch.zeros(1, 2), torch.zeros(1, 3), bounds="hard")
    with pytest.raises(ValueError, match="bounds"):
        STDP(nn.Linear(2, 2), bounds="elastic")
    with pytest.raises(ValueError, match="same B"):
        stdp_step(torch.zeros(2, 2), torch.zeros(3, 3))
