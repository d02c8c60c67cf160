"""Recording what spiking neurons do: the one place where spikes are read out of a model.

A *spike site* is a module that subclasses :class:`SpikeSite`: SpikeGPT's binary embedding and branch LIF
neurons, and every neuron of :mod:`spikegpt.snn`. Sites are named by their path in ``model.named_modules()``
(``"model.emb_spike"``, ``"model.blocks.0.att_lif"``, ``"model.blocks.0.ffn_lif"``, ... for a causal LM).

    with record_spikes(model) as rec:
        model(input_ids)
    rec.rates()                   # {site: spikes / neuron-steps}
    rec.counts, rec.steps         # {site: spikes}, {site: neuron-steps}

A spike is a non-zero entry of a site's output (graded spikes count once each); a neuron-step is one
entry. ``keep="outputs"`` also keeps every call's spike tensor, ``keep="inputs"`` every call's input (what
a LIF integrates, e.g. a non-spiking model's branch outputs), in ``rec.tensors``. A (B, T) boolean argument
of a site's forward, other than its input, is taken as its mask of real positions: padded positions count
as neither spikes nor neuron-steps (kept tensors are kept whole). Counts accumulate over every call made
inside ``with``, and over later ``with`` blocks of the same recorder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

__all__ = ["SpikeRecorder", "SpikeSite", "real_mask_of_call", "record_spikes", "spike_sites", "spikes_of"]


class SpikeSite:
    """Mixin marking a module whose output is spikes: a tensor, or a tuple whose first entry is the tensor.

    With spiking switched off (a non-spiking SpikeGPT) the module still marks where spikes would be; its
    output is then real-valued.
    """


def spike_sites(module: nn.Module) -> dict[str, nn.Module]:
    """Every :class:`SpikeSite` inside ``module`` (itself included, as ``""``), by ``named_modules()`` path,
    in module order."""
    return {name: m for name, m in module.named_modules() if isinstance(m, SpikeSite)}


def spikes_of(output) -> torch.Tensor:
    """The spike tensor of a site's output (the output itself, or its first entry)."""
    return output[0] if isinstance(output, tuple) else output


def real_mask_of_call(args: tuple, kwargs: dict, spikes: torch.Tensor) -> torch.Tensor | None:
    """The (B, T) bool argument of a site's call (its input, the first argument, excluded), or None."""
    for a in (*args[1:], *kwargs.values()):
        if isinstance(a, torch.Tensor) and a.dtype == torch.bool and a.dim() == 2 and a.shape == spikes.shape[:2]:
            return a
    return None


def _input_of(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if kwargs:
        return next(iter(kwargs.values()))
    raise ValueError("keep='inputs': the site was called without an input")


class SpikeRecorder:
    """Hooks on the spike sites of a module, active inside ``with``; see the module docstring.

    Args:
        module: the model or network to record.
        keep: None (counts only), ``"outputs"`` (also each call's spikes) or ``"inputs"`` (also each call's
            first input), kept detached, on their device, in ``tensors[site]`` (one entry per call).
        sites: names (from :func:`spike_sites`) to record; None records all.

    Raises:
        ValueError: a bad ``keep``, a name that is not a site of ``module``, or a module without sites.
        RuntimeError: entering a recorder that is already recording.
    """

    def __init__(
        self,
        module: nn.Module,
        keep: Literal["outputs", "inputs"] | None = None,
        sites: Iterable[str] | None = None,
    ):
        if keep not in (None, "outputs", "inputs"):
            raise ValueError(f"keep must be None, 'outputs' or 'inputs', got {keep!r}")
        found = spike_sites(module)
        if not found:
            raise ValueError(f"{type(module).__name__} has no spike sites (no SpikeSite modules) to record")
        if sites is not None:
            sites = [sites] if isinstance(sites, str) else list(sites)
            unknown = [s for s in sites if s not in found]
            if unknown:
                raise ValueError(f"no spike site named {unknown}; the module has {list(found)}")
            if not sites:
                raise ValueError("sites=[] selects nothing to record")
            found = {s: found[s] for s in sites}
        self.sites = found
        self.keep = keep
        self.counts: dict[str, int] = dict.fromkeys(found, 0)
        self.steps: dict[str, int] = dict.fromkeys(found, 0)
        self.tensors: dict[str, list[torch.Tensor]] = {name: [] for name in found} if keep else {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            spikes = spikes_of(output)
            real = real_mask_of_call(args, kwargs, spikes)
            counted = spikes if real is None else spikes[real]
            self.counts[name] += int(torch.count_nonzero(counted))
            self.steps[name] += counted.numel()
            if self.keep == "outputs":
                self.tensors[name].append(spikes.detach())
            elif self.keep == "inputs":
                self.tensors[name].append(_input_of(args, kwargs).detach())
        return hook

    def __enter__(self) -> SpikeRecorder:
        if self._handles:
            raise RuntimeError("this SpikeRecorder is already recording")
        self._handles = [m.register_forward_hook(self._hook(name), with_kwargs=True) for name, m in self.sites.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def rates(self) -> dict[str, float]:
        """Spikes per neuron-step of every recorded site (0.0 for a site that ran no steps)."""
        return {k: self.counts[k] / self.steps[k] if self.steps[k] else 0.0 for k in self.counts}

    def mean_rate(self, sites: Iterable[str] | None = None) -> float:
        """The mean of :meth:`rates` over ``sites`` (default: all recorded; 0.0 for none).
        ``ValueError`` for a name that was not recorded."""
        r = self.rates()
        names = list(r) if sites is None else list(sites)
        unknown = [n for n in names if n not in r]
        if unknown:
            raise ValueError(f"sites {unknown} were not recorded; recorded: {list(r)}")
        return sum(r[n] for n in names) / len(names) if names else 0.0

    def stacked(self, name: str) -> torch.Tensor:
        """The kept tensors of site ``name`` concatenated along dim 0 (the batch axis).

        Raises ``ValueError`` when nothing was kept (no ``keep``, an unrecorded name, or no call yet).
        """
        if not self.keep:
            raise ValueError("nothing was kept: record with keep='outputs' or keep='inputs'")
        if name not in self.tensors:
            raise ValueError(f"site {name!r} was not recorded; recorded: {list(self.tensors)}")
        if not self.tensors[name]:
            raise ValueError(f"site {name!r} was not called while recording")
        return torch.cat(self.tensors[name])


def record_spikes(
    module: nn.Module,
    keep: Literal["outputs", "inputs"] | None = None,
    sites: Iterable[str] | None = None,
) -> SpikeRecorder:
    """A :class:`SpikeRecorder` for ``module``; use it as ``with record_spikes(model) as rec: ...``."""
    return SpikeRecorder(module, keep=keep, sites=sites)
