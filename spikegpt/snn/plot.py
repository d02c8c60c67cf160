"""Seeing spikes: raster plots, per-layer firing rates, and a recorder of firing rates (matplotlib optional).

``record_firing_rates(net)`` is a context manager that hooks every spiking neuron module inside
``net`` (``spikegpt.snn`` neurons, including ``LIF``) and collects each one's mean firing rate over
the calls made inside the block. ``raster`` and ``firing_rates`` draw onto a matplotlib ``Axes``
(a new figure when ``ax`` is None) and return it; they import matplotlib only when called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .neurons import SpikingNeuron

__all__ = ["firing_rates", "raster", "record_firing_rates"]


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
    tensor whose mean is taken), e.g. the dict from ``record_firing_rates``. Returns the Axes."""
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


@contextlib.contextmanager
def record_firing_rates(net: nn.Module) -> Iterator[dict[str, float]]:
    """Within the block, record each spiking neuron's mean firing rate (spikes / element) over all its
    calls; yields a dict name -> rate, filled in as calls happen. Hooks are removed on exit."""
    counts: dict[str, list[float]] = {}
    rates: dict[str, float] = {}

    def hook(name):
        def fn(module, args, out):
            spk = out[0] if isinstance(out, tuple) else out
            c = counts.setdefault(name, [0.0, 0.0])
            c[0] += float(spk.detach().float().sum())
            c[1] += spk.numel()
            rates[name] = c[0] / max(c[1], 1.0)
        return fn

    handles = [m.register_forward_hook(hook(n or type(m).__name__)) for n, m in net.named_modules()
               if isinstance(m, SpikingNeuron)]
    try:
        yield rates
    finally:
        for h in handles:
            h.remove()
