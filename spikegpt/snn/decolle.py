"""DECOLLE: deep continuous local learning (Kaiser, Mostafa & Neftci 2020).

A stack of spiking layers, each a ``nn.Linear`` or ``nn.Conv2d`` feeding second-order LIF neurons (the
``Synaptic`` neuron, subtract reset, delayed reset), and each with its own FIXED random readout
``y_l[t] = G_l s_l[t]`` (not trained) and a local loss ``E_l[t] = loss(y_l[t], target[t])`` at every step.
Every layer's input is detached, so layer l learns from ``E_l`` only; the top readout is the output.

DECOLLE's trick is that the neuron's dynamics are linear up to the threshold, so the synaptic filter can
be moved from the current onto the presynaptic spikes. With ``syn = alpha syn + W x + b`` and
``mem = beta mem + syn - thr r`` (``r[t] = s[t-1]``, the delayed reset)::

    P[t]   = filter(x)[t]        (synaptic_step of the input with reset "none": the input's alpha/beta trace)
    c[t]   = filter(1)[t]        (the same trace of a constant: the bias's)
    R[t]   = beta R[t-1] + s[t-1]                                   (the reset's trace, leaky_step)
    U[t]   = W P[t] + b c[t] - thr R[t]      = the Synaptic neuron's membrane, exactly
    s[t]   = H(U[t] - thr)

``P``, ``c`` do not depend on ``W`` and the reset is a constant (as the house neurons treat a delayed
reset), so ``dE_l[t]/dW_l = (dE_l/dU_l[t]) P[t]^T`` is the exact gradient of the layer's local loss with
its input detached, computed online with memory independent of T (one trace per input). DECOLLE sums it
over steps; ``step`` backpropagates each step's local losses through that step's ``U = W P + ...`` only.
Only the subtract reset is supported (a zero reset is multiplicative and does not decompose this way).
Against the paper's code: no (1 - alpha), (1 - beta) input gains (the house ``Synaptic`` neuron has none),
the reset is the neuron's own subtract reset rather than a refractory trace with its own decay, and
pooling / dropout between layers are left to the user (a strided Conv2d stands in for pooling).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import surrogate as _surrogate
from .neurons import LeakyState, SynapticState, leaky_step, synaptic_step

__all__ = ["DECOLLE", "DECOLLELayerState", "DECOLLEState"]


class DECOLLELayerState(NamedTuple):
    """One layer's carried state; sizes independent of T."""

    pre: SynapticState  # input traces: syn and P = mem, each (B, *in_shape)
    rst: LeakyState  # reset trace R, (B, *out_shape)
    z: torch.Tensor  # last spikes s[t-1], (B, *out_shape)


class DECOLLEState(NamedTuple):
    """Everything DECOLLE carries from step to step."""

    layers: tuple[DECOLLELayerState, ...]
    const: SynapticState  # trace of the constant 1 (bias), 0-dim tensors


class DECOLLE(nn.Module):
    """Spiking layers with fixed random local readouts, trained by local losses (equations: module docstring).

    ``DECOLLE(layers, n_out, *, input_shape=None, alpha=0.9, beta=0.85, threshold=1.0, spike_grad=None,
    loss="mse", readout_scale=1.0, loss_weights=None, generator=None)``.

    ``layers``: ``nn.Linear`` / ``nn.Conv2d`` (zero padding) modules, applied in order; a Linear after a
    Conv2d takes its flattened spikes. ``input_shape`` is the shape of one step of input without the
    batch (``(in_features,)`` by default when the first layer is Linear; required for Conv2d).
    ``alpha``, ``beta``: synaptic and membrane decays in [0, 1] (``alpha=0`` is the first-order ``Leaky``).
    ``spike_grad``: a surrogate (default ``atan(2.0)``). ``loss``: ``"mse"`` (the paper's; targets (B, K)
    values; integer labels (B,) stand for their one-hot) or ``"ce"`` (targets (B,) labels), each the batch
    mean of one step.
    Readout ``G_l`` (K, numel of layer l's output) is a buffer ``readout{l}`` drawn N(0, 1) times
    ``readout_scale / sqrt(numel)`` from ``generator``. ``loss_weights`` (L,) scale the local losses
    (default all 1).

    ``forward(x)``: x (B, T, *input_shape) -> top readout (B, T, K) and the spikes of each layer
    (B, T, *out_shape), without gradients (for prediction). ``step`` / ``accumulate`` learn.
    """

    def __init__(self, layers: Sequence[nn.Module], n_out: int, *, input_shape: Sequence[int] | None = None,
                 alpha: float = 0.9, beta: float = 0.85, threshold: float = 1.0,
                 spike_grad: Callable | str | None = None, loss: str = "mse", readout_scale: float = 1.0,
                 loss_weights: Sequence[float] | None = None, generator: torch.Generator | None = None):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("DECOLLE: needs at least one layer")
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d):
                if layer.padding_mode != "zeros":
                    raise ValueError(f"DECOLLE: layer {i}: only zero padding is supported, got "
                                     f"padding_mode={layer.padding_mode!r}")
            elif not isinstance(layer, nn.Linear):
                raise ValueError(f"DECOLLE: layer {i} must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
        if not isinstance(n_out, int) or n_out < 1:
            raise ValueError(f"DECOLLE: n_out must be a positive int, got {n_out!r}")
        if not 0 <= alpha <= 1 or not 0 <= beta <= 1:
            raise ValueError(f"DECOLLE: alpha and beta must lie in [0, 1], got alpha={alpha}, beta={beta}")
        if loss not in ("mse", "ce"):
            raise ValueError(f"DECOLLE: loss must be 'mse' or 'ce', got {loss!r}")
        if loss_weights is not None and len(loss_weights) != len(layers):
            raise ValueError(f"DECOLLE: loss_weights needs one weight per layer ({len(layers)}), "
                             f"got {len(loss_weights)}")
        if input_shape is None:
            if not isinstance(layers[0], nn.Linear):
                raise ValueError("DECOLLE: input_shape is required when the first layer is a Conv2d, e.g. (C, H, W)")
            input_shape = (layers[0].in_features,)
        self.layers = nn.ModuleList(layers)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_out = n_out
        self.alpha, self.beta, self.threshold = float(alpha), float(beta), float(threshold)
        self.spike_fn = _surrogate.resolve(spike_grad)
        self.loss = loss
        self.loss_weights = [1.0] * len(layers) if loss_weights is None else [float(w) for w in loss_weights]
        # shapes of each layer's (possibly flattened) input and of its output, without the batch
        w = layers[0].weight
        h = torch.zeros(1, *self.input_shape, dtype=w.dtype, device=w.device)
        self.in_shapes: list[tuple[int, ...]] = []
        self.out_shapes: list[tuple[int, ...]] = []
        with torch.no_grad():
            for i, layer in enumerate(layers):
                if isinstance(layer, nn.Linear):
                    h = h.reshape(1, -1)
                    if h.shape[1] != layer.in_features:
                        raise ValueError(f"DECOLLE: layer {i} expects {layer.in_features} inputs, gets {h.shape[1]}")
                elif h.dim() != 4 or h.shape[1] != layer.in_channels:
                    raise ValueError(f"DECOLLE: layer {i} (Conv2d, {layer.in_channels} channels) gets input of "
                                     f"shape {tuple(h.shape[1:])}; it needs (C, H, W)")
                self.in_shapes.append(tuple(h.shape[1:]))
                h = layer(h)
                self.out_shapes.append(tuple(h.shape[1:]))
        for i, shape in enumerate(self.out_shapes):
            n = math.prod(shape)
            g = torch.randn(n_out, n, generator=generator, dtype=w.dtype) * (readout_scale / n**0.5)
            self.register_buffer(f"readout{i}", g.to(w.device))

    def readout(self, i: int) -> torch.Tensor:
        """The fixed readout matrix ``G_i`` (K, numel of layer i's output)."""
        return getattr(self, f"readout{i}")

    def init_state(self, batch_size: int, device=None, dtype=None) -> DECOLLEState:
        """Zero state for ``batch_size`` sequences."""
        w = self.layers[0].weight
        kw = dict(device=device or w.device, dtype=dtype or w.dtype)
        layers = tuple(
            DECOLLELayerState(
                pre=SynapticState(torch.zeros(batch_size, *si, **kw), torch.zeros(batch_size, *si, **kw)),
                rst=LeakyState(torch.zeros(batch_size, *so, **kw)),
                z=torch.zeros(batch_size, *so, **kw),
            )
            for si, so in zip(self.in_shapes, self.out_shapes)
        )
        return DECOLLEState(layers, SynapticState(torch.zeros((), **kw), torch.zeros((), **kw)))

    def _drive(self, layer: nn.Module, p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.Linear):
            out = F.linear(p, layer.weight)
            return out if layer.bias is None else out + layer.bias * c
        out = F.conv2d(p, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        return out if layer.bias is None else out + layer.bias.view(1, -1, 1, 1) * c

    def _advance(self, x: torch.Tensor, state: DECOLLEState):
        """One step of every layer. Returns per-layer membranes U, spikes s, readouts y (graphs through W
        when grad is enabled) and the new state."""
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"DECOLLE: one step of x must be (B, *input_shape) = (B, {self.input_shape}), "
                             f"got {tuple(x.shape)}")
        if len(state.layers) != len(self.layers):
            raise ValueError(f"DECOLLE: state has {len(state.layers)} layers, the network {len(self.layers)}")
        a, b, thr = self.alpha, self.beta, self.threshold
        with torch.no_grad():
            _, const = synaptic_step(torch.ones_like(state.const.mem), state.const, alpha=a, beta=b,
                                     reset_mechanism="none")
        us, ss, ys, new = [], [], [], []
        inp = x.detach()
        for i, (layer, st) in enumerate(zip(self.layers, state.layers)):
            if isinstance(layer, nn.Linear):
                inp = inp.reshape(inp.shape[0], -1)
            with torch.no_grad():
                _, pre = synaptic_step(inp, st.pre, alpha=a, beta=b, reset_mechanism="none")
                _, rst = leaky_step(st.z, st.rst, beta=b, reset_mechanism="none")
            u = self._drive(layer, pre.mem, const.mem) - thr * rst.mem
            s = self.spike_fn(u - thr)
            y = F.linear(s.reshape(s.shape[0], -1), self.readout(i))
            us.append(u)
            ss.append(s)
            ys.append(y)
            inp = s.detach()
            new.append(DECOLLELayerState(pre, rst, inp))
        return us, ss, ys, DECOLLEState(tuple(new), const)

    def _local_loss(self, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        B, K = y.shape
        labels = not target.is_floating_point()
        if self.loss == "ce" or labels:
            if not labels or target.shape != (B,):
                raise ValueError(f"DECOLLE: a step's labels must be integers of shape (B,) = ({B},), "
                                 f"got {target.dtype} {tuple(target.shape)}")
            if self.loss == "ce":
                return F.cross_entropy(y, target.long())
            target = F.one_hot(target.long(), K)
        elif target.shape != (B, K):
            raise ValueError(f"DECOLLE: a step's mse target must be (B, K) = ({B}, {K}), got {tuple(target.shape)}")
        return F.mse_loss(y, target.to(y.dtype))

    def _split_targets(self, target) -> list[torch.Tensor]:
        if isinstance(target, torch.Tensor):
            return [target] * len(self.layers)
        target = list(target)
        if len(target) != len(self.layers):
            raise ValueError(f"DECOLLE: per-layer targets need one tensor per layer ({len(self.layers)}), "
                             f"got {len(target)}")
        return target

    def step(self, x: torch.Tensor, target: torch.Tensor | Sequence[torch.Tensor], state: DECOLLEState | None = None,
             scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, DECOLLEState]:
        """One time step: x (B, *input_shape); target (B,) labels or, for "mse", (B, K) values, shared by all
        layers, or a sequence with one such tensor per layer. Adds ``scale`` times the gradient of
        ``sum_l loss_weights[l] E_l[t]`` to the layers' ``.grad`` (each layer's only from its own E_l).
        Returns the top readout y (B, K), the local losses (L,) (detached) and the new state."""
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        targets = self._split_targets(target)
        with torch.enable_grad():
            _, _, ys, new = self._advance(x, state)
            losses = [self._local_loss(y, tg) for y, tg in zip(ys, targets)]
            total = sum(w * loss for w, loss in zip(self.loss_weights, losses))
            if total.requires_grad:
                (scale * total).backward()
        return ys[-1].detach(), torch.stack([loss.detach() for loss in losses]), new

    def accumulate(self, x: torch.Tensor, targets: torch.Tensor | Sequence[torch.Tensor],
                   burnin: int = 0) -> tuple[list[float], torch.Tensor]:
        """Run x (B, T, *input_shape) and add the DECOLLE gradient of the mean over (B, steps) of the local
        losses to ``.grad``; the first ``burnin`` steps only drive the state (no loss, as in the paper).

        ``targets``: (B,) or (B, T) labels; for "mse" also (B, K) or (B, T, K) values; or a sequence of such,
        one per layer. Returns each layer's mean local loss over the counted steps and the top readout averaged
        over them (B, K) (for predictions). Memory does not grow with T.
        """
        if x.dim() != 2 + len(self.input_shape) or tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"DECOLLE: x must be (B, T, *input_shape) = (B, T, {self.input_shape}), "
                             f"got {tuple(x.shape)}")
        B, T = x.shape[:2]
        if not 0 <= burnin < T:
            raise ValueError(f"DECOLLE: burnin must lie in [0, T={T}), got {burnin}")
        per_layer = self._split_targets(targets)
        per_step = []
        for tg in per_layer:
            ps = tg.dim() == (3 if tg.is_floating_point() else 2)
            if tg.shape[0] != B or (ps and tg.shape[1] != T):
                raise ValueError(f"DECOLLE: targets of shape {tuple(tg.shape)} do not match x {tuple(x.shape)}")
            per_step.append(ps)
        n = T - burnin
        state = self.init_state(B, x.device, x.dtype)
        totals = torch.zeros(len(self.layers), dtype=torch.float64)
        ysum = 0.0
        for t in range(T):
            if t < burnin:
                with torch.no_grad():
                    _, _, _, state = self._advance(x[:, t], state)
                continue
            tg_t = [tg[:, t] if ps else tg for tg, ps in zip(per_layer, per_step)]
            y, losses, state = self.step(x[:, t], tg_t, state, scale=1.0 / n)
            totals += losses.double().cpu() / n
            ysum = ysum + y / n
        return totals.tolist(), ysum

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.dim() != 2 + len(self.input_shape) or tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"DECOLLE: x must be (B, T, *input_shape) = (B, T, {self.input_shape}), "
                             f"got {tuple(x.shape)}")
        state = self.init_state(x.shape[0], x.device, x.dtype)
        ys, spikes = [], []
        for t in range(x.shape[1]):
            _, ss, yy, state = self._advance(x[:, t], state)
            ys.append(yy[-1])
            spikes.append(ss)
        return torch.stack(ys, 1), [torch.stack(s, 1) for s in zip(*spikes)]
