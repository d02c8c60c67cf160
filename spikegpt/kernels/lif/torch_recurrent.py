"""The multi-step LIF neuron in PyTorch, on every device (the fast CPU path); ``lif(..., backend="torch")``
lands here.

    spikes, v = lif_torch(x, v, mask, tau, threshold, v_reset, detach_reset, surrogate, alpha)

Same contract and equations as :func:`spikegpt.kernels.lif`. A custom autograd function: the forward keeps
only the pre-reset potential (and only when a gradient is needed), the backward is one vectorised pass and
a linear recurrence. Design: ``docs/kernels.md``.
"""

from __future__ import annotations

import torch

from ..backend import compute_dtype
from ..surrogate import get_surrogate


def _charge_fire_reset(x, v0, mask, tau, threshold, v_reset):
    """Run the recurrence without autograd. Returns the pre-reset potentials H (T, B, C) and v_T (B, C).

    The loop keeps the negated membrane ``n = -v``: a hard reset is then one ``torch.threshold`` per step. H starts
    as the (negated) drive and each step charges its row in place, ``-h_t = -x_t / tau + decay * n``.
    """
    dt = compute_dtype(x)
    decay = 1.0 - 1.0 / tau
    base = 0.0 if v_reset is None else v_reset
    T, B, C = x.shape[1], x.shape[0], x.shape[2]
    H = torch.mul(x.to(dt).transpose(0, 1), -1.0 / tau, out=x.new_empty(T, B, C, dtype=dt))  # -drive, then -h
    if base != 0.0:
        H.sub_(base / tau)
    n = -v0.to(dt)
    threshold_ = torch.threshold
    for t, h in enumerate(H.unbind(0)):
        h.add_(n, alpha=decay)
        if mask is not None:
            h.copy_(torch.where(mask[t], h, n))
        if v_reset is not None:
            new = threshold_(h, -threshold, -v_reset)
        else:
            new = h + (h <= -threshold) * threshold
        n = new if mask is None else torch.where(mask[t], new, n)
    return H.neg_(), -n


def _step(x, v, tau, threshold, v_reset):
    """One token, no gradient: x (B, 1, C), v (B, C) -> (spikes (B, 1, C), v)."""
    dt = compute_dtype(x)
    base = 0.0 if v_reset is None else v_reset
    h = torch.lerp(v.to(dt), x[:, 0].to(dt) + base, 1.0 / tau)  # v + (x - (v - v_reset)) / tau
    fire = h >= threshold
    v = torch.where(fire, v_reset, h) if v_reset is not None else h - fire * threshold
    return fire.to(x.dtype)[:, None], v


class _LIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, mask, tau, threshold, v_reset, detach_reset, surrogate, alpha):  # type: ignore[override]
        mt = None if mask is None else mask.transpose(0, 1)[..., None].contiguous()  # (T, B, 1)
        H, v = _charge_fire_reset(x, v0, mt, tau, threshold, v_reset)
        fire = H >= threshold
        if mt is not None:
            fire &= mt
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:  # training: keep h only
            ctx.save_for_backward(H, mt)
            ctx.cfg = (tau, threshold, v_reset, detach_reset, surrogate, alpha, x.dtype, v0.dtype)
        return fire.to(x.dtype).transpose(0, 1), v

    @staticmethod
    def backward(ctx, g_spikes, g_v):  # type: ignore[override]
        H, mt = ctx.saved_tensors
        tau, threshold, v_reset, detach_reset, surrogate, alpha, x_dtype, v_dtype = ctx.cfg
        dt = H.dtype
        decay = 1.0 - 1.0 / tau
        fire = H >= threshold
        if mt is not None:
            fire &= mt
        sg = get_surrogate(surrogate)(H - threshold, alpha)
        if mt is not None:
            sg = sg * mt  # the output is a constant 0 at padding
        # dv_t / dh_t
        if v_reset is None:
            dvdh = torch.ones_like(H) if detach_reset else 1.0 - threshold * sg
        else:
            dvdh = (~fire).to(dt)
            if not detach_reset:
                dvdh = dvdh + (v_reset - H) * sg
        # dh_t / dv_{t-1}: the leak, or 1 at padding (h_t = v_{t-1} there)
        dhdv = decay if mt is None else torch.full(mt.shape, decay, dtype=dt, device=H.device).masked_fill_(~mt, 1.0)
        a = g_spikes.transpose(0, 1).to(dt) * sg if g_spikes is not None else torch.zeros_like(H)
        coef = dvdh * dhdv
        rhs = a * dhdv
        # G[t]: gradient arriving at v_t from later steps; G[t-1] = rhs[t] + coef[t] G[t] (one op a step)
        G = torch.empty_like(H)
        G[-1] = 0.0 if g_v is None else g_v.to(dt)
        Gs, rs, cs = G.unbind(0), rhs.unbind(0), coef.unbind(0)
        for t in range(H.shape[0] - 1, 0, -1):
            torch.addcmul(rs[t], cs[t], Gs[t], out=Gs[t - 1])
        g_v0 = rs[0] + cs[0] * Gs[0]
        gx = G.mul_(dvdh).add_(a).div_(tau)  # (a + G dvdh) / tau, in place
        if mt is not None:
            gx = gx * mt
        g_x = gx.transpose(0, 1).to(x_dtype) if ctx.needs_input_grad[0] else None
        g_v0 = g_v0.to(v_dtype) if ctx.needs_input_grad[1] else None
        return g_x, g_v0, None, None, None, None, None, None, None


def lif_torch(x, v, mask, tau, threshold, v_reset, detach_reset, surrogate, alpha):
    """The LIF over (B, T, C) ``x`` from the (B, C) membrane ``v``; ``mask`` (B, T) bool or None.

    Returns (spikes (B, T, C) in x's dtype, final membrane (B, C) in the accumulation dtype). Arguments as
    in :func:`spikegpt.kernels.lif`, already checked there.
    """
    if x.shape[1] == 1 and mask is None and not (torch.is_grad_enabled() and (x.requires_grad or v.requires_grad)):
        return _step(x, v, tau, threshold, v_reset)  # the generation step: no autograd bookkeeping
    return _LIFFunction.apply(x, v, mask, float(tau), float(threshold), v_reset, detach_reset, surrogate, alpha)
