"""The spike codes of Linear inputs: counts by hand, surrogate gradients in closed form, the LIF code's dynamics."""

import pytest
import torch
from reference_model import loop_lif

from spikegpt import SpikeGPTConfig
from spikegpt.spike_coding import SpikeEncoder, encoder_state_width, parse_spike_inputs, spike_linear
from spikegpt.state import state_config, state_config_hash


def encoder(code, width=4, gain=1.0, **kw):
    enc = SpikeEncoder(SpikeGPTConfig(vocab_size=5, hidden_size=4, num_hidden_layers=1, spike_inputs=code, **kw), width)
    with torch.no_grad():
        enc.gain.fill_(gain)
    return enc.double()


@pytest.mark.parametrize("value, parsed", [("none", ("none", 0)), ("lif", ("lif", 1)), ("binary", ("binary", 1)),
                                           ("ternary", ("int", 1)), ("int1", ("int", 1)), ("int7", ("int", 7)),
                                           ("int127", ("int", 127))])
def test_parse(value, parsed):
    assert parse_spike_inputs(value) == parsed


def test_counts_by_hand():
    # mean|x| = (3 + 1 + 0.5 + 2.5 + 7) / 5 = 2.8, gain 1 -> vth = 2.8; u = x / 2.8
    x = torch.tensor([[[3.0, -1.0, 0.5, -2.5, 7.0]]], dtype=torch.float64)
    # u = 1.07, -0.36, 0.18, -0.89, 2.5: counts are u rounded to the nearest integer (2.5 -> 2, half to even),
    # clamped to the code's range
    want = {"binary": [1, 0, 0, 0, 1], "ternary": [1, 0, 0, -1, 1], "int3": [1, 0, 0, -1, 2], "int1": [1, 0, 0, -1, 1]}
    for code, counts in want.items():
        c, vth, mem = encoder(code, width=5)(x)
        assert c.flatten().tolist() == counts, code
        assert vth.item() == pytest.approx(2.8) and mem is None
    x2 = torch.tensor([[[-9.0, 1.0, 0.0, 0.0]]], dtype=torch.float64)  # mean 2.5: u = -3.6, 0.4
    assert encoder("int3")(x2)[0].flatten().tolist() == [-3, 0, 0, 0]
    assert encoder("int7", gain=0.5)(x2)[0].flatten().tolist() == [-7, 1, 0, 0]  # u = -7.2, 0.8
    assert encoder("binary")(x2)[0].flatten().tolist() == [0, 0, 0, 0]  # binary never fires on negatives


def test_a_spike_coded_linear_adds_weight_columns_times_the_scale():
    enc = encoder("int3", width=5)
    lin = torch.nn.Linear(5, 3, bias=False).double()
    x = torch.tensor([[[3.0, -1.0, 0.5, -2.5, 7.0]]], dtype=torch.float64)
    y = spike_linear(lin, enc(x))
    w = lin.weight.detach()
    torch.testing.assert_close(y[0, 0], 2.8 * (w[:, 0] - w[:, 3] + 2 * w[:, 4]))  # counts 1, -1, 2 at inputs 0, 3, 4


@pytest.mark.parametrize("code, lo, hi", [("int3", -3, 3), ("ternary", -1, 1), ("binary", 0, 1)])
def test_straight_through_and_lsq_gradients_in_closed_form(code, lo, hi):
    """d x_hat / dx through the count is 1 inside (lo - 1/2, hi + 1/2), 0 outside; the gain gets the LSQ gradient
    ``mean|x| * (c - u * inside)`` (x held fixed)."""
    torch.manual_seed(0)
    enc = encoder(code, width=16, gain=0.7)
    x = torch.randn(2, 3, 16, dtype=torch.float64) * 2
    c, vth, _ = enc(x)
    x_hat = vth * c
    g = torch.randn_like(x_hat)
    (grad_gain,) = torch.autograd.grad((x_hat * g).sum(), enc.gain)
    m = x.abs().mean(-1, keepdim=True)
    u = x / (0.7 * m)
    inside = ((u > lo - 0.5) & (u < hi + 0.5)).double()
    assert 0 < inside.mean() < 1  # both cases present
    want = (g * m * (torch.clamp(torch.sign(u) * torch.floor(u.abs() + 0.5), lo, hi) - u * inside)).sum()
    torch.testing.assert_close(grad_gain, want)
    # the count's own surrogate, with the scale detached
    xr = x.clone().requires_grad_(True)
    with torch.no_grad():
        vth_fixed = 0.7 * m
    from spikegpt.spike_coding import _Count

    cc = _Count.apply(xr / vth_fixed, float(lo), float(hi))
    (gx,) = torch.autograd.grad((cc * g).sum(), xr)
    torch.testing.assert_close(gx, g * inside / vth_fixed)


def test_lif_code_is_the_lif_loop_on_the_scaled_input_and_holds_at_padding():
    torch.manual_seed(1)
    enc = encoder("lif", width=6, gain=0.3)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    c, vth, mem = enc(x)
    u = x / (0.3 * x.abs().mean(-1, keepdim=True))
    for b in range(2):  # the LIF charges tau * threshold * u: a fresh membrane fires once x reaches vth
        torch.testing.assert_close(c[b], loop_lif(2.0 * u[b], 2.0, 1.0, 0.0))
    assert 0 < c.mean() < 1 and mem.shape == (2, 6)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:] = False  # the second row ends after 4 tokens
    c2, _, mem2 = enc(x, mask=mask)
    torch.testing.assert_close(mem2[1], enc(x[1:, :4])[2][0])
    assert c2[1, 4:].abs().sum() == 0
    # chunks carrying the membrane equal one call
    a = enc(x[:, :5])
    b = enc(x[:, 5:], a[2])
    torch.testing.assert_close(torch.cat([a[0], b[0]], 1), c)
    torch.testing.assert_close(b[2], mem)


def test_initial_gains_and_state_width():
    cfg = SpikeGPTConfig(vocab_size=5, hidden_size=4, num_hidden_layers=2, spike_inputs="lif", tau=4.0)
    assert float(SpikeEncoder(cfg, 4).gain.detach()) == pytest.approx(0.9)
    for code, g in (("ternary", 1.8), ("binary", 1.8), ("int3", 1.8 / 3**0.5), ("int7", 1.8 / 7**0.5)):
        enc = SpikeEncoder(SpikeGPTConfig(vocab_size=5, hidden_size=4, num_hidden_layers=1, spike_inputs=code), 4)
        assert float(enc.gain.detach()) == pytest.approx(g)
    # a row whose entries share one magnitude is off every tie and threshold: its counts are +-1 (or 0 for binary
    # negatives), robustly
    row = torch.tensor([[[1.0, -1.0, 1.0, -1.0]]], dtype=torch.float64) * 0.37
    for code in ("ternary", "int3", "int7"):
        enc = SpikeEncoder(SpikeGPTConfig(vocab_size=5, hidden_size=4, num_hidden_layers=1, spike_inputs=code), 4)
        assert enc.double()(row)[0].flatten().tolist() == [1, -1, 1, -1], code
    assert encoder_state_width(cfg) == 6 * 4 + 16
    for code in ("none", "int3", "binary"):
        assert encoder_state_width(SpikeGPTConfig(vocab_size=5, hidden_size=4, num_hidden_layers=2,
                                                  spike_inputs=code)) == 0
    tuned = SpikeGPTConfig(vocab_size=5, hidden_size=4, num_hidden_layers=1, spike_inputs="ternary", spike_gain=2.5)
    assert float(SpikeEncoder(tuned, 4).gain.detach()) == 2.5
    assert state_config_hash(tuned) == state_config_hash(SpikeGPTConfig(**{**tuned.to_dict(), "spike_gain": None}))
    for bad in (0, -1.0, "2", float("nan"), True):
        with pytest.raises(ValueError, match="spike_gain"):
            SpikeGPTConfig(vocab_size=5, hidden_size=4, num_hidden_layers=1, spike_gain=bad)
    with pytest.raises(ValueError, match="width 4"):
        SpikeEncoder(cfg, 4)(torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="needs a spike code"):
        SpikeEncoder(SpikeGPTConfig(vocab_size=5, hidden_size=4, num_hidden_layers=1), 4)


def test_a_silent_row_gives_zero_counts_not_nan():
    c, vth, _ = encoder("int3")(torch.zeros(1, 2, 4, dtype=torch.float64))
    assert torch.equal(c, torch.zeros_like(c)) and torch.isfinite(vth).all()


def test_state_hash_counts_the_code_but_not_for_models_without_one():
    base = dict(vocab_size=20, hidden_size=6, num_hidden_layers=3)
    assert "spike_inputs" not in state_config(SpikeGPTConfig(**base))  # hashes of existing states stay valid
    hashes = {state_config_hash(SpikeGPTConfig(**base, spike_inputs=c)) for c in ("none", "lif", "int3", "int4")}
    assert len(hashes) == 4


@pytest.mark.parametrize("code", ["lif", "binary", "ternary", "int3"])
def test_inference_path_gives_the_training_path_values_bit_for_bit(code):
    enc = encoder(code, width=16, gain=0.7).float()
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(4)) * 3
    c1, v1, m1 = enc(x)  # autograd on (the gain requires grad)
    with torch.no_grad():
        c2, v2, m2 = enc(x)
    assert torch.equal(c1, c2) and torch.equal(v1, v2)
    assert (m1 is None and m2 is None) or torch.equal(m1, m2)
