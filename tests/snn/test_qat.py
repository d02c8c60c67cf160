"""Fake quantisation: rounding bounds, ternary/binary closed forms, straight-through gradients, quantised
layers equal to integer arithmetic on spikes, and a quantised membrane equal to an integer simulation."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn.qat import FakeQuantize, QuantLinear, fake_quantize, quantize, quantize_model_, state_quant


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dim", [None, 0])
def test_uniform_rounding_error_and_range(bits, dim):
    torch.manual_seed(0)
    x = torch.randn(6, 10, dtype=torch.float64) * torch.linspace(0.1, 3, 6, dtype=torch.float64)[:, None]
    q, s = quantize(x, bits, dim=dim)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int32 and q.abs().max() <= qmax
    ref_s = (x.abs().amax() if dim is None else x.abs().amax(1, keepdim=True)) / qmax
    torch.testing.assert_close(s, ref_s if dim is not None else ref_s.reshape(1, 1))
    assert ((x - s * q).abs() <= s / 2 + 1e-12).all()
    fq = fake_quantize(x, bits, dim=dim)
    torch.testing.assert_close(fq, s * q)
    torch.testing.assert_close(fake_quantize(fq, bits, dim=dim), fq)  # idempotent


def test_ternary_and_binary_closed_forms():
    w = torch.tensor([[0.9, -0.05, 0.3, -1.2, 0.0, 0.4]], dtype=torch.float64)
    delta = 0.7 * w.abs().mean()
    keep = w.abs() > delta
    q, s = quantize(w, "ternary")
    assert torch.equal(q, (torch.sign(w) * keep).int())
    assert s.item() == pytest.approx(w.abs()[keep].mean().item())
    qb, sb = quantize(w, "binary")
    assert qb.tolist() == [[1, -1, 1, -1, 1, 1]]
    assert sb.item() == pytest.approx(w.abs().mean().item())


def test_straight_through_gradient():
    x = torch.randn(4, 5, requires_grad=True)
    g = torch.randn(4, 5)
    for mode in (8, "ternary", "binary"):
        x.grad = None
        (fake_quantize(x, mode, dim=0) * g).sum().backward()
        assert torch.equal(x.grad, g)


@pytest.mark.parametrize("mode", [8, 4, "ternary", "binary"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_quant_linear_on_spikes_is_integer_arithmetic(mode, per_channel):
    torch.manual_seed(1)
    layer = QuantLinear.from_linear(nn.Linear(12, 7, bias=False), mode, per_channel=per_channel)
    spikes = (torch.rand(5, 3, 12) < 0.4).float()
    q, s = layer.quantized_weight()
    ints = spikes.long() @ q.long().T  # exact integer accumulation
    expected = ints.double() * s.double().reshape(1, -1 if per_channel else 1)
    torch.testing.assert_close(layer(spikes).double(), expected, rtol=1e-6, atol=1e-6)
    levels = {8: 255, 4: 15, "ternary": 3, "binary": 2}[mode]
    assert len(torch.unique(q)) <= levels


def test_quantized_membrane_equals_integer_simulation():
    # grid step 1/16, beta = 3/4, threshold 1 = 16 steps: every float here is exact, so the module's
    # fake-quantised membrane must equal a simulation in integers (round half to even, like torch.round)
    torch.manual_seed(2)
    k = torch.randint(-4, 14, (3, 40, 5))
    x = k.float() / 16
    lif = snn.Leaky(beta=0.75, threshold=1.0, state_quant=state_quant(bits=8, scale=1 / 16), step_mode="multi")
    spk, mem = lif(x)
    for b in range(3):
        for n in range(5):
            m = 0
            for t in range(40):
                r = 16 if m >= 16 else 0
                m = max(-127, min(127, round(Fraction(3 * m, 4) + int(k[b, t, n]) - r)))
                assert mem[b, t, n].item() * 16 == m
                assert spk[b, t, n].item() == (1.0 if m >= 16 else 0.0)
    assert spk.sum() > 0


def test_quantize_model_swaps_linears_in_place():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16)), nn.Linear(16, 4))
    keys = list(net.state_dict())
    params = [id(p) for p in net.parameters()]
    x = torch.randn(10, 8)
    ref = net(x)
    names = quantize_model_(net, 8, exclude=("3",))
    assert names == ["0", "2.0"]
    assert isinstance(net[0], QuantLinear) and type(net[3]) is nn.Linear
    assert list(net.state_dict()) == keys and [id(p) for p in net.parameters()] == params
    out = net(x)
    assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=0.05)
    # gradients reach the float weights straight through the quantiser: d loss / d w = d loss / d w_q
    out.sum().backward()
    wq = fake_quantize(net[0].weight.detach(), 8, dim=0).requires_grad_(True)
    net[3](net[2](net[1](F.linear(x, wq, net[0].bias.detach())))).sum().backward()
    torch.testing.assert_close(net[0].weight.grad, wq.grad)
    quantize_model_(net, "ternary")
    q, _ = net[3].quantized_weight()
    assert set(torch.unique(q).tolist()) <= {-1, 0, 1}


def test_bad_input():
    for mode in (1, 17, "quaternary", True):
        with pytest.raises(ValueError, match="quantisation mode"):
            quantize(torch.randn(3), mode)
    with pytest.raises(ValueError, match="positive"):
        quantize(torch.randn(3), 8, scale=-1.0)
    with pytest.raises(ValueError, match="fixed scale"):
        FakeQuantize("ternary", scale=0.1)
    with pytest.raises(ValueError, match="out of range"):
        quantize(torch.randn(3, 4), 8, dim=2)


def test_quantize_model_on_spikegpt():
    from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM

    torch.manual_seed(4)
    model = SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2))
    keys = list(model.state_dict())
    x = torch.randint(0, 20, (2, 12))
    ref = model(x, labels=x).loss
    names = quantize_model_(model, "ternary", exclude=("head",))
    assert len(names) == 2 * 7 and "head" not in names  # att key/value/receptance/output, ffn key/receptance/value
    assert list(model.state_dict()) == keys
    out = model(x, labels=x).loss
    assert torch.isfinite(out) and out.item() != ref.item()
    out.backward()
    assert all(model.get_submodule(n).weight.grad is not None for n in names)
