"""Seeing what a SpikeGPT model's spikes do: rasters of chosen layers over tokens, a firing-rate heatmap.

``record_spikes`` runs a model over one token sequence and keeps every LIF's binary output (T, C), named
by module path (the spike sites of :mod:`spikegpt.recording`); ``save_raster`` draws chosen layers (one
panel per LIF, a dot per spike, via :func:`spikegpt.snn.plot.raster`) and ``save_firing_heatmap`` the
fraction of neurons firing per token for every layer. Both write PNG files and need matplotlib
(``pip install spikegpt[plot]``); they use matplotlib's object API, so no display or pyplot backend is
involved.

    spikes = record_spikes(model, ids)    # {"model.blocks.0.att_lif": (T, C), "model.blocks.0.ffn_lif": ..., ...}
    save_raster(spikes, "raster.png", layers=[0, 3], tokens=["The", " cat", ...])
    save_firing_heatmap(spikes, "firing_rates.png", tokens=...)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch

from spikegpt.recording import SpikeRecorder, spike_sites

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)(?:\.|$)")


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install matplotlib (or spikegpt[plot])") from e
    return Figure(**kwargs)


def site_layer(name: str) -> int | None:
    """The block index in a spike-site path (``"model.blocks.3.att_lif"`` -> 3); None outside the blocks."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


@torch.no_grad()
def record_spikes(model, input_ids: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
    """Spikes of every LIF of ``model`` over one sequence, recorded by :mod:`spikegpt.recording`:
    ``{site path: (T, C)}`` (``"model.blocks.{l}.att_lif"`` / ``"...ffn_lif"`` for a causal LM) float 0/1
    tensors on the CPU, in layer order. ``input_ids``: (T,) or (1, T). ``ValueError`` for a non-spiking
    model (nothing spikes) or a batch of several sequences."""
    if not model.config.spiking:
        raise ValueError("this model is not spiking (config.spiking=False): there are no spikes to record")
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"record_spikes takes one sequence, (T,) or (1, T); got shape {tuple(ids.shape)}")
    lifs = [name for name in spike_sites(model) if site_layer(name) is not None]
    base = getattr(model, getattr(model, "base_model_prefix", "model"), model)
    was_training = model.training
    model.eval()
    try:
        with SpikeRecorder(model, keep="outputs", sites=lifs) as rec:
            # one call (no chunks), so one recorded tensor per site
            base(ids.to(next(model.parameters()).device), use_cache=False, prefill_chunk_size=0)
    finally:
        model.train(was_training)
    return {name: rec.stacked(name)[0].float().cpu() for name in lifs}  # (T, C) of the one sequence


def _select(spikes: dict[str, torch.Tensor], layers: Sequence[int] | None) -> dict[str, torch.Tensor]:
    if not spikes:
        raise ValueError("no spikes to plot")
    if layers is None:
        return spikes
    have = sorted({l for l in map(site_layer, spikes) if l is not None})
    bad = [l for l in layers if l not in have]
    if bad:
        span = f"layers {have[0]}..{have[-1]}" if have else "no layers"
        raise ValueError(f"layers {bad} are not in the recording (it has {span})")
    return {k: v for k, v in spikes.items() if site_layer(k) in set(layers)}


def _token_ticks(ax, tokens: Sequence[str] | None, T: int, max_ticks: int = 48) -> None:
    if not tokens:
        return
    step = max(1, -(-T // max_ticks))
    idx = list(range(0, T, step))
    ax.set_xticks(idx)
    ax.set_xticklabels([repr(tokens[i])[1:-1].replace(" ", "\u00b7")[:12] for i in idx], rotation=90, fontsize=6)


def save_raster(
    spikes: dict[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    layers: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    max_neurons: int | None = 256,
) -> str:
    """Raster plot (token on x, neuron on y, a dot per spike) of the LIFs of ``layers`` (block indices, see
    :func:`site_layer`; default: every recorded site), one panel each, saved as an image at ``path`` (format
    from the extension, e.g. PNG). ``max_neurons`` keeps the first that many neurons per panel (None: all).
    Returns the path. ``ValueError`` for no spikes or a layer that is not in the recording."""
    from spikegpt.snn.plot import raster

    chosen = _select(spikes, layers)
    fig = _figure(figsize=(10, 1.8 * len(chosen) + 0.6), constrained_layout=True)
    axes = fig.subplots(len(chosen), 1, squeeze=False)[:, 0]
    for ax, (name, s) in zip(axes, chosen.items()):
        shown = s if max_neurons is None else s[:, :max_neurons]
        raster(shown, ax=ax, s=6)
        part = f" (neurons 0-{shown.shape[1] - 1} of {s.shape[1]} shown)" if shown.shape[1] < s.shape[1] else ""
        ax.set_title(f"{name}: firing rate {float(s.mean()):.3f}{part}", fontsize=9)
        _token_ticks(ax, tokens, shown.shape[0])
        if ax is not axes[-1]:
            ax.set_xlabel("")
    axes[-1].set_xlabel("token")
    fig.savefig(path, dpi=120)
    return os.fspath(path)


def save_firing_heatmap(
    spikes: dict[str, torch.Tensor], path: str | os.PathLike, *, tokens: Sequence[str] | None = None
) -> str:
    """Heatmap of the fraction of neurons firing (rows: every LIF in layer order; columns: tokens), saved as an
    image at ``path``. Returns the path."""
    if not spikes:
        raise ValueError("no spikes to plot")
    names = list(spikes)
    rates = torch.stack([spikes[n].mean(dim=1) for n in names])  # (LIFs, T)
    T = rates.shape[1]
    fig = _figure(figsize=(min(18, 3 + 0.12 * T), 1.2 + 0.3 * len(names)), constrained_layout=True)
    ax = fig.subplots()
    im = ax.imshow(rates.numpy(), aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("token")
    _token_ticks(ax, tokens, T)
    ax.set_title(f"fraction of neurons firing per token (mean {float(rates.mean()):.3f})", fontsize=9)
    fig.colorbar(im, ax=ax, label="firing rate")
    fig.savefig(path, dpi=120)
    return os.fspath(path)
