"""Raster and firing-rate plots write non-empty PNGs and draw the rates that spikegpt.recording measures."""

import pytest
import torch
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn import plot


def test_recorded_rates_match_spike_means_and_plot():
    """spikegpt.snn.record_spikes (spikegpt.recording) on a network of snn neurons: each neuron's rate is the
    mean of the spikes it emitted, computed here from the returned spikes; the rates plot as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), snn.Leaky(beta=0.9, init_hidden=True), nn.Linear(6, 3),
                        snn.LIF(step_mode="single", init_hidden=True))
    x = torch.rand(5, 4) * 3
    spikes = {"1": [], "3": []}
    with snn.record_spikes(net) as rec:
        for _ in range(7):
            h = net[1](net[0](x))
            spikes["1"].append(h)
            spikes["3"].append(net[3](net[2](h)))
    assert list(rec.rates()) == ["1", "3"]
    for name in ("1", "3"):
        assert rec.rates()[name] == pytest.approx(torch.stack(spikes[name]).mean().item())
    assert rec.rates()["1"] > 0
    net(x)  # hooks are gone after the block
    assert rec.counts["1"] == int(torch.stack(spikes["1"]).sum())
    ax = plot.firing_rates(rec.rates())
    assert [p.get_height() for p in ax.patches] == pytest.approx(list(rec.rates().values()))
    plt.close("all")


def test_plots_write_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spk = (torch.rand(2, 50, 20) < 0.1).float()
    ax = plot.raster(spk, sample=1)
    assert len(ax.collections[0].get_offsets()) == int(spk[1].sum())
    p1 = tmp_path / "raster.png"
    ax.figure.savefig(p1)
    ax2 = plot.firing_rates({"lif1": 0.12, "lif2": spk})
    p2 = tmp_path / "rates.png"
    ax2.figure.savefig(p2)
    plt.close("all")
    for p in (p1, p2):
        data = p.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input():
    with pytest.raises(ValueError, match="no layers"):
        plot.firing_rates({})
    with pytest.raises(ValueError, match="spikes must be"):
        plot.raster(torch.zeros(5))
