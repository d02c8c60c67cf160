"""Plain loop reference of the multi-step LIF neuron: the definition in code, used only by tests.

    h_t = v_{t-1} + (x_t - (v_{t-1} - v_reset)) / tau        charge
    s_t = H(h_t - threshold)                                  fire (at equality too)
    v_t = h_t (1 - s_t) + v_reset s_t                         hard reset
    v_t = h_t - s_t threshold                                 soft reset (v_reset=None)

The backward of H is the chosen surrogate; the reset path is differentiated unless ``detach_reset``.
A position where ``mask`` is 0 holds the membrane and emits no spike.
"""

from __future__ import annotations

import torch

from ..backend import compute_dtype
from ..surrogate import heaviside


def lif_naive(
    x: torch.Tensor,
    v: torch.Tensor | None = None,
    *,
    tau: float = 2.0,
    threshold: float = 1.0,
    v_reset: float | None = 0.0,
    detach_reset: bool = False,
    surrogate: str = "atan",
    alpha: float = 2.0,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step LIF with autograd through every step. x: (B, T, C). Returns (spikes, v_final)."""
    B, T, C = x.shape
    dt = compute_dtype(x)
    v = x.new_zeros(B, C, dtype=dt) if v is None else v.to(dt)
    base = 0.0 if v_reset is None else v_reset
    out = []
    for t in range(T):
        h = v + (x[:, t].to(dt) - (v - base)) / tau
        s = heaviside(h - threshold, surrogate, alpha)
        sr = s.detach() if detach_reset else s
        v_new = h * (1 - sr) + v_reset * sr if v_reset is not None else h - sr * threshold
        if mask is not None:
            m = mask[:, t, None].bool()
            s = torch.where(m, s, torch.zeros_like(s))
            v_new = torch.where(m, v_new, v)
        v = v_new
        out.append(s)
    spikes = torch.stack(out, dim=1) if out else x.new_zeros(B, 0, C, dtype=dt)
    return spikes.to(x.dtype), v
