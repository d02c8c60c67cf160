"""OSTL equals BPTT for one LIF layer, drops exactly the cross-layer temporal terms for more; OSTTP's hidden
update is the DRTP rule; both learn; their state does not grow with T."""

import pytest
import torch
import torch.nn.functional as F

import spikegpt.snn as snn
from spikegpt.snn.ostl import OSTL, OSTTP, LIFStack

BETA = 0.8


def _make(sizes, output, detach_reset=True, learn_threshold=True, gain=2.5):
    torch.manual_seed(7)
    net = LIFStack(sizes, beta=BETA, detach_reset=detach_reset, learn_threshold=learn_threshold, output=output,
                   spike_grad=snn.surrogate.fast_sigmoid(slope=4.0)).double()
    with torch.no_grad():
        for fc in net.fcs:
            fc.weight.mul_(gain)
    return net


def _run(net, x, cut_above=None):
    """Our own BPTT loop over ``leaky_step`` with the net's parameters (not ``net.forward``). ``cut_above=l``:
    the LIF layers above l start each step from their membrane detached (their temporal paths cut)."""
    B, T, _ = x.shape
    h = x
    mems = []
    for i, (fc, thr) in enumerate(zip(net.fcs, net.thresholds)):
        st = snn.neurons.LeakyState(torch.zeros(B, fc.out_features, dtype=x.dtype))
        zs, vs = [], []
        for t in range(T):
            if cut_above is not None and i > cut_above:
                st = snn.neurons.LeakyState(st.mem.detach())
            z, st = snn.leaky_step(fc(h[:, t]), st, beta=BETA, threshold=thr, spike_fn=net.spike_fn,
                                   detach_reset=net.detach_reset)
            zs.append(z)
            vs.append(st.mem)
        h = torch.stack(zs, 1)
        mems.append(torch.stack(vs, 1))
    y = net.readout(h) if net.readout is not None else h
    return y, mems


def _loss(y, targets, loss):
    B, T, K = y.shape
    if loss == "ce":
        tg = targets if targets.dim() == 2 else targets[:, None].expand(B, T)
        return F.cross_entropy(y.reshape(B * T, K), tg.reshape(-1))
    return F.mse_loss(y, targets if targets.dim() == 3 else targets[:, None].expand(B, T, K))


def _bptt(net, x, targets, loss, cut_above=None):
    net.zero_grad(set_to_none=True)
    y, mems = _run(net, x, cut_above)
    L = _loss(y, targets, loss)
    L.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    return L.item(), grads, y.detach(), mems


def _targets(loss, K, B=4, T=15):
    torch.manual_seed(8)
    return torch.randint(0, K, (B, T)) if loss == "ce" else torch.randn(B, K, dtype=torch.float64)


@pytest.mark.parametrize("output", ["spikes", "linear"])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_ostl_equals_bptt_for_one_lif_layer(output, detach_reset, loss):
    sizes = [6, 4] if output == "spikes" else [6, 9, 3]
    net = _make(sizes, output, detach_reset)
    torch.manual_seed(9)
    x = torch.rand(4, 15, 6, dtype=torch.float64)
    targets = _targets(loss, sizes[-1])
    ref_loss, ref, ref_y, mems = _bptt(net, x, targets, loss)
    spikes = (mems[0] >= 1.0).double()
    assert 0.05 < spikes.mean() < 0.95  # not vacuous: the neurons fire and stay silent
    torch.testing.assert_close(net(x)[0], ref_y)  # LIFStack.forward is the same network
    got_loss, ybar = OSTL(net, loss=loss).accumulate(x, targets)
    assert got_loss == pytest.approx(ref_loss, rel=1e-12)
    torch.testing.assert_close(ybar, ref_y.mean(1))
    assert set(ref) == {n for n, p in net.named_parameters()}  # weights, biases, thresholds (and readout)
    for n, p in net.named_parameters():
        assert ref[n].abs().sum() > 0, n
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("detach_reset", [True, False])
def test_ostl_deeper_drops_only_the_cross_layer_temporal_terms(detach_reset):
    net = _make([6, 9, 7, 3], "linear", detach_reset)
    torch.manual_seed(10)
    x = torch.rand(4, 20, 6, dtype=torch.float64)
    targets = _targets("ce", 3, T=20)
    _, full, _, _ = _bptt(net, x, targets, "ce")
    _, cut, _, _ = _bptt(net, x, targets, "ce", cut_above=0)  # layer 1's membrane carried as a constant
    OSTL(net).accumulate(x, targets)
    for n, p in net.named_parameters():
        if n.startswith(("fcs.0.", "threshold0")):
            torch.testing.assert_close(p.grad, cut[n], rtol=1e-9, atol=1e-12)  # exactly what OSTL keeps
            assert not torch.allclose(p.grad, full[n])  # ... and the dropped terms matter here
            assert F.cosine_similarity(p.grad.flatten(), full[n].flatten(), dim=0) > 0.5
        else:  # the top LIF layer and the readout are exact
            torch.testing.assert_close(p.grad, full[n], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_osttp_hidden_update_is_the_drtp_rule(loss):
    net = _make([3, 4, 2], "linear", learn_threshold=False, gain=3.0)
    B, T = 2, 5
    torch.manual_seed(11)
    x = torch.rand(B, T, 3, dtype=torch.float64)
    y = torch.tensor([1, 0])
    targets = y if loss == "ce" else torch.randn(B, 2, dtype=torch.float64)
    learner = OSTTP(net, loss=loss, generator=torch.Generator().manual_seed(0))
    _, ref, _, mems = _bptt(net, x, targets, loss)
    learner.accumulate(x, targets)
    # closed form: dW = sum_t (1/T)(1/B) [(B^T target) * psi(v[t] - thr)] e[t]^T, e[t] = sum_{s<=t} beta^(t-s) x[s]
    fb = learner.feedback[0]
    assert fb.shape == (2, 4)
    tv = F.one_hot(y, 2).double() if loss == "ce" else targets
    signal = tv @ fb / (B * T)  # (B, N)
    v = mems[0].detach()  # (B, T, N)
    psi = 1.0 / (1.0 + 4.0 * (v - 1.0).abs()) ** 2  # fast_sigmoid(slope=4), written out
    assert psi.min() > 0
    gw = torch.zeros(4, 3, dtype=torch.float64)
    gb = torch.zeros(4, dtype=torch.float64)
    for t in range(T):
        e = sum(BETA ** (t - s) * x[:, s] for s in range(t + 1))  # (B, n_in)
        e_b = sum(BETA ** (t - s) for s in range(t + 1))
        gw += (signal * psi[:, t]).T @ e
        gb += (signal * psi[:, t]).sum(0) * e_b
    torch.testing.assert_close(net.fcs[0].weight.grad, gw, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(net.fcs[0].bias.grad, gb, rtol=1e-10, atol=1e-13)
    # the readout learns from its exact error
    torch.testing.assert_close(net.readout.weight.grad, ref["readout.weight"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(net.readout.bias.grad, ref["readout.bias"], rtol=1e-9, atol=1e-12)
    # no weight transport: the hidden update does not depend on the weights above
    hidden = net.fcs[0].weight.grad.clone()
    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        net.readout.weight.mul_(-3.0)
    learner.accumulate(x, targets)
    torch.testing.assert_close(net.fcs[0].weight.grad, hidden, rtol=0, atol=0)


def test_osttp_spiking_output_layer_is_exact_and_hidden_layers_use_targets():
    net = _make([6, 9, 3], "spikes", detach_reset=False)
    torch.manual_seed(12)
    x = torch.rand(4, 15, 6, dtype=torch.float64)
    targets = _targets("ce", 3)
    _, ref, _, _ = _bptt(net, x, targets, "ce")
    OSTTP(net).accumulate(x, targets)
    for n, p in net.named_parameters():
        if n.startswith(("fcs.1.", "threshold1")):
            torch.testing.assert_close(p.grad, ref[n], rtol=1e-9, atol=1e-12)
        else:
            assert p.grad.abs().sum() > 0 and not torch.allclose(p.grad, ref[n])


def _toy(seed):
    torch.manual_seed(seed)
    x = torch.rand(32, 10, 4)
    y = (x[:, :, 0].mean(1) > x[:, :, 1].mean(1)).long()
    x[:, :, 0] += y[:, None] * 0.8
    x[:, :, 1] += (1 - y[:, None]) * 0.8
    return x, y


@pytest.mark.parametrize("rule", [OSTL, OSTTP])
def test_online_rules_learn_a_toy_task(rule):
    x, y = _toy(13)
    torch.manual_seed(14)
    net = LIFStack([4, 16, 16, 2], beta=0.8, spike_grad=snn.surrogate.fast_sigmoid(slope=5.0))
    learner = rule(net)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss, ybar = learner.accumulate(x, y)
        first = loss if first is None else first
        opt.step()
    assert loss < 0.6 * first
    assert (ybar.argmax(1) == y).float().mean() > 0.9


@pytest.mark.parametrize("detach_reset", [True, False])
def test_online_state_does_not_grow_with_time(detach_reset):
    net = _make([5, 8, 6, 3], "linear", detach_reset)
    for learner in (OSTL(net), OSTTP(net)):
        st = learner.init_state(2, dtype=torch.float64)
        expected = [tuple(t.shape) for field in st for t in field]
        for T in (1, 40):
            st = learner.init_state(2, dtype=torch.float64)
            for _ in range(T):
                _, _, st = learner.step(torch.rand(2, 5, dtype=torch.float64), torch.tensor([0, 2]), st, scale=1 / T)
            assert [tuple(t.shape) for field in st for t in field] == expected
    n = 1 if detach_reset else 8
    assert expected[:2] == [(2, 8), (2, 6)]  # v
    assert expected[2:4] == [(2, n, 5), (2, 1 if detach_reset else 6, 8)]  # e_w: one trace per synapse (or input)


def test_online_bad_input():
    with pytest.raises(ValueError, match="output"):
        LIFStack([3, 2], output="membrane")
    with pytest.raises(ValueError, match="hidden"):
        LIFStack([3, 2], output="linear")
    with pytest.raises(ValueError, match="surrogate"):
        LIFStack([3, 4, 2], spike_grad=lambda v: (v >= 0).float())
    net = LIFStack([3, 4, 2])
    with pytest.raises(ValueError, match="LIFStack"):
        OSTL(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="loss"):
        OSTTP(net, loss="hinge")
    with pytest.raises(ValueError, match="n_in"):
        OSTL(net).accumulate(torch.rand(2, 5, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="do not match"):
        OSTTP(net).accumulate(torch.rand(2, 5, 3), torch.tensor([0, 1, 1]))
