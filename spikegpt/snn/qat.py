"""Quantisation-aware training: fake-quantised weights and membrane states with a straight-through estimator.

A quantiser maps a float tensor to integers ``q`` and a scale ``s`` (per tensor, or per channel along
one dim) so that ``x ~ s * q``:

| mode            | integers ``q``                     | scale ``s``                                      |
|-----------------|------------------------------------|--------------------------------------------------|
| ``bits=n``      | round(x / s) clipped to +-(2^(n-1)-1) | max abs / (2^(n-1)-1), or a fixed ``scale``     |
| ``"ternary"``   | {-1, 0, +1}: sign(x) where abs(x) > 0.7 mean abs | mean abs of the kept entries (TWN)   |
| ``"binary"``    | {-1, +1}: sign(x) (0 -> +1)       | mean abs (XNOR-Net / BWN)                          |

``fake_quantize`` returns ``s * q`` in the forward and passes the gradient straight through to ``x``
(the scale is treated as a constant). ``QuantLinear`` is an ``nn.Linear`` whose forward uses the
fake-quantised weight; ``quantize_model_`` swaps a model's Linear layers for it in place, keeping the
same Parameter objects (so optimizers, state-dict names and ``save_pretrained`` are unchanged).
``state_quant`` gives a fixed-scale quantiser for neuron membranes (the ``state_quant=`` argument of
``Leaky`` & co).

On binary spike inputs a quantised layer is exactly integer arithmetic:
``QuantLinear(spikes) == (spikes @ q.T) * s.T`` (see the tests).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FakeQuantize", "QuantLinear", "fake_quantize", "quantize", "quantize_model_", "state_quant"]

logger = logging.getLogger(__name__)
Mode = int | str


def _check_mode(mode: Mode) -> None:
    if isinstance(mode, bool) or not (mode in ("ternary", "binary") or (isinstance(mode, int) and 2 <= mode <= 16)):
        raise ValueError(f"quantisation mode must be a bit width 2..16, 'ternary' or 'binary', got {mode!r}")


def _reduce_dims(x: torch.Tensor, dim: int | None) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(x.dim()))
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"per-channel dim {dim} is out of range for a {x.dim()}-d tensor")
    dim %= x.dim()
    return tuple(d for d in range(x.dim()) if d != dim)


def quantize(x: torch.Tensor, mode: Mode = 8, *, dim: int | None = None,
             scale: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` (any shape) to integers ``q`` (int32, x's shape) and a scale (float, broadcastable to x).

    ``mode``: bit width n (symmetric range +-(2^(n-1)-1)), ``"ternary"`` or ``"binary"``. ``dim``: one
    scale per index along that dim (per-channel; e.g. 0 for a Linear weight's output rows), else one
    for the whole tensor. ``scale``: a fixed scale for the n-bit mode (e.g. for membranes) instead of
    the max-abs one. ``x ~ scale * q``; ``fake_quantize`` returns exactly ``scale * q``.
    """
    _check_mode(mode)
    xd = x.detach()
    dims = _reduce_dims(xd, dim)
    a = xd.abs()
    if mode == "binary":
        s = a.mean(dim=dims, keepdim=True) if dims else a
        q = torch.where(xd >= 0, 1, -1)
    elif mode == "ternary":
        delta = 0.7 * (a.mean(dim=dims, keepdim=True) if dims else a)
        keep = a > delta
        s = (a * keep).sum(dim=dims, keepdim=True) / keep.sum(dim=dims, keepdim=True).clamp_min(1)
        q = torch.sign(xd) * keep
    else:
        qmax = 2 ** (mode - 1) - 1
        if scale is None:
            s = (a.amax(dim=dims, keepdim=True) if dims else a) / qmax
            s = torch.where(s > 0, s, torch.ones_like(s))
        else:
            s = torch.as_tensor(scale, dtype=xd.dtype, device=xd.device)
            if (s <= 0).any():
                raise ValueError(f"quantize: scale must be positive, got {scale}")
        q = torch.clamp(torch.round(xd / s), -qmax, qmax)
    return q.to(torch.int32), s.to(xd.dtype)


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mode, dim, scale):  # type: ignore[override]
        q, s = quantize(x, mode, dim=dim, scale=scale)
        return q.to(x.dtype) * s

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g, None, None, None


def fake_quantize(x: torch.Tensor, mode: Mode = 8, *, dim: int | None = None,
                  scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """``scale * q`` from ``quantize(x, mode, dim=dim, scale=scale)`` in x's shape and dtype, with a
    straight-through backward (``d out / d x = 1``)."""
    _check_mode(mode)
    return _FakeQuantSTE.apply(x, mode, dim, scale)


class FakeQuantize(nn.Module):
    """Module form of ``fake_quantize`` (no parameters): ``FakeQuantize(8)``, ``FakeQuantize("ternary", dim=0)``,
    ``FakeQuantize(8, scale=1/64)``. Usable as a neuron's ``state_quant``."""

    def __init__(self, mode: Mode = 8, *, dim: int | None = None, scale: float | None = None):
        super().__init__()
        _check_mode(mode)
        if scale is not None and (not isinstance(mode, int) or scale <= 0):
            raise ValueError("FakeQuantize: a fixed scale needs an integer bit width and must be positive")
        self.mode, self.dim, self.scale = mode, dim, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, self.mode, dim=self.dim, scale=self.scale)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, dim={self.dim}, scale={self.scale}"


def state_quant(bits: int = 8, v_max: float = 2.0, scale: float | None = None) -> FakeQuantize:
    """Fixed-scale membrane quantiser: ``bits``-bit signed grid with step ``scale`` (default
    ``v_max / (2^(bits-1) - 1)``, i.e. the grid covers [-v_max, v_max]). Pass it as ``state_quant=``."""
    if scale is None:
        if v_max <= 0:
            raise ValueError(f"state_quant: v_max must be positive, got {v_max}")
        scale = v_max / (2 ** (bits - 1) - 1)
    return FakeQuantize(bits, scale=scale)


class QuantLinear(nn.Linear):
    """``nn.Linear`` with a fake-quantised weight: ``y = x @ (s * q).T + bias`` (bias kept in float).

    ``QuantLinear.from_linear(linear, mode=8, per_channel=True)`` wraps an existing layer, sharing its
    Parameters. ``quantized_weight()`` returns the integer weight (out, in) and its scale (out, 1) or ().
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, mode: Mode = 8,
                 per_channel: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight_quant = FakeQuantize(mode, dim=0 if per_channel else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: Mode = 8, per_channel: bool = True) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, mode=mode,
                per_channel=per_channel, device="meta")
        q.weight = linear.weight
        q.bias = linear.bias
        return q

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize(self.weight, self.weight_quant.mode, dim=self.weight_quant.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_quant(self.weight), self.bias)


def quantize_model_(model: nn.Module, bits: Mode = 8, *, exclude: Iterable[str] = (),
                    per_channel: bool = True) -> list[str]:
    """Swap every ``nn.Linear`` in ``model`` (in place) for a ``QuantLinear`` with weight mode ``bits``
    (bit width, ``"ternary"`` or ``"binary"``), except those whose qualified name equals or ends with
    ``"." +`` a string in ``exclude`` (e.g. ``exclude=("head",)``). Parameters are shared, so existing
    optimizers keep working. Returns the names swapped."""
    _check_mode(bits)
    exclude = tuple(exclude)
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is not nn.Linear:
                continue
            if any(full == e or full.endswith("." + e) for e in exclude):
                continue
            setattr(module, child_name, QuantLinear.from_linear(child, bits, per_channel))
            swapped.append(full)
    logger.info("quantize_model_: %d Linear layers -> %r weights", len(swapped), bits)
    return swapped
