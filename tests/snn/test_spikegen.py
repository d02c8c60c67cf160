"""Spike codes: encoder statistics and closed forms, decoders inverting them, targets."""

import math

import pytest
import torch

from spikegpt.snn import spikegen


def test_rate_statistics():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.0, 0.1, 0.5, 0.9, 1.0, 1.7]])
    spk = spikegen.rate(p.expand(200, -1), num_steps=100, generator=g)
    assert spk.shape == (200, 100, 6)
    assert set(spk.unique().tolist()) <= {0.0, 1.0}
    est = spikegen.rate_decode(spk).mean(0)  # 20 000 Bernoulli draws per feature
    target = p[0].clamp(0, 1)
    sd = (target * (1 - target) / 20000).sqrt()
    assert ((est - target).abs() <= 5 * sd + 1e-12).all()
    assert est[0] == 0 and est[4] == 1 and est[5] == 1
    # gain scales the probability
    est2 = spikegen.rate_decode(spikegen.rate(torch.full((100, 1), 0.4), 100, gain=0.5, generator=g)).mean()
    assert abs(est2.item() - 0.2) < 5 * math.sqrt(0.2 * 0.8 / 10000)


def test_latency_linear_closed_form_and_decode():
    x = torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0, 0.005]])
    spk = spikegen.latency(x, num_steps=9)
    assert spk.sum(1).tolist() == [[1, 1, 1, 1, 0, 0]]  # at most one spike; at/below threshold: none
    times = spikegen.latency_decode(spk)
    assert times.tolist() == [[0.0, 2.0, 4.0, 6.0, 9.0, 9.0]]  # round((1 - x) * 8); T when silent


def test_latency_log_is_rc_charging_time():
    tau, thr = 5.0, 0.2
    x = torch.tensor([[0.3, 0.5, 0.9, 1.0]])
    spk = spikegen.latency(x, num_steps=50, method="log", tau=tau, threshold=thr)
    expected = [round(tau * math.log(v / (v - thr))) for v in x[0].tolist()]
    assert spikegen.latency_decode(spk)[0].tolist() == expected
    # the same time from simulating an RC membrane: U(t) = x (1 - exp(-t/tau)) first reaches thr
    for v, t in zip(x[0].tolist(), expected):
        t_exact = -tau * math.log(1 - thr / v)
        assert abs(t - t_exact) <= 0.5
    # normalize stretches the latest spike onto the last step; clip keeps late spikes
    spk_n = spikegen.latency(x, num_steps=20, method="log", tau=tau, threshold=thr, normalize=True)
    assert spikegen.latency_decode(spk_n).max().item() == 19
    late = spikegen.latency(x, num_steps=3, method="log", tau=tau, threshold=thr)
    assert late[0, :, 0].sum() == 0
    clipped = spikegen.latency(x, num_steps=3, method="log", tau=tau, threshold=thr, clip=True)
    assert clipped[0, 2, 0] == 1


def test_delta_roundtrip_error_is_bounded():
    torch.manual_seed(0)
    thr = 0.1
    steps = torch.rand(4, 200, 3) * 0.2 - 0.1  # |change per step| <= thr
    signal = torch.cumsum(steps, 1).double()
    spk = spikegen.delta(signal, threshold=thr)
    assert set(spk.unique().tolist()) <= {-1.0, 0.0, 1.0}
    rec = spikegen.delta_decode(spk, thr, initial=signal[:, 0])
    assert (rec - signal).abs().max() < thr + 1e-9
    on_only = spikegen.delta(signal, threshold=thr, off_spike=False)
    assert (on_only >= 0).all()
    # without OFF spikes the reference follows the running maximum from below
    runmax = torch.cummax(signal, 1).values
    gap = runmax - spikegen.delta_decode(on_only, thr, initial=signal[:, 0])
    assert gap.min() > -1e-9 and gap.max() < thr + 1e-9
    # a step up by 3.5 thresholds gives ON spikes on consecutive steps until the reference catches up
    sig = torch.tensor([[0.0, 0.35, 0.35, 0.35, 0.35]]).double()
    assert spikegen.delta(sig, 0.1).tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]


def test_rate_and_latency_targets():
    y = torch.tensor([2, 0])
    tr = spikegen.rate_targets(y, 3, num_steps=10, on_rate=0.5, off_rate=0.2)
    assert tr.shape == (2, 10, 3)
    assert tr.sum(1).tolist() == [[2, 2, 5], [5, 2, 2]]
    assert torch.equal(spikegen.rate_decode(tr), torch.tensor([[0.2, 0.2, 0.5], [0.5, 0.2, 0.2]]))
    lt = spikegen.latency_targets(y, 3, num_steps=10, on_time=1)
    assert lt.tolist() == [[9, 9, 1], [1, 9, 9]]


def test_bad_input():
    with pytest.raises(ValueError, match="num_steps"):
        spikegen.rate(torch.rand(2, 3), 0)
    with pytest.raises(ValueError, match="method"):
        spikegen.latency(torch.rand(2, 3), 5, method="cubic")
    with pytest.raises(ValueError, match="threshold"):
        spikegen.delta(torch.rand(2, 3, 4), threshold=0)
    with pytest.raises(ValueError, match="targets must lie"):
        spikegen.to_one_hot(torch.tensor([3]), 3)
    with pytest.raises(ValueError, match="on_rate"):
        spikegen.rate_targets(torch.tensor([0]), 2, 5, on_rate=1.5)
