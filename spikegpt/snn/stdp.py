"""Pair-based spike-timing-dependent plasticity in trace form.

Each synapse sees a presynaptic trace ``x_pre`` and a postsynaptic trace ``x_post`` that decay by
``exp(-1/tau)`` per step and jump by 1 at each spike. At step t, with the traces decayed but not yet
bumped by this step's spikes::

    dW[i, j] = a_plus * post_i[t] * x_pre_j  -  a_minus * x_post_i * pre_j[t]

which sums, over all pairs of a pre spike at t_pre and a post spike at t_post (all-to-all pairing),
the classical window ``a_plus exp(-(t_post - t_pre)/tau_pre)`` for t_post > t_pre (potentiation) and
``-a_minus exp(-(t_pre - t_post)/tau_post)`` for t_pre > t_post (depression); coincident spikes
count as neither. Weights are (N_post, N_pre) like ``nn.Linear.weight``; batches are averaged.

Bounds: ``"hard"`` clips ``W + dW`` to [w_min, w_max]; ``"soft"`` (multiplicative) scales
potentiation by ``(w_max - W)`` and depression by ``(W - w_min)``, so the weights approach the bounds
smoothly; they cannot overshoot while ``a_plus * x_pre + a_minus * x_post <= 1`` (traces can exceed 1
with bursts), and the result is clipped to the bounds as a safeguard beyond that.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["STDP", "STDPState", "stdp_step"]


class STDPState(NamedTuple):
    """Synaptic traces: ``pre`` (B, N_pre) and ``post`` (B, N_post)."""

    pre: torch.Tensor
    post: torch.Tensor


def stdp_step(
    pre: torch.Tensor,
    post: torch.Tensor,
    state: STDPState | None = None,
    *,
    tau_pre: float = 20.0,
    tau_post: float = 20.0,
    a_plus: float = 0.01,
    a_minus: float = 0.012,
    weight: torch.Tensor | None = None,
    bounds: str | None = None,
    w_min: float = 0.0,
    w_max: float = 1.0,
) -> tuple[torch.Tensor, STDPState]:
    """One STDP step: pre spikes (B, N_pre), post spikes (B, N_post) -> weight change (N_post, N_pre), new traces.

    ``bounds`` None (additive, unbounded), ``"hard"`` or ``"soft"``; both bounded forms need the current
    ``weight`` (N_post, N_pre). The change is the batch mean of the per-sample updates (module docstring).
    """
    if pre.dim() != 2 or post.dim() != 2 or pre.shape[0] != post.shape[0]:
        raise ValueError(f"stdp_step: pre and post must be (B, N_pre) and (B, N_post) with the same B, got "
                         f"{tuple(pre.shape)} and {tuple(post.shape)}")
    if tau_pre <= 0 or tau_post <= 0:
        raise ValueError(f"stdp_step: time constants must be positive, got tau_pre={tau_pre}, tau_post={tau_post}")
    if bounds not in (None, "hard", "soft"):
        raise ValueError(f"stdp_step: bounds must be None, 'hard' or 'soft', got {bounds!r}")
    if bounds is not None:
        if weight is None:
            raise ValueError(f"stdp_step: bounds={bounds!r} needs the current weight")
        if weight.shape != (post.shape[1], pre.shape[1]):
            raise ValueError(f"stdp_step: weight must be (N_post, N_pre) = {(post.shape[1], pre.shape[1])}, "
                             f"got {tuple(weight.shape)}")
        if not w_min < w_max:
            raise ValueError(f"stdp_step: need w_min < w_max, got {w_min}, {w_max}")
    B = pre.shape[0]
    x_pre = (torch.zeros_like(pre) if state is None else state.pre) * math.exp(-1.0 / tau_pre)
    x_post = (torch.zeros_like(post) if state is None else state.post) * math.exp(-1.0 / tau_post)
    ltp = post.T @ x_pre / B  # (N_post, N_pre)
    ltd = x_post.T @ pre / B
    if bounds == "soft":
        w = weight.detach()
        dw = a_plus * (w_max - w) * ltp - a_minus * (w - w_min) * ltd
        dw = (w + dw).clamp(w_min, w_max) - w
    else:
        dw = a_plus * ltp - a_minus * ltd
        if bounds == "hard":
            w = weight.detach()
            dw = (w + dw).clamp(w_min, w_max) - w
    return dw, STDPState(x_pre + pre, x_post + post)


class STDP:
    """STDP for a weight (an ``nn.Linear`` or a Parameter (N_post, N_pre)) that writes into ``.grad``.

    ``stdp = STDP(layer, tau_pre=20, tau_post=20, a_plus=0.01, a_minus=0.012, bounds="soft")``; call
    ``stdp(pre, post)`` every step with that step's spikes (B, N_pre), (B, N_post); it subtracts the
    weight change from ``weight.grad`` (so gradient descent applies ``+dW``: ``SGD(lr=1)`` reproduces
    ``stdp_step`` exactly; any other optimizer applies its own scaling) and returns ``dW``. Updates
    accumulated over several steps see the weight as it will be after them (current weight minus the
    pending ``.grad``), so hard/soft bounds hold for ``SGD(lr=1)``; ``clamp_()`` re-imposes hard bounds
    after other optimizers. ``reset()`` clears the traces (e.g. between samples).
    """

    def __init__(self, layer: nn.Module | nn.Parameter, *, tau_pre: float = 20.0, tau_post: float = 20.0,
                 a_plus: float = 0.01, a_minus: float = 0.012, bounds: str | None = None, w_min: float = 0.0,
                 w_max: float = 1.0):
        weight = layer if isinstance(layer, nn.Parameter) else getattr(layer, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
            raise ValueError("STDP: layer must be a 2-D nn.Parameter or a module with a 2-D .weight Parameter")
        if bounds not in (None, "hard", "soft"):
            raise ValueError(f"STDP: bounds must be None, 'hard' or 'soft', got {bounds!r}")
        if tau_pre <= 0 or tau_post <= 0:
            raise ValueError(f"STDP: time constants must be positive, got tau_pre={tau_pre}, tau_post={tau_post}")
        self.weight = weight
        self.kw = dict(tau_pre=tau_pre, tau_post=tau_post, a_plus=a_plus, a_minus=a_minus, bounds=bounds,
                       w_min=w_min, w_max=w_max)
        self.state: STDPState | None = None

    def reset(self) -> None:
        """Clear the traces."""
        self.state = None

    @torch.no_grad()
    def __call__(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        w = self.weight
        pending = w.detach() if w.grad is None else w.detach() - w.grad
        dw, self.state = stdp_step(pre.detach(), post.detach(), self.state, weight=pending, **self.kw)
        if w.grad is None:
            w.grad = -dw
        else:
            w.grad.sub_(dw)
        return dw

    step = __call__

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clip the weight into [w_min, w_max] in place."""
        self.weight.clamp_(self.kw["w_min"], self.kw["w_max"])
