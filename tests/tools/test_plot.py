"""Spike plots: the recorded spikes are the model's; raster and heatmap PNGs are written and non-empty."""

import pytest
import torch
from interop_helpers import spike_totals, tiny_model

from spikegpt.tools.plot import record_spikes, save_firing_heatmap, save_raster, site_layer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def recorded():
    model = tiny_model(hidden_size=24, num_hidden_layers=3)
    ids = torch.randint(0, 257, (30,), generator=torch.Generator().manual_seed(0))
    return model, ids, record_spikes(model, ids)


def test_records_every_lif_in_layer_order(recorded):
    model, ids, spikes = recorded
    assert list(spikes) == [f"model.blocks.{l}.{b}_lif" for l in range(3) for b in ("att", "ffn")]
    assert [site_layer(k) for k in spikes] == [0, 0, 1, 1, 2, 2]
    tot = spike_totals(model, ids[None])
    for s, (count, n) in zip(spikes.values(), tot):
        assert s.shape == (30, 24) and set(s.unique().tolist()) <= {0.0, 1.0}
        assert float(s.sum()) == count and s.numel() == n


def test_site_layer_reads_the_block_index():
    assert site_layer("model.blocks.12.ffn_lif") == 12 and site_layer("blocks.0.att_lif") == 0
    assert site_layer("model.emb_spike") is None and site_layer("model.subblocks.1.x") is None


def test_writes_non_empty_pngs(recorded, tmp_path):
    _, ids, spikes = recorded
    tokens = [chr(65 + int(i) % 26) for i in ids]
    raster = save_raster(spikes, tmp_path / "raster.png", layers=[0, 2], tokens=tokens)
    heat = save_firing_heatmap(spikes, tmp_path / "rates.png", tokens=tokens)
    for path in (raster, heat):
        data = open(path, "rb").read()
        assert data[:8] == PNG and len(data) > 2000


def test_refuses_what_it_cannot_plot(recorded, tmp_path):
    model, ids, spikes = recorded
    with pytest.raises(ValueError, match=r"layers \[5\] are not in the recording"):
        save_raster(spikes, tmp_path / "x.png", layers=[5])
    with pytest.raises(ValueError, match="one sequence"):
        record_spikes(model, ids.reshape(2, 15))
    with pytest.raises(ValueError, match="not spiking"):
        record_spikes(tiny_model(spiking=False), ids)
    with pytest.raises(ValueError, match="no spikes"):
        save_firing_heatmap({}, tmp_path / "y.png")
