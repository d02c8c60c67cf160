"""Spike functions with surrogate gradients, as snnTorch-style factories.

Every factory returns a :class:`SpikeFunction`: calling it on a tensor ``x`` gives the Heaviside step
``H(x) = 1[x >= 0]`` (fires at equality, like the ``lif`` op; snnTorch fires only for ``x > 0``, which
differs only on the measure-zero set ``x == 0``), and its backward multiplies the incoming gradient by
a smooth stand-in for ``dH/dx``::

    spike = surrogate.atan(alpha=2.0)
    s = spike(mem - threshold)            # 0/1 forward, (alpha/2)/(1+(pi/2 alpha x)^2) backward

The derivative formulas are the ones in ``spikegpt.kernels.surrogate`` (shared with the fused ``lif``
op), so a named surrogate behaves identically inside the language model and in user networks.
``PRIMITIVES`` holds, for each named surrogate, the smooth function whose exact derivative the formula
is; the tests check the two against each other with autograd.

| factory                     | dH/dx                                  | smooth primitive                   |
|-----------------------------|----------------------------------------|------------------------------------|
| ``atan(alpha=2)``           | (alpha/2) / (1 + (pi/2 alpha x)^2)     | atan(pi/2 alpha x)/pi + 1/2        |
| ``fast_sigmoid(slope=25)``  | 1 / (1 + slope |x|)^2                  | x / (1 + slope |x|)                |
| ``sigmoid(slope=25)``       | slope sig(slope x) sig(-slope x)       | sig(slope x)                       |
| ``triangular(alpha=1)``     | max(0, alpha - alpha^2 |x|)            | clamped piecewise quadratic        |
| ``straight_through()``      | 1                                      | x                                  |
| ``custom(grad_fn)``         | grad_fn(x)                             | (user's)                           |
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from spikegpt.kernels.surrogate import SURROGATES, get_surrogate, heaviside

__all__ = [
    "PRIMITIVES",
    "SpikeFunction",
    "atan",
    "custom",
    "fast_sigmoid",
    "resolve",
    "resolve_differentiable",
    "sigmoid",
    "straight_through",
    "triangular",
]


def _atan_primitive(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.atan(math.pi / 2 * alpha * x) / math.pi + 0.5


def _fast_sigmoid_primitive(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return x / (1 + alpha * x.abs())


def _sigmoid_primitive(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.sigmoid(alpha * x)


def _triangular_primitive(x: torch.Tensor, alpha: float) -> torch.Tensor:
    # integral of max(0, alpha - alpha^2 |x|): 1/2 + alpha x - alpha^2 x |x| / 2 inside, 0 / 1 outside
    y = x.clamp(-1 / alpha, 1 / alpha)
    return 0.5 + alpha * y - alpha * alpha * y * y.abs() / 2


def _straight_through_primitive(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return x


PRIMITIVES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "atan": _atan_primitive,
    "fast_sigmoid": _fast_sigmoid_primitive,
    "sigmoid": _sigmoid_primitive,
    "triangular": _triangular_primitive,
    "straight_through": _straight_through_primitive,
}


class _CustomHeaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grad_fn):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.grad_fn = grad_fn
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * ctx.grad_fn(x), None


class SpikeFunction:
    """A Heaviside spike with a surrogate backward: ``fn(x) -> (x >= 0)`` as x's dtype, same shape.

    ``name`` is the kernel surrogate it uses (``None`` for ``custom``), ``alpha`` its parameter, and
    ``grad(x)`` the derivative the backward applies. Named spike functions can be handed to the fused
    ``lif`` op (``LIF`` module); custom ones run through a per-step loop instead.
    """

    def __init__(
        self, name: str | None, alpha: float = 1.0, grad_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    ):
        if name is None:
            if grad_fn is None or not callable(grad_fn):
                raise ValueError("SpikeFunction: a custom spike function needs a callable grad_fn(x)")
        else:
            get_surrogate(name)
            if alpha <= 0 and name != "straight_through":
                raise ValueError(f"surrogate {name!r}: its parameter must be positive, got {alpha}")
        self.name = name
        self.alpha = float(alpha)
        self._grad_fn = grad_fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.name is None:
            return _CustomHeaviside.apply(x, self._grad_fn)
        return heaviside(x, self.name, self.alpha)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate derivative ``dH/dx`` at ``x`` (same shape), as the backward uses it."""
        if self.name is None:
            return self._grad_fn(x)
        return SURROGATES[self.name](x, self.alpha)

    def __repr__(self) -> str:
        if self.name is None:
            return f"custom({getattr(self._grad_fn, '__name__', 'grad_fn')})"
        return f"{self.name}(alpha={self.alpha})"


def atan(alpha: float = 2.0) -> SpikeFunction:
    """ArcTan surrogate (SpikeGPT's and snnTorch's default): ``dH/dx = (alpha/2) / (1 + (pi/2 alpha x)^2)``."""
    return SpikeFunction("atan", alpha)


def fast_sigmoid(slope: float = 25.0) -> SpikeFunction:
    """Fast sigmoid (SuperSpike, snnTorch's ``fast_sigmoid(slope=25)``): ``dH/dx = 1 / (1 + slope |x|)^2``."""
    return SpikeFunction("fast_sigmoid", slope)


def sigmoid(slope: float = 25.0) -> SpikeFunction:
    """Logistic surrogate ``dH/dx = slope * sig(slope x) * sig(-slope x)``: finite (0, never NaN) for any x."""
    return SpikeFunction("sigmoid", slope)


def triangular(alpha: float = 1.0) -> SpikeFunction:
    """A real triangle: ``dH/dx = max(0, alpha - alpha^2 |x|)``, peak ``alpha`` at 0, half-width ``1/alpha``, area 1."""
    return SpikeFunction("triangular", alpha)


def straight_through() -> SpikeFunction:
    """Straight-through estimator: ``dH/dx = 1`` everywhere."""
    return SpikeFunction("straight_through", 1.0)


def custom(grad_fn: Callable[[torch.Tensor], torch.Tensor]) -> SpikeFunction:
    """A spike function whose backward is ``grad_out * grad_fn(x)``; ``grad_fn`` maps x to a same-shape tensor."""
    return SpikeFunction(None, grad_fn=grad_fn)


def resolve(spike_grad: SpikeFunction | Callable[[torch.Tensor], torch.Tensor] | str | None) -> Callable:
    """Normalise a neuron's ``spike_grad`` argument: None -> ``atan(2.0)``, a name -> that factory's default
    (kernel surrogate names, e.g. ``"fast_sigmoid"``), a callable (``SpikeFunction`` or any ``x -> spikes``
    function, e.g. snnTorch's) -> itself."""
    if spike_grad is None:
        return atan()
    if isinstance(spike_grad, str):
        factories = {"atan": atan, "fast_sigmoid": fast_sigmoid, "sigmoid": sigmoid, "triangular": triangular,
                     "straight_through": straight_through}
        if spike_grad not in factories:
            raise ValueError(f"unknown surrogate {spike_grad!r}; choose one of {sorted(factories)}")
        return factories[spike_grad]()
    if not callable(spike_grad):
        raise ValueError(f"spike_grad must be a surrogate name or a callable, got {type(spike_grad).__name__}")
    return spike_grad


def resolve_differentiable(spike_grad, who: str, why: str) -> SpikeFunction:
    """:func:`resolve`, for a learning rule that needs the surrogate's derivative in closed form: ``ValueError``
    naming ``who`` and ``why`` unless the result is a :class:`SpikeFunction` (a plain callable has no derivative)."""
    spike_fn = resolve(spike_grad)
    if not isinstance(spike_fn, SpikeFunction):
        raise ValueError(f"{who}: spike_grad must be a spikegpt.snn.surrogate spike function ({why})")
    return spike_fn
