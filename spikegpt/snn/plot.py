"""Seeing spikes: raster plots and per-layer firing rates (matplotlib, imported only when called).

``raster`` and ``firing_rates`` draw onto a matplotlib ``Axes`` (a new figure when ``ax`` is None) and
return it. The rates to draw come from :func:`spikegpt.recording.record_spikes` (also
``spikegpt.snn.record_spikes``), which counts the spikes of every neuron inside a network::

    with snn.record_spikes(net) as rec:
        net(x)
    firing_rates(rec.rates())
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["firing_rates", "raster"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("spikegpt.snn.plot needs matplotlib: pip install matplotlib "
                          "(or the 'plot' extra: pip install spikegpt[plot])") from e
    return plt


def raster(spikes: torch.Tensor, ax=None, *, sample: int = 0, s: float = 4.0, c: str = "black", **kwargs):
    """Raster plot: a dot at (t, n) for each spike. ``spikes`` (T, N), or (B, T, N) / (B, T, *) from
    which ``sample`` is drawn (trailing dims flattened into neurons). Returns the Axes."""
    if spikes.dim() == 2:
        sp = spikes
    elif spikes.dim() >= 3:
        if not 0 <= sample < spikes.shape[0]:
            raise ValueError(f"raster: sample {sample} is out of range for batch size {spikes.shape[0]}")
        sp = spikes[sample].reshape(spikes.shape[1], -1)
    else:
        raise ValueError(f"raster: spikes must be (T, N) or (B, T, ...), got shape {tuple(spikes.shape)}")
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    t, n = torch.nonzero(sp.detach().cpu() != 0, as_tuple=True)
    ax.scatter(t.numpy(), n.numpy(), s=s, c=c, marker="|", **kwargs)
    ax.set_xlim(-0.5, sp.shape[0] - 0.5)
    ax.set_ylim(-0.5, sp.shape[1] - 0.5)
    ax.set_xlabel("time step")
    ax.set_ylabel("neuron")
    return ax


def firing_rates(rates: Mapping[str, float | torch.Tensor], ax=None, **kwargs):
    """Bar chart of mean firing rate per layer: ``rates`` maps layer name -> rate (a float, or a spike
    tensor whose mean is taken), e.g. ``record_spikes(net).rates()``. Returns the Axes."""
    if not rates:
        raise ValueError("firing_rates: no layers to plot")
    names = list(rates)
    vals = [float(v.float().mean()) if isinstance(v, torch.Tensor) else float(v) for v in rates.values()]
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names)), 3))
    ax.bar(range(len(names)), vals, **kwargs)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylabel("firing rate (spikes / neuron / step)")
    ax.set_ylim(0, max(1e-3, max(vals)) * 1.1)
    return ax
