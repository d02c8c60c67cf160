"""Spike codes for the inputs of matrix products: what makes a Linear layer spike-driven.

``SpikeGPTConfig(spike_inputs=...)`` puts a :class:`SpikeEncoder` in front of every Linear layer of the blocks and
of the language-model head. An encoder turns a real input row ``x`` (one token's C values) into integer spike
counts ``c`` and one positive scale ``vth`` per row, and the Linear reads ``x_hat = vth * c``:

    vth = g * mean(|x|)                        adaptive threshold per row, g a learnable gain of the site
    c = clamp(round(x / vth), lo, K)           "binary": lo = 0, K = 1; "int<K>": lo = -K ("ternary" = "int1")
    c = LIF(tau * threshold * x / vth)         "lif": binary spikes of a LIF neuron per channel, membrane carried
                                               over tokens (the config's tau / threshold / v_reset); a fresh
                                               membrane fires in one step once x reaches vth
    W x_hat = vth * (W c)

``W c`` adds one weight column per unit spike (|c| columns for a count c): accumulates, no multiplies, and a
silent input costs nothing; the one multiply per output by ``vth`` is all that remains. Because ``c`` holds
small integers, ``W c`` is also an exact int8 x int8 product with int32 accumulation when the weights are int8
(``spikegpt.interop.quantization``). Rounding to the nearest count makes ``x_hat`` the closest point of the
grid ``vth * [lo, K]`` (an unbiased reconstruction inside the range); inputs below ``vth / 2`` are silent, and the
gain trades precision for sparsity (see :func:`initial_gain`).

Surrogate gradients: the count's step is straight-through inside its range (``dc/du = 1`` for
``lo - 1/2 < u < K + 1/2``, ``u = x / vth``, else 0; with ``x_hat = vth * c`` autograd then gives the scale the LSQ
gradient ``c - u`` inside the range and ``c`` outside), the LIF's spike uses the config's surrogate. ``mask`` (B, T)
holds the LIF membrane at padding, as everywhere in the model.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from spikegpt.kernels import lif
from spikegpt.recording import SpikeSite

__all__ = [
    "SPIKE_INPUT_CHOICES", "SpikeEncoder", "encoder_state_width", "initial_gain", "parse_spike_inputs", "spike_linear",
]

SPIKE_INPUT_CHOICES = ("none", "lif", "binary", "ternary", "int<K> (1 <= K <= 127)")
MAX_COUNT = 127  # counts fit int8
THRESHOLD_GAIN, LIF_GAIN = 1.8, 0.9  # see initial_gain
_INT = re.compile(r"int([0-9]+)")


def parse_spike_inputs(value) -> tuple[str, int]:
    """``(kind, K)`` of a ``spike_inputs`` setting: ``("none", 0)``, ``("lif", 1)``, ``("binary", 1)``,
    ``("int", K)`` for ``"int<K>"`` and ``("int", 1)`` for ``"ternary"``.

    Raises:
        ValueError: naming the value and the choices (not a string, an unknown code, K outside [1, 127]).
    """
    if isinstance(value, str):
        if value in ("none", "lif", "binary"):
            return value, 0 if value == "none" else 1
        if value == "ternary":
            return "int", 1
        m = _INT.fullmatch(value)
        if m and 1 <= int(m.group(1)) <= MAX_COUNT and str(int(m.group(1))) == m.group(1):
            return "int", int(m.group(1))
    raise ValueError(f"spike_inputs must be one of {', '.join(SPIKE_INPUT_CHOICES)}, got {value!r}")


def encoder_state_width(config) -> int:
    """Width of one block's encoder membranes (``SpikeGPTState.enc_mem``): 6C + F with ``spike_inputs="lif"``
    (time-mix key, value, receptance, output; channel-mix key, receptance: C each; channel-mix value: F),
    0 for the stateless codes."""
    kind, _ = parse_spike_inputs(config.spike_inputs)
    return 6 * config.hidden_size + config.intermediate_size if kind == "lif" else 0


def initial_gain(config) -> float:
    """Initial threshold gain g of ``vth = g * mean|x|``: ``config.spike_gain`` when set, else the code's default.

    Threshold codes: ``1.8 / sqrt(K)``. For Gaussian-like rows (``mean|x| ~ 0.8 sigma``) the binary and ternary
    codes (K = 1) are then silent below ``0.72 sigma`` (about half the inputs; mean |c| ~ 0.5), and larger K get a
    finer grid, more precise and less sparse (int3: step ~ 0.83 sigma, int7: ~ 0.54 sigma). LIF: 0.9, a fresh
    membrane firing once ``x`` reaches 0.9 times the row's mean magnitude. Neither puts a row whose entries share
    one magnitude (a LayerNorm of a two-valued residual stream, common at init) on a rounding tie or exactly on
    the threshold (``x / vth`` = 0.56, 0.96, 1.47 for K = 1, 3, 7; 1.11 for the LIF), where rounding would decide.
    """
    if getattr(config, "spike_gain", None) is not None:
        return float(config.spike_gain)  # the config's choice
    kind, K = parse_spike_inputs(config.spike_inputs)
    return LIF_GAIN if kind == "lif" else THRESHOLD_GAIN / K**0.5


class _Count(torch.autograd.Function):
    """``clamp(round(u), lo, hi)``, straight-through inside ``(lo - 1/2, hi + 1/2)``."""

    @staticmethod
    def forward(ctx, u, lo, hi):  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.lo, ctx.hi = lo, hi
        return torch.round(u).clamp_(lo, hi)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        inside = (u > ctx.lo - 0.5) & (u < ctx.hi + 0.5)
        return g * inside.to(g.dtype), None, None


class SpikeEncoder(SpikeSite, nn.Module):
    """The spike code of one Linear layer's input (see the module docstring for the equations).

    A spike site of :mod:`spikegpt.recording`: its output's first entry is the count tensor ``c``.
    Parameter: ``gain`` (scalar, the learnable g of ``vth = g * mean|x|``).
    """

    def __init__(self, config, width: int):
        super().__init__()
        self.kind, self.max_count = parse_spike_inputs(config.spike_inputs)
        if self.kind == "none":
            raise ValueError("SpikeEncoder needs a spike code (config.spike_inputs is 'none')")
        self.width = width
        self.min_count = 0 if self.kind in ("binary", "lif") else -self.max_count
        self.initial_gain = initial_gain(config)
        self.gain = nn.Parameter(torch.tensor(self.initial_gain))
        self.lif_gain = config.tau * config.threshold  # u = tau * threshold * x / vth for the LIF
        self.lif_kwargs = dict(
            tau=config.tau, threshold=config.threshold, v_reset=config.v_reset, detach_reset=config.detach_reset,
            surrogate=config.surrogate, alpha=config.surrogate_alpha, backend=config.kernel_backend,
        )

    @property
    def stateful(self) -> bool:
        return self.kind == "lif"

    def extra_repr(self) -> str:
        return f"{self.kind}, counts in [{self.min_count}, {self.max_count}], width={self.width}"

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """x: (B, T, W) real inputs; mem: (B, W) LIF membrane (``"lif"`` only; None: zeros); mask: (B, T) bool or
        None. Returns ``(c, vth, mem)``: counts (B, T, W) in x's dtype holding integers in
        ``[min_count, max_count]``, the scale (B, T, 1) (``x_hat = vth * c``), and the new membrane (None for the
        stateless codes)."""
        if x.shape[-1] != self.width:
            raise ValueError(f"SpikeEncoder of width {self.width} got input of shape {tuple(x.shape)}")
        tiny = torch.finfo(x.dtype).tiny
        if not (torch.is_grad_enabled() and (x.requires_grad or self.gain.requires_grad)):
            # inference: the same values computed in place (fewer temporaries; the generation step is op-bound)
            magnitude = x.abs()  # its buffer then holds the counts
            vth = magnitude.mean(dim=-1, keepdim=True).mul_(self.gain.detach().abs().to(x.dtype)).clamp_min_(tiny)
            if self.kind == "lif":
                c, mem = lif(torch.mul(x, self.lif_gain / vth, out=magnitude), mem, mask=mask, **self.lif_kwargs)
                return c, vth, mem
            return torch.div(x, vth, out=magnitude).round_().clamp_(self.min_count, self.max_count), vth, None
        vth = (self.gain.abs().to(x.dtype) * x.abs().mean(dim=-1, keepdim=True)).clamp_min(tiny)
        if self.kind == "lif":
            c, mem = lif(x * (self.lif_gain / vth), mem, mask=mask, **self.lif_kwargs)
            return c, vth, mem
        return _Count.apply(x / vth, float(self.min_count), float(self.max_count)), vth, None


def spike_linear(linear: nn.Module, code: tuple) -> torch.Tensor:
    """``vth * linear(c)`` for an encoder's ``code = (c, vth, mem)`` (c (..., in), vth (..., 1)): the Linear layer
    (bias-free, or a layer computing ``W c``, such as the int8 one of ``spikegpt.interop.quantization``) fed with
    spike counts. Returns (..., out)."""
    c, vth, _ = code
    y = linear(c)
    if torch.is_grad_enabled() and (y.requires_grad or vth.requires_grad):
        return y * vth
    return y.mul_(vth)  # nothing recorded: in place (y is the Linear's own output)
