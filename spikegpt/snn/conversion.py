"""ANN-to-SNN conversion: a trained ReLU network becomes a rate-coded integrate-and-fire network.

    snn_net = convert_to_snn(ann, calibration_x, norm="percentile", percentile=99.9)
    out = snn_net(x, num_steps=64)                 # constant (analog) input current at every step
    logits = out.readout * snn_net.output_scale    # -> ann(x) as num_steps grows
    pred = out.counts.argmax(1)                    # or classify by output spike counts

**What is converted.** ``ann`` is an ``nn.Sequential`` (nested ones are flattened) of ``Linear``, ``Conv2d``,
``ReLU``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``MaxPool2d``, ``Flatten``, ``Dropout`` (identity, as in eval
mode), ``Identity`` and ``BatchNorm1d`` / ``BatchNorm2d`` directly after a ``Linear`` / ``Conv2d`` (folded into
it, :func:`fold_batchnorm`). Anything else raises ``ValueError`` naming the module; wrap a custom model whose
forward is a plain chain as ``nn.Sequential(*model.children())``.

**Neurons.** Every ReLU becomes an integrate-and-fire neuron: the house ``Leaky`` with ``beta=1``,
``threshold=1``, ``reset_mechanism="subtract"`` (snnTorch's delayed reset), so every converted neuron is a
spike site for ``spikegpt.snn.record_spikes``. With cumulative input ``S(t) = sum_{u<=t} z(u)`` the count
obeys ``n(t) = n(t-1) + [S(t) - n(t-1) >= 1]``: a constant input ``c`` in [0, 1] gives exactly
``floor(c t)`` spikes by step ``t``, and reset by subtraction keeps the residue, so no charge is lost.

**Threshold balancing** (weight normalisation, Diehl et al. 2015; Rueckauer et al. 2017). For each ReLU,
``lambda`` is the maximum (``norm="max"``) or the ``percentile``-th percentile of the *positive* activations
(``norm="percentile"``, as snntoolbox) of that ReLU's output on ``calibration_data``; the ANN's output layer
gets its own ``lambda`` from its outputs likewise. The layer feeding it is rescaled ``W <- W lambda_in /
lambda_out``, ``b <- b / lambda_out`` (``lambda_in`` of the input is 1), so the neuron's firing rate
estimates ``a / lambda`` in [0, 1]. Activations above ``lambda`` saturate at one spike per step: the
percentile trades that clipping for shorter latency (a smaller ``lambda`` means higher rates).

**Max pooling** is converted exactly at the level of counts: the SNN's ``CumulativeMaxPool`` emits the
increments of ``maxpool(sum_{u<=t} x(u))``, so its output count by step ``t`` is the max-pool of its input
counts (binary spikes stay binary). Rates then converge to ``maxpool`` of the rates, the ANN's max pool
(Rueckauer et al.'s spike gating, made exact by gating on counts).

**Error bound** (checked by the tests). Let ``D_0 = 0`` (analog input) and ``D_l = 1 + ||W'_l||_inf D_{l-1}``
(``W'_l`` the normalised weights; the inf-norm is the largest absolute row sum; pooling does not increase
deviations). Then every neuron of layer ``l`` has ``|n(t) - t clip(a / lambda, 0, 1)| <= D_l`` at every step
``t``, saturated or not, so rates are within ``D_l / T`` of the clipped normalised ANN and the readout within
``||W'_L||_inf D_{L-1} / T``: the conversion error is O(1/T) per layer.

**Input coding.** ``encoding="analog"`` (default) feeds ``x`` as a constant current at every step (the first
layer computes it once; exact, the usual choice). ``"rate"`` feeds Bernoulli spikes with probability ``x``
(``spikegen.rate``; ``x`` must lie in [0, 1]; the error then also has an O(1/sqrt(T)) sampling part);
``"spikes"`` takes a ready spike train ``x`` (B, T, *in).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn

from . import spikegen
from .neurons import Leaky

__all__ = [
    "CumulativeMaxPool",
    "SNNOutput",
    "SpikingNetwork",
    "activation_scale",
    "convert_to_snn",
    "fold_batchnorm",
]

log = logging.getLogger(__name__)

NORMS = ("max", "percentile")
ENCODINGS = ("analog", "rate", "spikes")
_WEIGHT = (nn.Linear, nn.Conv2d)
_POOL = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.Flatten)  # positively homogeneous, spike-wise
_DROP = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
SUPPORTED = "Linear, Conv2d, ReLU, AvgPool2d, AdaptiveAvgPool2d, MaxPool2d, Flatten, Dropout, Identity, BatchNorm1d/2d"


class SNNOutput(NamedTuple):
    """What :class:`SpikingNetwork` returns. Both fields are (B, T, *out) in the network's dtype.

    ``spikes``: the output layer's spikes per step (the last IF layer; for an ANN that does not end in a
    ReLU, IF neurons appended on its output). ``current``: the input current of that layer per step; its
    running sum is the membrane of a non-resetting integrator (the usual readout).
    """

    spikes: torch.Tensor
    current: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        """Output spike counts over the T steps, (B, *out)."""
        return self.spikes.sum(1)

    @property
    def rates(self) -> torch.Tensor:
        """Spikes per step in [0, 1], (B, *out); times ``output_scale`` estimates the ANN's (ReLU) output."""
        return self.spikes.mean(1)

    @property
    def readout(self) -> torch.Tensor:
        """Accumulated output current / T, (B, *out): times ``output_scale`` it estimates the ANN's last
        pre-activation (its logits when it ends in a Linear / Conv2d), negative values included."""
        return self.current.mean(1)


class CumulativeMaxPool(nn.Module):
    """Max pooling of spike counts: x (B, T, C, H, W) -> increments of ``pool(cumsum_t x)``, (B, T, C, H', W').

    The output's count by step t is exactly ``pool`` of the input's counts by step t; binary inputs give
    binary outputs (a running maximum of counts rises by at most one per step).
    """

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        m = self.pool(x.cumsum(1).flatten(0, 1)).unflatten(0, (B, T))
        return torch.diff(m, dim=1, prepend=torch.zeros_like(m[:, :1]))


def _path_modules(ann: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(ann, nn.Sequential):
        raise ValueError(f"convert_to_snn: ann must be an nn.Sequential (nested ones allowed), got "
                         f"{type(ann).__name__}; wrap a plain chain as nn.Sequential(*model.children())")
    out = []
    for name, m in ann.named_children():
        if isinstance(m, nn.Sequential):
            out += [(f"{name}.{n}", c) for n, c in _path_modules(m)]
        else:
            out.append((name, m))
    return out


def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` (Linear / Conv2d) computing ``bn(layer(x))`` with ``bn``'s running statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{type(bn).__name__} has no running statistics (track_running_stats=False): "
                         "it normalises with batch statistics and cannot be folded")
    n_out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if bn.num_features != n_out:
        raise ValueError(f"{type(bn).__name__}({bn.num_features}) follows {type(layer).__name__} with {n_out} "
                         "outputs")
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        scale = gamma / std
        folded = copy.deepcopy(layer)
        folded.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))).to(layer.weight.dtype))
        b = layer.bias if layer.bias is not None else torch.zeros_like(std)
        new_b = ((b - bn.running_mean) * scale + beta).to(layer.weight.dtype)
        if folded.bias is None:
            folded.bias = nn.Parameter(new_b)
        else:
            folded.bias.copy_(new_b)
    return folded


def fold_batchnorm(ann: nn.Sequential) -> nn.Sequential:
    """A flat copy of ``ann`` with each BatchNorm folded into the ``Linear`` / ``Conv2d`` right before it.

    ``BatchNorm1d`` must follow a ``Linear`` (inputs (N, features)), ``BatchNorm2d`` a ``Conv2d``; the fold
    uses the running statistics (eval-mode semantics): ``W <- W gamma / sigma``, ``b <- (b - mu) gamma / sigma
    + beta`` with ``sigma = sqrt(running_var + eps)``. Nested Sequentials are flattened; children are named by
    their dotted path in ``ann`` (``"features.0"`` becomes ``"features_0"``). The copy is in eval mode;
    ``ann`` is not modified. Raises ``ValueError`` for a BatchNorm anywhere else.
    """
    mods = _path_modules(ann)
    out: list[tuple[str, nn.Module]] = []
    for name, m in mods:
        if isinstance(m, _BN):
            prev = out[-1][1] if out else None
            want = nn.Linear if isinstance(m, nn.BatchNorm1d) else nn.Conv2d
            if not isinstance(prev, want):
                where = f"{type(prev).__name__} {out[-1][0]}" if out else "the input"
                raise ValueError(f"fold_batchnorm: {type(m).__name__} at {name} follows {where}; it can only be "
                                 f"folded directly after a {want.__name__}")
            try:
                out[-1] = (out[-1][0], _fold(prev, m))
            except ValueError as e:
                raise ValueError(f"fold_batchnorm: {name}: {e}") from None
        else:
            out.append((name, copy.deepcopy(m)))
    seq = nn.Sequential()
    for name, m in out:
        seq.add_module(name.replace(".", "_"), m)
    return seq.eval()


def activation_scale(act: torch.Tensor, norm: str = "max", percentile: float = 99.9) -> float:
    """The normalisation factor ``lambda`` of one layer's activations ``act`` (any shape).

    ``"max"``: the largest activation; ``"percentile"``: the ``percentile``-th percentile (linear
    interpolation, as ``numpy.percentile`` / ``torch.quantile``) of the positive activations. Returns 0.0
    when no activation is positive.
    """
    _check_norm(norm, percentile)
    v = act.detach().flatten()
    v = v[v > 0]
    if v.numel() == 0:
        return 0.0
    if norm == "max":
        return float(v.max())
    v = v.double().sort().values
    pos = (v.numel() - 1) * percentile / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, v.numel() - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


def _check_norm(norm: str, percentile: float) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise ValueError(f"percentile must be a number in (0, 100], got {percentile!r}")


def _batches(calibration_data) -> list[torch.Tensor]:
    if isinstance(calibration_data, torch.Tensor):
        batches = [calibration_data]
    elif isinstance(calibration_data, Iterable):
        batches = [b[0] if isinstance(b, (tuple, list)) else b for b in calibration_data]
    else:
        raise ValueError(f"calibration_data must be a tensor (N, *in) or an iterable of batches, "
                         f"got {type(calibration_data).__name__}")
    if not batches:
        raise ValueError("calibration_data is empty")
    for b in batches:
        if not isinstance(b, torch.Tensor) or not b.is_floating_point():
            got = b.dtype if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"calibration_data must hold floating-point tensors (N, *in), got {got}")
        if b.dim() < 2 or b.shape[0] == 0:
            raise ValueError(f"calibration batches must be (N, *in) with N >= 1, got shape {tuple(b.shape)}")
        if b.shape[1:] != batches[0].shape[1:]:
            raise ValueError(f"calibration batches disagree on the input shape: {tuple(batches[0].shape[1:])} "
                             f"vs {tuple(b.shape[1:])}")
    return batches


class SpikingNetwork(nn.Module):
    """A converted network (build it with :func:`convert_to_snn`).

    Attributes: ``layers`` (``nn.ModuleList``: normalised ``Linear`` / ``Conv2d``, IF ``Leaky`` neurons,
    pools, ``Flatten``, ``CumulativeMaxPool``), ``output_neuron`` (IF neurons appended when the ANN does not
    end in a ReLU, else None), ``scales`` (list of float: the ``lambda`` of each converted ReLU, in order),
    ``output_scale`` (float: the ``lambda`` of the output), ``input_shape``, ``norm``, ``percentile``.

    ``forward(x, num_steps, *, encoding="analog", generator=None) -> SNNOutput``: ``x`` (B, *input_shape)
    for ``"analog"`` / ``"rate"`` (see the module docstring), (B, T, *input_shape) for ``"spikes"``
    (``num_steps`` None or T). Dtype must be the network's. Step t of the output depends only on steps
    <= t of the input, so a run of T steps also holds every shorter run (``out.spikes[:, :t]``).
    """

    def __init__(self, layers: list[nn.Module], output_neuron: Leaky | None, scales: list[float],
                 output_scale: float, input_shape: tuple[int, ...], norm: str, percentile: float):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.output_neuron = output_neuron
        self.scales = [float(v) for v in scales]
        self.output_scale = float(output_scale)
        self.input_shape = tuple(input_shape)
        self.norm, self.percentile = norm, percentile

    def extra_repr(self) -> str:
        p = f", percentile={self.percentile}" if self.norm == "percentile" else ""
        return f"norm={self.norm!r}{p}, input_shape={self.input_shape}"

    @staticmethod
    def _run_neuron(neuron: Leaky, cur: torch.Tensor) -> torch.Tensor:
        spks, mem = [], None
        for t in range(cur.shape[1]):
            spk, mem = neuron(cur[:, t]) if mem is None else neuron(cur[:, t], mem)
            spks.append(spk)
        return torch.stack(spks, 1)

    def forward(self, x: torch.Tensor, num_steps: int | None = None, *, encoding: str = "analog",
                generator: torch.Generator | None = None) -> SNNOutput:
        if encoding not in ENCODINGS:
            raise ValueError(f"SpikingNetwork: encoding must be one of {ENCODINGS}, got {encoding!r}")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"SpikingNetwork: x must be a floating-point tensor, got "
                             f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        dtype = next(self.parameters()).dtype
        if x.dtype != dtype:
            raise ValueError(f"SpikingNetwork: x has dtype {x.dtype}, the network {dtype}")
        lead = 2 if encoding == "spikes" else 1
        if x.dim() != lead + len(self.input_shape) or tuple(x.shape[lead:]) != self.input_shape:
            want = "(B, T, *input_shape)" if encoding == "spikes" else "(B, *input_shape)"
            raise ValueError(f"SpikingNetwork: x must be {want} with input_shape={self.input_shape}, "
                             f"got {tuple(x.shape)}")
        if encoding == "spikes":
            if num_steps is not None and num_steps != x.shape[1]:
                raise ValueError(f"SpikingNetwork: num_steps={num_steps} but the spike train has T={x.shape[1]}")
            num_steps = x.shape[1]
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"SpikingNetwork: num_steps must be a positive int, got {num_steps!r}")
        B, T = x.shape[0], num_steps
        if encoding == "rate":
            if x.numel() and (x.min() < 0 or x.max() > 1):
                raise ValueError(f"SpikingNetwork: encoding='rate' needs x in [0, 1] (spike probabilities), got "
                                 f"range [{float(x.min()):.4g}, {float(x.max()):.4g}]")
            x = spikegen.rate(x, T, generator=generator)
        h, const = x, encoding == "analog"  # const: h is (B, *) and the same at every step
        cur = None  # input current of the latest neuron layer, carried through the ops after it
        for layer in self.layers:
            if isinstance(layer, Leaky):
                if const:
                    h, const = h.unsqueeze(1).expand(B, T, *h.shape[1:]), False
                cur = h
                h = self._run_neuron(layer, h)
            elif isinstance(layer, CumulativeMaxPool) and not const:
                h, cur = layer(h), None if cur is None else layer(cur)
            else:
                pool = layer.pool if isinstance(layer, CumulativeMaxPool) else layer
                if const:  # max of a constant is the constant's max: pool it directly
                    h = pool(h)
                else:
                    h = pool(h.flatten(0, 1)).unflatten(0, (B, T))
                    if cur is not None:
                        cur = None if isinstance(layer, _WEIGHT) else pool(cur.flatten(0, 1)).unflatten(0, (B, T))
        if const:
            h = h.unsqueeze(1).expand(B, T, *h.shape[1:])
        if self.output_neuron is not None:
            return SNNOutput(self._run_neuron(self.output_neuron, h), h)
        return SNNOutput(h, cur)


def _if_neuron() -> Leaky:
    return Leaky(beta=1.0, threshold=1.0, reset_mechanism="subtract")


def convert_to_snn(ann: nn.Sequential, calibration_data, *, norm: str = "max",
                   percentile: float = 99.9) -> SpikingNetwork:
    """Convert a trained ReLU network into a rate-coded IF network with data-based threshold balancing.

    ``ann``: an ``nn.Sequential`` of the supported modules (module docstring); ``calibration_data``: a
    floating tensor (N, *in) in ``ann``'s dtype, or an iterable of such batches (or of (x, ...) tuples), run
    through the ANN in eval mode to measure each layer's ``lambda``; ``norm``: ``"max"`` or ``"percentile"``
    (``percentile`` in (0, 100], of the positive activations). ``ann`` is not modified.

    Returns a :class:`SpikingNetwork`. Raises ``ValueError`` for an unsupported module (named by its path
    in ``ann``), a BatchNorm not right after a Linear / Conv2d, a ReLU with no Linear / Conv2d before it, a
    ``MaxPool2d`` with ``return_indices``, a ``Flatten`` over the batch dim, no Linear / Conv2d at all, bad
    ``norm`` / ``percentile`` or bad calibration data. A layer with no positive activation on the
    calibration data gets ``lambda = 1`` (logged as a warning). The returned network's parameters do not
    require grad (call ``requires_grad_()`` to fine-tune it through the surrogate gradients).
    """
    _check_norm(norm, percentile)
    for name, m in _path_modules(ann):
        if not isinstance(m, (*_WEIGHT, nn.ReLU, *_POOL, *_DROP, *_BN)):
            raise ValueError(f"convert_to_snn: unsupported module {name} ({type(m).__name__}); supported: "
                             f"{SUPPORTED}")
        if isinstance(m, nn.MaxPool2d) and m.return_indices:
            raise ValueError(f"convert_to_snn: {name} (MaxPool2d) has return_indices=True; only the pooled "
                             "values can be converted")
        if isinstance(m, nn.Flatten) and (m.start_dim == 0 or m.end_dim == 0):
            raise ValueError(f"convert_to_snn: {name} (Flatten) flattens the batch dim; use start_dim >= 1")
    seq = fold_batchnorm(ann)
    ops: list[tuple[str, nn.Module]] = []
    nonneg, seen_weight = False, False
    for name, m in seq.named_children():
        if isinstance(m, _DROP):
            continue
        if isinstance(m, nn.ReLU):
            if nonneg:  # its input is already >= 0 (a ReLU, then only pooling): an identity
                continue
            if not seen_weight:
                raise ValueError(f"convert_to_snn: ReLU {name} has no Linear / Conv2d before it to carry its "
                                 "threshold scale")
            nonneg = True
        elif isinstance(m, _WEIGHT):
            nonneg, seen_weight = False, True
        ops.append((name, m))
    if not seen_weight:
        raise ValueError("convert_to_snn: ann has no Linear or Conv2d layer")

    batches = _batches(calibration_data)
    dtype = next(p.dtype for _, m in ops for p in m.parameters())
    if batches[0].dtype != dtype:
        raise ValueError(f"calibration_data has dtype {batches[0].dtype}, the ANN {dtype}")
    # calibration: activations after each ReLU and at the output
    relu_idx = [i for i, (_, m) in enumerate(ops) if isinstance(m, nn.ReLU)]
    stats: dict[int, list[torch.Tensor]] = {i: [] for i in [*relu_idx, len(ops)]}
    with torch.no_grad():
        for b in batches:
            h = b
            for i, (name, m) in enumerate(ops):
                try:
                    h = m(h)
                except RuntimeError as e:
                    raise ValueError(f"convert_to_snn: calibration input of shape {tuple(b.shape)} fails at "
                                     f"{name} ({type(m).__name__}): {e}") from None
                if i in stats:
                    stats[i].append(h.flatten() if norm == "percentile" else h.max().reshape(1))
            stats[len(ops)].append(h.flatten() if norm == "percentile" else h.max().reshape(1))

    def lam(i: int, what: str) -> float:
        v = activation_scale(torch.cat(stats[i]), norm, percentile)
        if v <= 0:
            log.warning("convert_to_snn: %s has no positive activation on the calibration data; using scale 1",
                        what)
            return 1.0
        return v

    last_weight = max(i for i, (_, m) in enumerate(ops) if isinstance(m, _WEIGHT))
    ends_with_neuron = bool(relu_idx) and relu_idx[-1] > last_weight
    relu_scale = {i: lam(i, f"ReLU {ops[i][0]}") for i in relu_idx}
    out_scale = relu_scale[relu_idx[-1]] if ends_with_neuron else lam(len(ops), "the output")
    layers: list[nn.Module] = []
    scale_in = 1.0
    for i, (_, m) in enumerate(ops):
        if isinstance(m, _WEIGHT):
            nxt = next((j for j in range(i + 1, len(ops)) if isinstance(ops[j][1], (*_WEIGHT, nn.ReLU))), None)
            if nxt is not None and isinstance(ops[nxt][1], nn.ReLU):
                scale_out = relu_scale[nxt]
            elif nxt is None:
                scale_out = out_scale
            else:  # another weight layer follows with no ReLU between: a linear chain, keep the scale
                scale_out = scale_in
            w = copy.deepcopy(m)
            with torch.no_grad():
                w.weight.mul_(scale_in / scale_out)
                if w.bias is not None:
                    w.bias.div_(scale_out)
            layers.append(w)
            scale_in = scale_out
        elif isinstance(m, nn.ReLU):
            layers.append(_if_neuron())
        elif isinstance(m, nn.MaxPool2d):
            layers.append(CumulativeMaxPool(copy.deepcopy(m)))
        else:
            layers.append(copy.deepcopy(m))
    return SpikingNetwork(layers, None if ends_with_neuron else _if_neuron(),
                          [relu_scale[i] for i in relu_idx], scale_in, tuple(batches[0].shape[1:]),
                          norm, percentile).to(dtype).requires_grad_(False)
