"""DECOLLE: its forward is the Synaptic neuron's, its gradient is the local loss's own (inputs detached)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn.decolle import DECOLLE

ALPHA, BETA = 0.7, 0.8


def _net(conv=False, loss="mse", **kw):
    torch.manual_seed(3)
    if conv:
        layers = [nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3, stride=2), nn.Linear(2 * 2 * 2, 5)]
        net = DECOLLE(layers, 3, input_shape=(2, 6, 6), alpha=ALPHA, beta=BETA, loss=loss,
                      readout_scale=2.0, generator=torch.Generator().manual_seed(1), **kw)
    else:
        net = DECOLLE([nn.Linear(6, 9), nn.Linear(9, 7), nn.Linear(7, 5)], 3, alpha=ALPHA, beta=BETA, loss=loss,
                      readout_scale=2.0, generator=torch.Generator().manual_seed(1), **kw)
    net = net.double()
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(0.8)
        if conv:  # enough drive for the first conv layer to fire
            net.layers[0].weight.mul_(5.0)
            net.layers[0].bias.fill_(0.1)
    return net


def _input(conv, T=14, B=3):
    torch.manual_seed(4)
    shape = (B, T, 2, 6, 6) if conv else (B, T, 6)
    return (torch.rand(shape, dtype=torch.float64) < 0.4).double()


def _reference(net, x, targets, loss, burnin=0):
    """Each layer as nn.Linear / nn.Conv2d -> Synaptic neuron under autograd (BPTT through the layer), its
    input detached, its fixed readout, and its local loss at every step after ``burnin``: the mean over
    steps of the sum of the local losses, backpropagated. Returns per-layer spikes (B, T, *)."""
    B, T = x.shape[:2]
    h = x
    total = 0.0
    spikes = []
    for i, layer in enumerate(net.layers):
        h = h.detach()
        if isinstance(layer, nn.Linear):
            h = h.reshape(B, T, -1)
        cur = layer(h.reshape(B * T, *h.shape[2:]))
        cur = cur.reshape(B, T, *cur.shape[1:])
        # float64 decays: a float decay would be stored as a float32 buffer (0.7 -> 0.69999998...)
        lif = snn.Synaptic(alpha=torch.tensor(ALPHA, dtype=torch.float64), beta=torch.tensor(BETA, dtype=torch.float64),
                           spike_grad=net.spike_fn, step_mode="multi").double()
        s, _, _ = lif(cur)
        y = s.reshape(B, T, -1) @ net.readout(i).T  # (B, T, K)
        tg = targets[i] if isinstance(targets, (list, tuple)) else targets
        for t in range(burnin, T):
            tt = tg[:, t] if tg.dim() == (2 if loss == "ce" else 3) else tg
            step_loss = F.cross_entropy(y[:, t], tt) if loss == "ce" else F.mse_loss(y[:, t], tt)
            total = total + step_loss / (T - burnin)
        spikes.append(s)
        h = s
    total.backward()
    return spikes


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_decolle_forward_is_the_synaptic_neuron_and_gradient_is_the_local_loss_gradient(conv, loss):
    net = _net(conv, loss)
    x = _input(conv)
    B, T = x.shape[:2]
    torch.manual_seed(5)
    targets = torch.randint(0, 3, (B, T)) if loss == "ce" else torch.randn(B, 3, dtype=torch.float64)
    ref_spikes = _reference(net, x, targets, loss, burnin=2)
    ref = _grads(net)
    net.zero_grad(set_to_none=True)
    losses, ybar = net.accumulate(x, targets, burnin=2)
    assert len(losses) == len(net.layers) and ybar.shape == (B, 3)
    _, spikes = net(x)
    for s, r in zip(spikes, ref_spikes):
        assert torch.equal(s, r)  # the P-trace decomposition is the Synaptic neuron, spike for spike
        assert 0.05 < s.mean() < 0.95  # not vacuous: the neurons fire and stay silent
    for n, p in net.named_parameters():
        assert ref[n].abs().sum() > 0, n
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-9, atol=1e-12)


def test_decolle_no_gradient_flows_between_layers():
    net = _net()
    x = _input(False)
    B = x.shape[0]
    torch.manual_seed(6)
    tg = [torch.randn(B, 3, dtype=torch.float64) for _ in range(3)]
    net.accumulate(x, tg)
    first = _grads(net)
    net.zero_grad(set_to_none=True)
    tg2 = [tg[0], tg[1], torch.randn(B, 3, dtype=torch.float64) * 3]  # only the top layer's target changes
    net.accumulate(x, tg2)
    second = _grads(net)
    for n in first:
        if n.startswith("layers.2."):
            assert not torch.allclose(first[n], second[n]), n
        else:
            assert torch.equal(first[n], second[n]), n  # bit for bit: nothing reaches the lower layers
    # and a layer with a zero-weight local loss learns nothing, while the others are unaffected
    zero_mid = _net(loss_weights=[1.0, 0.0, 1.0])
    zero_mid.accumulate(x, tg)
    for n, p in zero_mid.named_parameters():
        if n.startswith("layers.1."):
            assert torch.count_nonzero(p.grad) == 0
        else:
            torch.testing.assert_close(p.grad, first[n], rtol=0, atol=0)


def test_decolle_step_by_step_equals_accumulate_and_state_does_not_grow():
    net = _net()
    x = _input(False, T=10)
    y = torch.tensor([0, 2, 1])
    net.accumulate(x, y)
    ref = _grads(net)
    net.zero_grad(set_to_none=True)
    state = net.init_state(3, dtype=torch.float64)
    shapes = None
    for t in range(10):
        yt, losses, state = net.step(x[:, t], y, state, scale=0.1)
        assert yt.shape == (3, 3) and losses.shape == (3,)
        now = [tuple(v.shape) for v in _tensors(state)]
        assert shapes is None or now == shapes
        shapes = now
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref[n])


def _tensors(state):
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in _tensors(s)]


def test_decolle_learns_a_toy_task():
    torch.manual_seed(9)
    net = DECOLLE([nn.Linear(4, 24), nn.Linear(24, 16)], 2, alpha=0.5, beta=0.8, loss="ce",
                  readout_scale=3.0, generator=torch.Generator().manual_seed(0))
    x = torch.rand(32, 10, 4) * 0.3
    y = torch.randint(0, 2, (32,))
    x[:, :, 0] += y[:, None] * 0.6
    x[:, :, 1] += (1 - y[:, None]) * 0.6
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    first = None
    for _ in range(30):
        opt.zero_grad()
        losses, ybar = net.accumulate(x, y)
        first = losses if first is None else first
        opt.step()
    assert losses[-1] < 0.6 * first[-1] and losses[0] < first[0]
    assert (ybar.argmax(1) == y).float().mean() > 0.9


def test_decolle_bad_input():
    with pytest.raises(ValueError, match="nn.Linear or nn.Conv2d"):
        DECOLLE([nn.ReLU()], 2)
    with pytest.raises(ValueError, match="input_shape"):
        DECOLLE([nn.Conv2d(1, 2, 3)], 2)
    with pytest.raises(ValueError, match="expects 5 inputs"):
        DECOLLE([nn.Linear(4, 6), nn.Linear(5, 2)], 2)
    with pytest.raises(ValueError, match="loss"):
        DECOLLE([nn.Linear(4, 6)], 2, loss="hinge")
    net = DECOLLE([nn.Linear(4, 6)], 2)
    with pytest.raises(ValueError, match="input_shape"):
        net.accumulate(torch.rand(2, 5, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="do not match"):
        net.accumulate(torch.rand(2, 5, 4), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="mse target"):
        net.accumulate(torch.rand(2, 5, 4), torch.rand(2, 3))
    with pytest.raises(ValueError, match="one tensor per layer"):
        net.accumulate(torch.rand(2, 5, 4), [torch.tensor([0, 1])] * 2)
    with pytest.raises(ValueError, match="burnin"):
        net.accumulate(torch.rand(2, 5, 4), torch.tensor([0, 1]), burnin=5)
