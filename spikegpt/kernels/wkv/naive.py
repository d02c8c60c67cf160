"""Plain loop reference of the WKV recurrence: the definition in code, used only by tests.

Per channel, with ``w = -exp(time_decay)`` and ``u = time_first``, the state ``(a, b, p)`` holds
``num = a e^p`` and ``den = b e^p`` of ``sum_{i<t} e^{(t-1-i) w + k_i} (v_i, 1)``; each token reads

    y_t = (a e^p + e^{u + k_t} v_t) / (b e^p + e^{u + k_t})

and then updates ``num <- e^w num + e^{k_t} v_t`` (same for ``den`` with 1), all with the running max.
A position where ``mask`` is 0 leaves the state untouched and outputs 0.
"""

from __future__ import annotations

import torch

from ..backend import compute_dtype
from .common import NEG_INF


def wkv_naive(
    time_decay: torch.Tensor,
    time_first: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Token-by-token WKV. k, v: (B, T, C); state: (num, den, max) each (B, C). Returns (y, state)."""
    B, T, C = k.shape
    dt = compute_dtype(k)
    w = -torch.exp(time_decay.to(dt))
    u = time_first.to(dt)
    if state is None:
        a = k.new_zeros(B, C, dtype=dt)
        b = k.new_zeros(B, C, dtype=dt)
        p = k.new_full((B, C), NEG_INF, dtype=dt)
    else:
        a, b, p = (s.to(dt) for s in state)
    ys = []
    for t in range(T):
        kt, vt = k[:, t].to(dt), v[:, t].to(dt)
        ww = u + kt
        q = torch.maximum(p, ww)
        e1, e2 = torch.exp(p - q), torch.exp(ww - q)
        y = (e1 * a + e2 * vt) / (e1 * b + e2)
        ww = p + w
        q = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - q), torch.exp(kt - q)
        a2, b2, p2 = e1 * a + e2 * vt, e1 * b + e2, q
        if mask is not None:
            m = mask[:, t, None].bool()
            a, b, p = torch.where(m, a2, a), torch.where(m, b2, b), torch.where(m, p2, p)
            y = torch.where(m, y, torch.zeros_like(y))
        else:
            a, b, p = a2, b2, p2
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else v.new_zeros(B, 0, C, dtype=dt)
    return y.to(v.dtype), (a, b, p)
