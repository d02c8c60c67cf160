"""spikegpt.recording: site names, spike and neuron-step counts against hand counts and the tests' own hooks."""

import pytest
import torch
from interop_helpers import spike_totals, tiny_model
from torch import nn

import spikegpt.snn as snn
from spikegpt.recording import SpikeSite, record_spikes, spike_sites


class Step(SpikeSite, nn.Module):
    """A test site: H(x) = 1[x >= 0]."""

    def forward(self, x):
        return (x >= 0).to(x.dtype)


def lm_sites(L):
    return ["model.emb_spike"] + [f"model.blocks.{l}.{b}_lif" for l in range(L) for b in ("att", "ffn")]


def test_site_names_are_module_paths():
    model = tiny_model(num_hidden_layers=2)
    assert list(spike_sites(model)) == lm_sites(2)
    assert list(spike_sites(model.model)) == [n.removeprefix("model.") for n in lm_sites(2)]
    assert list(spike_sites(tiny_model(num_hidden_layers=1, spiking=False))) == lm_sites(1)  # where spikes would be
    net = nn.Sequential(nn.Linear(4, 6), snn.Leaky(beta=0.9), nn.Linear(6, 3), snn.Synaptic(alpha=0.5, beta=0.9))
    assert list(spike_sites(net)) == ["1", "3"]
    lif = snn.LIF()
    assert spike_sites(lif) == {"": lif}
    assert spike_sites(nn.Linear(2, 2)) == {}


def test_counts_and_steps_equal_a_hand_count():
    net = nn.Sequential(Step(), nn.Linear(3, 3), Step())
    with torch.no_grad():
        net[1].weight.copy_(-torch.eye(3))
        net[1].bias.zero_()
    x = torch.tensor([[-1.0, 0.0, 2.0], [3.0, -4.0, -0.5]])
    # H(x) = [[0, 1, 1], [1, 0, 0]]: 3 spikes; the Linear negates them: H(-s) = 1 where s = 0: 3 spikes
    with record_spikes(net) as rec:
        net(x)
    assert rec.counts == {"0": 3, "2": 3} and rec.steps == {"0": 6, "2": 6}
    assert rec.rates() == {"0": 0.5, "2": 0.5} and rec.mean_rate() == 0.5
    with rec:  # a later block of the same recorder adds to the counts
        net(x)
        net(x)
    assert rec.counts == {"0": 9, "2": 9} and rec.steps == {"0": 18, "2": 18}
    net(x)  # outside the block nothing is counted
    assert rec.counts == {"0": 9, "2": 9}


def test_lif_hand_count_and_padding_is_no_neuron_steps():
    # tau 2, threshold 1, reset to 0: h = v + (x - v) / 2; constant x = 3 fires at every step, x = 1.5 at every
    # second step (h = 0.75, 1.125, ...), x = 0.5 never
    lif = snn.LIF(tau=2.0, threshold=1.0, v_reset=0.0)
    x = torch.tensor([3.0, 1.5, 0.5]).expand(2, 4, 3)  # (B, T, N)
    with record_spikes(lif) as rec:
        spk, _ = lif(x)
    assert rec.counts == {"": 2 * (4 + 2 + 0)} and rec.steps == {"": 2 * 4 * 3}
    assert int(spk.sum()) == 12
    # row 0 real at 4 steps, row 1 at its first 2: 6 real positions x 3 neurons; x = 3 fires at each of them
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with record_spikes(lif) as rec:
        lif(torch.full((2, 4, 3), 3.0), None, mask)
        lif(torch.full((2, 4, 3), 3.0), mask=mask)  # a mask given by keyword counts the same
    assert rec.counts == {"": 2 * 6 * 3} and rec.steps == {"": 2 * 6 * 3} and rec.rates() == {"": 1.0}


def test_padded_batch_counts_what_its_rows_count_alone():
    """Left padding in a SpikeGPT batch: each branch LIF counts the spikes and neuron-steps of the real tokens
    only, i.e. what the rows give when run alone without padding."""
    model = tiny_model(dtype=torch.float64, hidden_size=16, num_hidden_layers=2)
    ids = torch.randint(0, 257, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0  # row 1: 5 real tokens
    lifs = lm_sites(2)[1:]
    with torch.no_grad(), record_spikes(model, sites=lifs) as batched:
        model(ids, attention_mask=mask)
    with torch.no_grad(), record_spikes(model, sites=lifs) as alone:
        model(ids[:1])
        model(ids[1:, 4:])
    assert batched.steps == dict.fromkeys(lifs, (9 + 5) * 16)
    assert batched.counts == alone.counts and batched.steps == alone.steps
    assert sum(batched.counts.values()) > 0


def test_keep_outputs_and_inputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), snn.Leaky(beta=0.9, init_hidden=True))
    xs = [torch.rand(5, 4) * 3 for _ in range(3)]
    with torch.no_grad(), record_spikes(net, keep="outputs") as out, record_spikes(net, keep="inputs") as inp:
        spikes = [net(x) for x in xs]
    assert torch.equal(out.stacked("1"), torch.cat(spikes))
    assert len(out.tensors["1"]) == 3
    with torch.no_grad():
        assert torch.equal(inp.stacked("1"), torch.cat([net[0](x) for x in xs]))
    assert out.counts == inp.counts == {"1": int(torch.cat(spikes).count_nonzero())}
    # SpikeGPT's embedding site: input E[idx], output H(E[idx]); non-spiking, the sites are identities
    ids = torch.tensor([[5, 1, 200, 7]])
    for spiking in (True, False):
        model = tiny_model(spiking=spiking)
        emb = model.model.emb.weight[ids].detach()
        with torch.no_grad(), record_spikes(model, keep="outputs", sites=["model.emb_spike"]) as o, \
                record_spikes(model, keep="inputs", sites=["model.emb_spike"]) as i:
            model(ids)
        assert torch.equal(i.stacked("model.emb_spike"), emb)
        assert torch.equal(o.stacked("model.emb_spike"), (emb >= 0).to(emb.dtype) if spiking else emb)


def test_rates_of_an_snn_network():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), snn.Leaky(beta=0.8, step_mode="multi"))
    x = torch.rand(3, 10, 4) * 2  # (B, T, N)
    with torch.no_grad(), record_spikes(net) as rec:
        spk, _ = net[1](net[0](x))
    assert rec.rates() == {"1": pytest.approx(float(spk.mean()))}
    assert rec.steps == {"1": 3 * 10 * 8} and 0 < rec.counts["1"] < 3 * 10 * 8


def test_rates_of_a_spikegpt_model():
    model = tiny_model(hidden_size=24, num_hidden_layers=3)
    ids = torch.randint(0, 257, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), record_spikes(model) as rec:
        model(ids)
    rates = rec.rates()
    assert list(rates) == lm_sites(3)
    ones = model.model.emb.weight[ids] >= 0
    assert rec.counts["model.emb_spike"] == int(ones.sum()) and rec.steps["model.emb_spike"] == ones.numel()
    tot = spike_totals(model, ids)
    for name, (spikes, n) in zip(lm_sites(3)[1:], tot):
        assert rec.counts[name] == spikes and rec.steps[name] == n
    assert sum(s for s, _ in tot) > 0
    lifs = lm_sites(3)[1:]
    assert rec.mean_rate(lifs) == pytest.approx(sum(s / n for s, n in tot) / 6)


def test_errors():
    with pytest.raises(ValueError, match="no spike sites"):
        record_spikes(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    net = nn.Sequential(nn.Linear(2, 2), snn.Leaky(beta=0.5))
    with pytest.raises(ValueError, match=r"no spike site named \['2'\]"):
        record_spikes(net, sites=["1", "2"])
    with pytest.raises(ValueError, match="keep must be"):
        record_spikes(net, keep="spikes")
    rec = record_spikes(net)
    with rec, pytest.raises(RuntimeError, match="already recording"):
        with rec:
            pass
    with pytest.raises(ValueError, match="nothing was kept"):
        rec.stacked("1")
    with pytest.raises(ValueError, match="not recorded"):
        rec.mean_rate(["0"])
    kept = record_spikes(net, keep="outputs")
    with pytest.raises(ValueError, match="not called"):
        kept.stacked("1")
    with pytest.raises(ValueError, match="not recorded"):
        kept.stacked("0")
    with pytest.raises(ZeroDivisionError), kept:  # an error inside the block still removes the hooks
        net(torch.ones(1, 2))
        raise ZeroDivisionError
    net(torch.ones(1, 2))
    assert len(kept.tensors["1"]) == 1
