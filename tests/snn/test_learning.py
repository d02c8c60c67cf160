"""Truncated BPTT and e-prop: exact agreement with BPTT where the math coincides."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn.eprop import RSNN, EProp
from spikegpt.snn.neurons import LeakyState


class Tiny(nn.Module):
    def __init__(self, beta):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 4).double()
        self.beta = beta

    def forward(self, x, state):
        cur = self.fc(x)
        spks, mems = [], []
        for t in range(x.shape[1]):
            s, state = snn.leaky_step(cur[:, t], state, beta=self.beta, spike_fn=snn.surrogate.atan(),
                                      reset_mechanism="subtract")
            spks.append(s)
            mems.append(state.mem)
        return torch.stack(mems, 1), state


def _loss(out, target):
    return ((out - target) ** 2).sum()


def test_tbptt_with_full_window_is_bptt():
    m = Tiny(0.8)
    x = torch.rand(2, 12, 3, dtype=torch.float64) * 2
    tgt = torch.randn(2, 12, 4, dtype=torch.float64)
    out, _ = m(x, None)
    _loss(out, tgt).backward()
    ref = m.fc.weight.grad.clone()
    m.zero_grad()
    losses, state = snn.truncated_bptt(m, x, _loss, window=12, targets=tgt)
    assert len(losses) == 1 and not state.mem.requires_grad
    torch.testing.assert_close(m.fc.weight.grad, ref)


def test_tbptt_equals_manual_detached_windows():
    m = Tiny(0.8)
    x = torch.rand(2, 12, 3, dtype=torch.float64) * 2
    tgt = torch.randn(2, 12, 4, dtype=torch.float64)
    losses, _ = snn.truncated_bptt(m, x, _loss, window=5, targets=tgt)
    got = m.fc.weight.grad.clone()
    m.zero_grad()
    # reference: one graph over all steps where the membrane is detached at steps 5 and 10
    state, total = None, 0.0
    for t0 in (0, 5, 10):
        out, state = m(x[:, t0 : t0 + 5], state)
        total = total + _loss(out, tgt[:, t0 : t0 + 5])
        state = LeakyState(state.mem.detach())
    total.backward()
    torch.testing.assert_close(got, m.fc.weight.grad)
    assert len(losses) == 3 and sum(losses) == pytest.approx(total.item())


def test_tbptt_is_exact_for_a_memoryless_network_and_steps_optimizer():
    # beta = 0 and no reset: nothing crosses a window boundary, so truncation loses nothing
    class NoMemory(Tiny):
        def forward(self, x, state):
            cur = self.fc(x)
            return cur * 2.0, state

    m = NoMemory(0.0)
    x = torch.rand(2, 12, 3, dtype=torch.float64)
    tgt = torch.randn(2, 12, 4, dtype=torch.float64)
    _loss(m(x, None)[0], tgt).backward()
    ref = m.fc.weight.grad.clone()
    m.zero_grad()
    snn.truncated_bptt(m, x, _loss, window=4, targets=tgt)
    torch.testing.assert_close(m.fc.weight.grad, ref)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    before = m.fc.weight.detach().clone()
    losses, _ = snn.truncated_bptt(m, x, _loss, window=4, targets=tgt, optimizer=opt)
    assert len(losses) == 3 and not torch.equal(before, m.fc.weight) and m.fc.weight.grad is None


def test_tbptt_bad_window():
    with pytest.raises(ValueError, match="window"):
        snn.truncated_bptt(Tiny(0.5), torch.zeros(1, 4, 3), _loss, window=0)


def _bptt_grads(net, x, targets, loss):
    net.zero_grad(set_to_none=True)
    y, _ = net(x)
    B, T, K = y.shape
    if loss == "ce":
        tg = targets if targets.dim() == 2 else targets[:, None].expand(B, T)
        L = F.cross_entropy(y.reshape(B * T, K), tg.reshape(-1))
    else:
        L = F.mse_loss(y, targets if targets.dim() == 3 else targets[:, None].expand(B, T, K))
    L.backward()
    return L.item(), {n: p.grad.clone() for n, p in net.named_parameters()}


def _make(**kw):
    torch.manual_seed(7)
    net = RSNN(6, 9, 3, beta=0.85, **kw).double()
    with torch.no_grad():
        net.w_in.mul_(2.5)
    return net


@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("kappa", [0.0, 0.6])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_eprop_equals_bptt_without_recurrence(detach_reset, kappa, loss):
    net = _make(kappa=kappa, detach_reset=detach_reset, recurrent=False)
    assert net.w_rec is None
    torch.manual_seed(8)
    x = torch.rand(4, 15, 6, dtype=torch.float64)
    targets = torch.randint(0, 3, (4, 15)) if loss == "ce" else torch.randn(4, 3, dtype=torch.float64)
    ref_loss, ref = _bptt_grads(net, x, targets, loss)
    net.zero_grad(set_to_none=True)
    got_loss, _ = EProp(net, loss=loss).accumulate(x, targets)
    assert got_loss == pytest.approx(ref_loss, rel=1e-12)
    spikes = net(x)[1]
    assert 0.05 < spikes.mean() < 0.95  # the comparison is not vacuous: neurons fire and stay silent
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-9, atol=1e-12)


def test_eprop_with_zero_recurrent_weights_equals_bptt_including_w_rec():
    net = _make(kappa=0.3)
    x = torch.rand(3, 10, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (3,))
    _, ref = _bptt_grads(net, x, y, "ce")
    net.zero_grad(set_to_none=True)
    EProp(net).accumulate(x, y)
    assert ref["w_rec"].abs().sum() > 0
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-9, atol=1e-12)


def test_eprop_with_recurrence_is_an_approximation():
    net = _make(kappa=0.3)
    with torch.no_grad():
        net.w_rec.copy_(torch.randn(9, 9, dtype=torch.float64) * 0.8)
    x = torch.rand(3, 20, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (3,))
    _, ref = _bptt_grads(net, x, y, "ce")
    net.zero_grad(set_to_none=True)
    EProp(net).accumulate(x, y)
    g, r = net.w_in.grad.flatten(), ref["w_in"].flatten()
    assert not torch.allclose(g, r)  # the dropped cross-neuron credit matters here ...
    assert F.cosine_similarity(g, r, dim=0) > 0.3  # ... but the update still points the same way
    # the readout gradient needs no approximation
    torch.testing.assert_close(net.readout.weight.grad, ref["readout.weight"])


def test_eprop_memory_does_not_grow_with_time():
    net = _make()
    e = EProp(net)
    st = e.init_state(2, dtype=torch.float64)
    sizes = []
    for _ in range(30):
        _, _, st = e.step(torch.rand(2, 6, dtype=torch.float64), torch.tensor([0, 1]), st, scale=1 / 30)
        sizes.append(sum(v.numel() for v in st if isinstance(v, torch.Tensor)))
    assert len(set(sizes)) == 1


def test_eprop_random_feedback_learns_and_bad_input():
    torch.manual_seed(9)
    net = RSNN(4, 16, 2, beta=0.8, kappa=0.5)
    x = torch.rand(32, 10, 4)
    y = (x[:, :, 0].mean(1) > x[:, :, 1].mean(1)).long()
    x[:, :, 0] += y[:, None] * 0.8
    x[:, :, 1] += (1 - y[:, None]) * 0.8
    e = EProp(net, feedback="random", generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss, _ = e.accumulate(x, y)
        first = loss if first is None else first
        opt.step()
    assert loss < 0.6 * first
    with pytest.raises(ValueError, match="feedback"):
        EProp(net, feedback="transpose")
    with pytest.raises(ValueError, match="n_in"):
        e.accumulate(torch.rand(2, 3, 5), torch.tensor([0, 1]))
