"""EventProp: the exact event forward against closed forms and a fine-grid Euler simulation; the adjoint
gradient against central finite differences of the exact forward (float64); the first-spike loss; bad input."""

import math

import numpy as np
import pytest
import torch

from spikegpt.snn import spikegen
from spikegpt.snn.eventprop import (
    EventPropNet,
    event_forward,
    eventprop_lif,
    first_spike_times,
    latency_times,
    membrane_potential,
    ttfs_accuracy,
    ttfs_loss,
)

D = torch.float64


def quad_spike(w_cur, theta=1.0):
    """tau_mem = 2 tau_syn, V(0) = 0, I(0) = w_cur: V(s) = w_cur (x - x^2), x = e^{-s/tau_mem}. The earliest
    crossing is the larger root of w x^2 - w x + theta = 0 (None when the peak w/4 stays below theta)."""
    disc = 1 - 4 * theta / w_cur
    return None if disc < 0 else (1 + math.sqrt(disc)) / 2


def test_single_neuron_spike_times_match_the_closed_form_quadratic():
    tm, ts, th, t0 = 10.0, 5.0, 1.0, 2.0
    for w in (4.5, 6.0, 40.0):
        (t_spk, i_spk), = event_forward(torch.tensor([[t0]], dtype=D), [torch.tensor([[w]], dtype=D)],
                                        tau_mem=tm, tau_syn=ts, threshold=th, t_max=200.0)
        # Reference, spike by spike: after a reset at t_r the neuron restarts from V = 0 with the
        # current I(t_r) = w e^{-(t_r - t0)/tau_syn}, the same quadratic again.
        ref, t_r, cur = [], t0, w
        while (x := quad_spike(cur, th)) is not None:
            t_r = t_r - tm * math.log(x)
            ref.append(t_r)
            cur = w * math.exp(-(t_r - t0) / ts)
        got = t_spk[0, 0][torch.isfinite(t_spk[0, 0])].tolist()
        assert len(got) == len(ref) and len(ref) >= 1, (w, got, ref)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-11)
        np.testing.assert_allclose(i_spk[0, 0, : len(ref)].tolist(),
                                   [w * math.exp(-(t - t0) / ts) for t in ref], rtol=1e-11)
    assert len(ref) >= 2  # w = 40 fires repeatedly: the reset is exercised
    # below the peak w / 4 = theta nothing fires
    (t_spk, _), = event_forward(torch.tensor([[t0]], dtype=D), [torch.tensor([[3.99]], dtype=D)],
                                tau_mem=tm, tau_syn=ts, t_max=200.0)
    assert t_spk.shape[-1] == 0


def test_membrane_potential_is_the_closed_form_kernel():
    tm, ts, w, t0 = 10.0, 5.0, 3.0, 1.0  # subthreshold: no reset
    t = torch.linspace(0, 30, 61, dtype=D)
    v, cur = membrane_potential(torch.tensor([[t0]], dtype=D), torch.tensor([[w]], dtype=D),
                                torch.full((1, 1, 0), math.inf, dtype=D), t, tau_mem=tm, tau_syn=ts)
    x = torch.exp(-(t - t0).clamp(min=0) / tm)
    ref_v = torch.where(t >= t0, w * (x - x**2), torch.zeros_like(t))
    ref_i = torch.where(t >= t0, w * x**2, torch.zeros_like(t))
    torch.testing.assert_close(v[0, 0], ref_v, atol=1e-12, rtol=0)
    torch.testing.assert_close(cur[0, 0], ref_i, atol=1e-12, rtol=0)


def random_net(seed, B=2, n_in=3, n_h=4, n_out=2, t_in=20.0, scale=1.0):
    """Input times uniform in [0, t_in], weights ~ scale * N(2.5 or 3, 2^2) (enough drive to fire)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, n_in, generator=g, dtype=D) * t_in
    w1 = (torch.randn(n_h, n_in, generator=g, dtype=D) * 2 + 2.5) * scale
    w2 = (torch.randn(n_out, n_h, generator=g, dtype=D) * 2 + 3.0) * scale
    return x, w1, w2


def euler_layer(times, w, tm, ts, th, T, dt):
    """Forward Euler on a grid (numpy), input spikes binned to the step they fall in; returns lists of
    spike times per (b, n)."""
    B, N = len(times), w.shape[0]
    steps = int(round(T / dt))
    bins = [[] for _ in range(steps)]
    for b in range(B):
        for j, ts_j in enumerate(times[b]):
            for t in ts_j:
                if math.isfinite(t) and t < T:
                    bins[int(t / dt)].append((b, j))
    v, cur = np.zeros((B, N)), np.zeros((B, N))
    out = [[[] for _ in range(N)] for _ in range(B)]
    for k in range(steps):
        for b, j in bins[k]:
            cur[b] += w[:, j]
        v += dt * (cur - v) / tm
        cur -= dt * cur / ts
        for b, n in zip(*np.nonzero(v >= th)):
            out[b][n].append((k + 1) * dt)
        v[v >= th] = 0.0
    return out


def test_event_forward_matches_fine_grid_euler():
    """Same spikes as forward Euler, and the gap shrinks with the grid step (first order): the event times
    are the limit of the grid simulation, not off by a fixed amount."""
    tm, ts, th, T = 20.0, 5.0, 1.0, 40.0  # tau_mem = 4 tau_syn: the general root finder
    x, w1, w2 = random_net(1, B=2, n_in=5, n_h=4, n_out=3)
    layers = event_forward(x, [w1, w2], tau_mem=tm, tau_syn=ts, threshold=th, t_max=T)
    errors = []
    for dt in (2e-3, 1e-3):
        pre = [[[t] for t in row] for row in x.tolist()]
        err, n_spikes = 0.0, 0
        for (t_ev, _), w in zip(layers, (w1, w2)):
            ref = euler_layer(pre, w.numpy(), tm, ts, th, T, dt)
            for b in range(t_ev.shape[0]):
                for n in range(t_ev.shape[1]):
                    got = [t for t in t_ev[b, n].tolist() if math.isfinite(t)]
                    assert len(got) == len(ref[b][n]), (dt, b, n, got, ref[b][n])
                    err = max([err] + [abs(u - v) for u, v in zip(got, ref[b][n])])
                    n_spikes += len(got)
            pre = ref  # the next Euler layer runs on Euler's own spikes
        errors.append(err)
    assert n_spikes >= 10
    assert max(t.shape[-1] for t, _ in layers) >= 2  # some neuron fires more than once
    assert errors[1] < 0.02 and errors[1] < 0.7 * errors[0], errors


@pytest.mark.parametrize("tm,ts", [(20.0, 5.0), (10.0, 5.0), (4.0, 8.0)])
def test_voltage_reaches_threshold_at_spikes_and_never_exceeds_it(tm, ts):
    x, w1, w2 = random_net(2, B=3, n_in=5, n_h=6, n_out=2, scale=1.0 if tm > ts else 0.4)
    T = 60.0
    (h, _), (o, _) = event_forward(x, [w1, w2], tau_mem=tm, tau_syn=ts, t_max=T)
    assert torch.isfinite(h).sum() >= 5
    grid = torch.linspace(0, T, 6001, dtype=D)
    for inp, w, spk in ((x, w1, h), (h, w2, o)):
        v, _ = membrane_potential(inp, w, spk, grid, tau_mem=tm, tau_syn=ts)
        assert v.max() <= 1.0 + 1e-9  # no crossing was missed
        fired = torch.isfinite(spk)
        q = torch.where(fired, spk - 1e-9, torch.zeros_like(spk)).reshape(spk.shape[0], -1)
        v_at, _ = membrane_potential(inp, w, spk, q, tau_mem=tm, tau_syn=ts)
        idx = torch.arange(spk.shape[1] * spk.shape[2]).view(spk.shape[1], spk.shape[2])
        v_own = torch.stack([v_at[:, n, idx[n]] for n in range(spk.shape[1])], 1)
        torch.testing.assert_close(v_own[fired], torch.ones_like(v_own[fired]), atol=1e-7, rtol=0)


def spike_time_loss(out, coefs, targets, t_max):
    """A smooth loss of every spike time (random linear weights) plus the first-spike cross-entropy."""
    tot = ttfs_loss(first_spike_times(out[-1], t_max), targets, tau0=2.0, tau1=10.0, alpha=0.1)
    for o, c in zip(out, coefs):
        fired = torch.isfinite(o)
        tot = tot + (torch.where(fired, o, torch.zeros_like(o)) * c[..., : o.shape[-1]]).sum()
    return tot


@pytest.mark.parametrize("seed,tm,ts", [(0, 20.0, 5.0), (1, 20.0, 5.0), (2, 10.0, 5.0), (3, 5.0, 10.0)])
def test_eventprop_gradient_matches_central_finite_differences(seed, tm, ts):
    kw = dict(tau_mem=tm, tau_syn=ts, threshold=1.0, t_max=60.0)
    x, w1, w2 = random_net(seed, B=3, n_in=3, n_h=4, n_out=2, scale=1.0 if tm > ts else 0.4)
    g = torch.Generator().manual_seed(100 + seed)
    coefs = [torch.randn(3, 4, 30, generator=g, dtype=D), torch.randn(3, 2, 30, generator=g, dtype=D)]
    targets = torch.tensor([0, 1, 1])
    params = [x.clone().requires_grad_(), w1.clone().requires_grad_(), w2.clone().requires_grad_()]
    out = eventprop_lif(params[0], params[1:], **kw)
    counts = [int(torch.isfinite(o).sum()) for o in out]
    assert counts[0] >= 4 and counts[1] >= 2, counts
    spike_time_loss(out, coefs, targets, kw["t_max"]).backward()
    h, checked = 1e-6, 0
    for k, p in enumerate(params):
        for i in range(p.numel()):
            vals = []
            for sgn in (1, -1):
                q = [a.detach().clone() for a in params]
                q[k].view(-1)[i] += sgn * h
                o = eventprop_lif(q[0], q[1:], **kw)
                if [int(torch.isfinite(a).sum()) for a in o] != counts:
                    break  # a spike appears or disappears inside the step: not differentiable here
                vals.append(spike_time_loss(o, coefs, targets, kw["t_max"]).item())
            if len(vals) < 2 or not math.isfinite(p.view(-1)[i].item()):
                continue
            fd = (vals[0] - vals[1]) / (2 * h)
            assert abs(fd - p.grad.view(-1)[i].item()) <= 1e-6 * (1 + abs(fd)), (k, i, fd, p.grad.view(-1)[i])
            checked += 1
    assert checked >= 0.9 * sum(p.numel() for p in params)
    assert params[1].grad.abs().sum() > 0 and params[2].grad.abs().sum() > 0


def test_multi_spike_inputs_equal_split_channels_and_caps_are_exact_for_first_spikes():
    kw = dict(tau_mem=20.0, tau_syn=5.0, t_max=60.0)
    x, w1, w2 = random_net(4, B=2, n_in=3, n_h=5, n_out=2)
    # one channel with two spikes == two channels with one spike each and the same weight column
    multi = torch.stack([x, torch.full_like(x, math.inf)], -1)
    multi[:, 0, 1] = x[:, 0] + 3.0
    split = torch.cat([x, x[:, :1] + 3.0], 1)
    w1s = torch.cat([w1, w1[:, :1]], 1)
    a = eventprop_lif(multi, [w1, w2], **kw)
    b = eventprop_lif(split, [w1s, w2], **kw)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)
    # (B, N) equals (B, N, 1); inputs at or after t_max are ignored
    late = torch.cat([x, torch.full((2, 1), 70.0, dtype=D)], 1)
    c = eventprop_lif(late, [torch.cat([w1, torch.ones(5, 1, dtype=D)], 1), w2], **kw)
    for u, v in zip(eventprop_lif(x.unsqueeze(-1), [w1, w2], **kw), c):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)
    # capping the output at one spike keeps the first spikes and their gradient
    grads = []
    for cap in (None, (None, 1)):
        ws = [w1.clone().requires_grad_(), w2.clone().requires_grad_()]
        out = eventprop_lif(x, ws, **kw, max_spikes=cap)
        first = first_spike_times(out[-1], kw["t_max"])
        (first * torch.tensor([1.0, -2.0], dtype=D)).sum().backward()
        grads.append((first.detach(), out[-1].shape[-1], [w.grad for w in ws]))
    assert grads[0][1] >= 2 and grads[1][1] == 1
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-12)
    for g0, g1 in zip(grads[0][2], grads[1][2]):
        torch.testing.assert_close(g0, g1, rtol=1e-10, atol=1e-12)


def test_ttfs_loss_and_silent_neurons():
    t = torch.tensor([[3.0, 5.0, 9.0], [2.0, 1.0, 4.0]], dtype=D, requires_grad=True)
    y = torch.tensor([1, 0])
    tau0, tau1, alpha = 2.0, 8.0, 0.3
    ref = 0.0
    for b in range(2):
        z = [-v / tau0 for v in t[b].tolist()]
        ref += -(z[y[b]] - math.log(sum(math.exp(v) for v in z))) + alpha * (math.exp(t[b, y[b]].item() / tau1) - 1)
    loss = ttfs_loss(t, y, tau0=tau0, tau1=tau1, alpha=alpha)
    assert abs(loss.item() - ref / 2) < 1e-12
    assert ttfs_loss(t, y, tau0=tau0, reduction="none").shape == (2,)
    assert ttfs_accuracy(t, y) == 0.0 and ttfs_accuracy(t, torch.tensor([0, 1])) == 1.0
    # silent neurons read as t_max with zero gradient
    spk = torch.tensor([[[4.0, math.inf], [math.inf, math.inf]]], dtype=D, requires_grad=True)
    first = first_spike_times(spk, 50.0)
    assert first.tolist() == [[4.0, 50.0]]
    first.sum().backward()
    assert spk.grad.tolist() == [[[1.0, 0.0], [0.0, 0.0]]]
    # nothing fired at all: still attached to the graph
    empty = torch.zeros(2, 3, 0, dtype=D, requires_grad=True)
    e = first_spike_times(empty, 7.0)
    assert e.requires_grad and e.tolist() == [[7.0] * 3] * 2


def test_latency_times_match_spikegen_latency_steps():
    x = torch.rand(4, 10, generator=torch.Generator().manual_seed(0), dtype=D)
    x[0, :3] = 0.0
    steps = 25
    t = latency_times(x, t_max=steps - 1)
    dec = spikegen.latency_decode(spikegen.latency(x, steps))  # step of the spike, steps if none
    fired = torch.isfinite(t)
    assert torch.equal(fired, dec < steps)
    torch.testing.assert_close(torch.round(t[fired]), dec[fired].to(D))


def test_eventprop_net_module_matches_the_functional_form():
    net = EventPropNet((3, 4, 2), tau_mem=20.0, tau_syn=5.0, t_max=60.0, init_mean=(4.0, 5.0), init_std=2.0,
                       generator=torch.Generator().manual_seed(0), dtype=D)
    x, _, _ = random_net(0)
    first = first_spike_times(net(x)[-1], net.t_max)
    ttfs_loss(first, torch.tensor([0, 1]), tau0=2.0).backward()
    ws = [w.detach().clone().requires_grad_() for w in net.weights]
    first2 = first_spike_times(eventprop_lif(x, ws, tau_mem=20.0, tau_syn=5.0, t_max=60.0)[-1], 60.0)
    ttfs_loss(first2, torch.tensor([0, 1]), tau0=2.0).backward()
    torch.testing.assert_close(first, first2)
    for p, w in zip(net.weights, ws):
        torch.testing.assert_close(p.grad, w.grad)
    assert first.lt(60.0).any()


def test_bad_input_raises_clear_errors():
    x, w1, w2 = random_net(0)
    ok = dict(tau_mem=20.0, tau_syn=5.0, t_max=60.0)
    cases = [
        ((x[0], [w1, w2], ok), "shape"),
        ((x.unsqueeze(-1).unsqueeze(-1), [w1, w2], ok), "shape"),
        ((x.long(), [w1, w2], ok), "float32 or float64"),
        ((x.float(), [w1, w2], ok), "dtype"),
        ((-x, [w1, w2], ok), ">= 0"),
        ((torch.full_like(x, math.nan), [w1, w2], ok), "NaN"),
        ((x, [w1.T, w2], ok), "shape"),
        ((x, [w1, w2.T], ok), "shape"),
        ((x, [w1, w2[0]], ok), "2-D"),
        ((x, [], ok), "at least one"),
        ((x, [w1, w2], {**ok, "tau_syn": 20.0}), "differ"),
        ((x, [w1, w2], {**ok, "threshold": -1.0}), "threshold"),
        ((x.float(), [w1.float(), w2.float()], {**ok, "t_max": 1000.0}), "overflow"),
        ((x, [w1, w2], {**ok, "max_spikes": 0}), "max_spikes"),
        ((x, [w1, w2], {**ok, "max_spikes": (1, 2, 3)}), "max_spikes"),
    ]
    for (inp, ws, kw), msg in cases:
        with pytest.raises(ValueError, match=msg):
            eventprop_lif(inp, ws, **kw)
    with pytest.raises(ValueError, match="targets"):
        ttfs_loss(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), tau0=1.0)
    with pytest.raises(ValueError, match="targets"):
        ttfs_loss(torch.zeros(2, 3), torch.tensor([0, 3]), tau0=1.0)
    with pytest.raises(ValueError, match=r"\(B, K, S\)"):
        first_spike_times(torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="sizes"):
        EventPropNet((3,))
