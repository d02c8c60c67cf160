"""Surrogate derivatives of the Heaviside step ``H(x) = 1[x >= 0]``, as pure formulas.

Each surrogate is ``grad(x, alpha) -> dH/dx`` (same shape and dtype as ``x``), finite for every finite or
infinite ``x``. Look them up by name (``SURROGATES``, ``get_surrogate``) or by integer id
(``SURROGATE_IDS``, what the Triton kernels take); ``heaviside`` is the step with a surrogate backward.
The formulas side by side: ``docs/kernels.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SurrogateGrad = Callable[[torch.Tensor, float], torch.Tensor]


def atan_grad(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """ATan surrogate (SpikeGPT's default): derivative of ``atan(pi/2 * alpha * x) / pi + 1/2``."""
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)


def fast_sigmoid_grad(x: torch.Tensor, alpha: float = 25.0) -> torch.Tensor:
    """Fast sigmoid (SuperSpike; snnTorch's default with ``slope=alpha``): ``1 / (1 + alpha|x|)^2``."""
    return 1.0 / (1.0 + alpha * x.abs()) ** 2


def sigmoid_grad(x: torch.Tensor, alpha: float = 4.0) -> torch.Tensor:
    """Logistic surrogate ``alpha * s * (1 - s)`` with ``s = sigmoid(alpha x)``.

    Written as ``alpha * sigmoid(alpha x) * sigmoid(-alpha x)``: both factors are computed by
    ``torch.sigmoid``, which never overflows, so large ``|x|`` gives 0 rather than NaN.
    """
    z = alpha * x
    return alpha * torch.sigmoid(z) * torch.sigmoid(-z)


def triangular_grad(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """A real triangle: peak ``alpha`` at 0, zero beyond ``|x| = 1/alpha``, unit area."""
    return torch.clamp(alpha - alpha * alpha * x.abs(), min=0.0)


def straight_through_grad(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Straight-through estimator: the step's gradient is taken to be 1 everywhere."""
    return torch.ones_like(x)


SURROGATES: dict[str, SurrogateGrad] = {
    "atan": atan_grad,
    "fast_sigmoid": fast_sigmoid_grad,
    "sigmoid": sigmoid_grad,
    "triangular": triangular_grad,
    "straight_through": straight_through_grad,
}
SURROGATE_IDS: dict[str, int] = {name: i for i, name in enumerate(SURROGATES)}


def get_surrogate(name: str) -> SurrogateGrad:
    """Return the derivative formula registered as ``name``; raise ``ValueError`` naming the choices."""
    try:
        return SURROGATES[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}") from None


class _HeavisideFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, name, alpha):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.name, ctx.alpha = name, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * get_surrogate(ctx.name)(x, ctx.alpha), None, None


def heaviside(x: torch.Tensor, surrogate: str = "atan", alpha: float = 2.0) -> torch.Tensor:
    """Spike ``H(x) = 1[x >= 0]`` (same shape and dtype as ``x``) with a surrogate backward."""
    get_surrogate(surrogate)
    return _HeavisideFn.apply(x, surrogate, alpha)
