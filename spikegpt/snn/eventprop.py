"""Exact spike-time gradients by the adjoint method (EventProp, Wunderlich & Pehle 2021).

The model is a feed-forward network of current-based LIF neurons in continuous time (the paper's)::

    dV/dt = (-V + I) / tau_mem        dI/dt = -I / tau_syn + sum_j w_ij sum_k delta(t - t_j^k)

A presynaptic spike of neuron j at t_j^k makes every I_i jump by w_ij; when V_i reaches ``threshold``
from below, neuron i spikes and V_i is reset to 0 (I_i is untouched). Input spike times drive layer 1,
whose spikes drive layer 2, and so on, over the window [0, t_max].

**Forward (exact, event based).** Between events the state has a closed form: with
``c0 = tau_syn / (tau_syn - tau_mem)``, ``V(t) = A e^{-t/tau_mem} + C e^{-t/tau_syn}`` where
``C = c0 sum w e^{t_e/tau_syn}`` (over input events so far) and ``A = -c0 sum w e^{t_e/tau_mem} -
threshold sum_r e^{t_r/tau_mem}`` (over the neuron's own resets so far): a reset subtracts
``threshold e^{-(t - t_r)/tau_mem}`` from V. Such a V has at most one critical point (closed form), so on
each inter-event interval the first crossing is bracketed on a piece where V increases, and found by
safeguarded Newton (bisection fallback) to machine precision; there is no time grid. A layer is
simulated spike by spike: iteration k finds every neuron's k-th spike at once (all intervals in
parallel), and only neurons that just fired search again. Coefficients are kept in absolute time, so
``t_max / min(tau_mem, tau_syn)`` must stay below about 690 (float64) or 68 (float32); ``tau_mem`` must
differ from ``tau_syn`` (the solution form degenerates at equality).

**Backward (adjoint).** Here ``lambda_V(t) = dL/dV(t)`` and ``lambda_I(t) = dL/dI(t)`` (the paper's
Lagrange multipliers are ``-lambda_V / tau_mem`` and ``-lambda_I / tau_syn``). Backwards in time they
obey ``tau_mem lambda_V' = -lambda_V``, ``tau_syn lambda_I' = -lambda_I + (tau_syn / tau_mem) lambda_V``
(' = d/d(-t)), which are integrated in closed form between events. At a spike of neuron i at t
(``I`` its current there, ``G = dL/dt`` the loss's direct dependence on that time plus the effect of
moving the spike's jumps in the next layer, ``G_next = sum_k w_ki (lambda_I,k / tau_syn -
lambda_V,k / tau_mem)``), the paper's jump is::

    lambda_V,i(t-) = (I lambda_V,i(t+) - tau_mem G) / (I - threshold)        lambda_I,i continuous

and ``dL/dw_ij = sum_k lambda_I,i(t_j^k)`` over the presynaptic spikes; the same ``G_next`` for the
first layer is ``dL/d(input time)``. ``EventPropFunction`` wraps this as a ``torch.autograd.Function``
(``loss.backward()`` gives the EventProp gradient of the weights and of the input times).

**Neurons that never fire, and caps.** Loss helpers read first spike times with silent neurons at
``t_max`` and a zero gradient (``first_spike_times``), as in the paper's implementation. ``max_spikes``
(per layer) silences a neuron after its ``max_spikes``-th spike: that is part of the model (downstream
never sees later spikes) and the gradient is exact for it; with a loss on first output spikes,
``max_spikes=1`` on the output layer changes nothing but the cost. Losses on membrane voltages are
not supported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EventPropFunction",
    "EventPropNet",
    "EventPropParams",
    "event_forward",
    "eventprop_lif",
    "first_spike_times",
    "latency_times",
    "membrane_potential",
    "ttfs_accuracy",
    "ttfs_loss",
]

logger = logging.getLogger(__name__)

_HARD_CAP = 10_000  # spikes per neuron when max_spikes is None (a runaway neuron raises instead)
_NEWTON_ITERS = 100


class EventPropParams(NamedTuple):
    """Neuron and window constants shared by every layer (all positive floats, ``tau_mem != tau_syn``)."""

    tau_mem: float = 20.0
    tau_syn: float = 5.0
    threshold: float = 1.0
    t_max: float = 100.0


def _check_params(p: EventPropParams, dtype: torch.dtype) -> EventPropParams:
    p = EventPropParams(*(float(v) for v in p))
    for name, v in zip(p._fields, p):
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"eventprop: {name} must be a positive finite number, got {v}")
    if abs(p.tau_mem - p.tau_syn) <= 1e-3 * max(p.tau_mem, p.tau_syn):
        raise ValueError(f"eventprop: tau_mem ({p.tau_mem}) must differ from tau_syn ({p.tau_syn}) by more "
                         "than 0.1% (the closed-form solution degenerates at equality)")
    limit = math.log(torch.finfo(dtype).max) - 20
    if p.t_max / min(p.tau_mem, p.tau_syn) > limit:
        raise ValueError(f"eventprop: t_max / min(tau_mem, tau_syn) = {p.t_max / min(p.tau_mem, p.tau_syn):.1f} "
                         f"exceeds {limit:.0f} for {dtype} (exponentials overflow); use float64 or rescale time")
    return p


def _check_max_spikes(max_spikes, n_layers: int) -> tuple[int, ...]:
    if max_spikes is None or isinstance(max_spikes, int):
        max_spikes = [max_spikes] * n_layers
    max_spikes = list(max_spikes)
    if len(max_spikes) != n_layers:
        raise ValueError(f"eventprop: max_spikes must be an int, None or one entry per layer ({n_layers}), "
                         f"got {len(max_spikes)} entries")
    out = []
    for m in max_spikes:
        if m is None:
            m = _HARD_CAP
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ValueError(f"eventprop: max_spikes entries must be positive ints or None, got {m!r}")
        out.append(m)
    return tuple(out)


def _check_inputs(input_times: torch.Tensor, weights: Sequence[torch.Tensor]) -> None:
    if not isinstance(input_times, torch.Tensor):
        raise ValueError(f"eventprop: input_times must be a tensor, got {type(input_times).__name__}")
    if input_times.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"eventprop: input_times must be float32 or float64 spike times, got {input_times.dtype}")
    if input_times.dim() not in (2, 3):
        raise ValueError("eventprop: input_times must be (B, N_in) (one spike per input) or (B, N_in, S) "
                         f"(inf-padded spike times), got shape {tuple(input_times.shape)}")
    if len(weights) == 0:
        raise ValueError("eventprop: need at least one weight matrix")
    n_pre = input_times.shape[1]
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise ValueError(f"eventprop: weights[{i}] must be a 2-D tensor (N_out, N_in), got "
                             f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
        if w.shape[1] != n_pre:
            raise ValueError(f"eventprop: weights[{i}] has shape {tuple(w.shape)} but its input layer has "
                             f"{n_pre} neurons")
        if w.dtype != input_times.dtype:
            raise ValueError(f"eventprop: weights[{i}] is {w.dtype} but input_times is {input_times.dtype}; "
                             "use one floating dtype")
        if w.device != input_times.device:
            raise ValueError(f"eventprop: weights[{i}] is on {w.device} but input_times on {input_times.device}")
        if not torch.isfinite(w).all():
            raise ValueError(f"eventprop: weights[{i}] has non-finite entries")
        n_pre = w.shape[0]
    if torch.isnan(input_times).any():
        raise ValueError("eventprop: input_times contains NaN (use +inf for 'no spike')")
    if (input_times < 0).any():
        raise ValueError(f"eventprop: input spike times must be >= 0 (inf for none), got min "
                         f"{input_times.min().item()}")


class _Events(NamedTuple):
    """A layer's presynaptic spikes, merged and sorted per sample (only columns some sample uses)."""

    t: torch.Tensor  # (B, E) times, padding (and times >= t_max) replaced by t_max
    src: torch.Tensor  # (B, E) int64 presynaptic neuron
    valid: torch.Tensor  # (B, E) bool
    perm: torch.Tensor  # (B, E) int64 position in the flattened (B, N_pre * S_pre) spike tensor


def _events(times: torch.Tensor, t_max: float) -> _Events:
    """times (B, N_pre, S) inf-padded -> sorted ``_Events``."""
    B, N, S = times.shape
    flat = times.reshape(B, N * S)
    src = torch.arange(N, device=times.device).repeat_interleave(S).expand(B, N * S)
    valid = flat < t_max
    key = torch.where(valid, flat, torch.full_like(flat, math.inf))
    key, perm = torch.sort(key, dim=1, stable=True)
    E = int(valid.sum(1).max().item()) if flat.numel() else 0
    key, perm = key[:, :E], perm[:, :E]
    v = torch.isfinite(key)
    return _Events(torch.where(v, key, torch.full_like(key, t_max)), torch.gather(src, 1, perm), v, perm)


def _event_weights(ev: _Events, w: torch.Tensor) -> torch.Tensor:
    """Jump sizes of every event into every neuron: (B, N, E), zero on padding."""
    return w[:, ev.src].permute(1, 0, 2) * ev.valid.unsqueeze(1).to(w.dtype)


def _solve_crossing(A, C, a, b, p: EventPropParams) -> torch.Tensor:
    """First root of ``A e^{-t/tau_mem} + C e^{-t/tau_syn} = threshold`` in [a, b] (f(a) < 0 <= f(b), f
    increasing): safeguarded Newton, bisecting whenever a step leaves the bracket. All tensors (R,)."""
    tm, ts, th = p.tau_mem, p.tau_syn, p.threshold
    eps = torch.finfo(A.dtype).eps
    t = 0.5 * (a + b)
    for _ in range(_NEWTON_ITERS):
        em, es = torch.exp(-t / tm), torch.exp(-t / ts)
        f = A * em + C * es - th
        fp = -A * em / tm - C * es / ts
        neg = f < 0
        a = torch.where(neg, t, a)
        b = torch.where(neg, b, t)
        tn = t - f / fp
        tn = torch.where((tn >= a) & (tn <= b), tn, 0.5 * (a + b))
        tol = 4 * eps * (t.abs() + ts)
        done = ((tn - t).abs() <= tol) | (b - a <= tol)
        t = tn
        if bool(done.all()):
            break
    return t


def _layer_forward(ev: _Events, w: torch.Tensor, p: EventPropParams, max_spikes: int):
    """One layer's exact spikes: (times (B, N, S) sorted, inf-padded; currents I at those times (B, N, S))."""
    tm, ts, th, T = p
    B, E = ev.t.shape
    N = w.shape[0]
    out_t, out_i = [], []
    if E == 0 or B == 0:
        z = w.new_zeros(B, N, 0)
        return z, z.clone()
    c0 = ts / (ts - tm)
    wj = _event_weights(ev, w)  # (B, N, E)
    te = ev.t.unsqueeze(1)
    isum = torch.cumsum(wj * torch.exp(te / ts), -1).reshape(B * N, E)  # I(t) = isum e^{-t/ts}
    a0 = (-c0 * torch.cumsum(wj * torch.exp(te / tm), -1)).reshape(B * N, E)
    cc = c0 * isum
    hi_all = torch.cat([ev.t[:, 1:], ev.t.new_full((B, 1), T)], 1)  # (B, E) interval ends
    R = w.new_zeros(B * N)  # sum of e^{t_r/tau_mem} over own resets
    t_last = w.new_zeros(B * N)
    active = torch.arange(B * N, device=w.device)
    for _ in range(max_spikes):
        if active.numel() == 0:
            break
        bi = active // N
        A = a0[active] - th * R[active].unsqueeze(1)
        C = cc[active]
        lo = torch.maximum(ev.t[bi], t_last[active].unsqueeze(1))
        hi = hi_all[bi]
        ok = lo < hi
        v_lo = A * torch.exp(-lo / tm) + C * torch.exp(-lo / ts)
        v_hi = A * torch.exp(-hi / tm) + C * torch.exp(-hi / ts)
        ratio = -C * tm / (A * ts)
        t_star = torch.log(torch.where(ratio > 0, ratio, torch.ones_like(ratio))) / (1 / ts - 1 / tm)
        inside = (ratio > 0) & (t_star > lo) & (t_star < hi)
        t_star = torch.where(inside, t_star, lo)
        v_star = A * torch.exp(-t_star / tm) + C * torch.exp(-t_star / ts)
        at_lo = v_lo >= th
        peak = inside & (v_star >= th)
        cross = ok & (at_lo | peak | (v_hi >= th))
        has = cross.any(1)
        if not bool(has.any()):
            break
        e = torch.argmax(cross.to(torch.uint8), 1, keepdim=True)
        act, e = active[has], e[has]

        def g(x, e=e, has=has):
            return torch.gather(x[has], 1, e).squeeze(1)

        lo_e, hi_e, ts_e = g(lo), g(hi), g(t_star)
        at_lo_e, peak_e, inside_e = g(at_lo), g(peak), g(inside)
        a_br = torch.where(at_lo_e | peak_e | ~inside_e, lo_e, ts_e)
        b_br = torch.where(at_lo_e, lo_e, torch.where(peak_e, ts_e, hi_e))
        t_spk = _solve_crossing(g(A), g(C), a_br, b_br, p)
        i_spk = torch.gather(isum[act], 1, e).squeeze(1) * torch.exp(-t_spk / ts)
        col_t = w.new_full((B * N,), math.inf)
        col_i = w.new_zeros(B * N)
        col_t[act] = t_spk
        col_i[act] = i_spk
        out_t.append(col_t)
        out_i.append(col_i)
        R[act] += torch.exp(t_spk / tm)
        t_last[act] = t_spk
        active = act
    if not out_t:
        z = w.new_zeros(B, N, 0)
        return z, z.clone()
    if len(out_t) == max_spikes:
        if max_spikes == _HARD_CAP:
            raise RuntimeError(f"eventprop: a neuron fired {_HARD_CAP} spikes in the window; pass max_spikes")
        logger.debug("eventprop: %d neurons reached max_spikes=%d and were silenced",
                     int(torch.isfinite(out_t[-1]).sum()), max_spikes)
    return torch.stack(out_t, -1).view(B, N, -1), torch.stack(out_i, -1).view(B, N, -1)


def _layer_backward(ev: _Events, w: torch.Tensor, t_spk, i_spk, g_spk, p: EventPropParams):
    """Adjoint of one layer. t_spk, i_spk, g_spk = dL/dt (B, N, S). Returns (dL/dw (N, N_pre),
    dL/d(event times) (B, E))."""
    tm, ts, th, _ = p
    c0 = ts / (ts - tm)
    B, N, S = t_spk.shape
    fired = torch.isfinite(t_spk)
    g_spk = torch.where(fired, g_spk, torch.zeros_like(g_spk))
    # segment s = (t_{s-1}, t_s) is described by its right-end values alpha_s = lambda_V(t_s-),
    # beta_s = lambda_I(t_s); segment S (after the last spike) carries no adjoint.
    t_right = torch.cat([t_spk, t_spk.new_full((B, N, 1), math.inf)], -1)
    alpha = [t_spk.new_zeros(B, N)] * (S + 1)
    beta = [t_spk.new_zeros(B, N)] * (S + 1)
    for k in range(S - 1, -1, -1):
        f = fired[..., k]
        d = torch.where(torch.isfinite(t_right[..., k + 1]) & f, t_right[..., k + 1] - t_spk[..., k],
                        torch.zeros_like(t_spk[..., k]))
        em, es = torch.exp(-d / tm), torch.exp(-d / ts)
        lv_plus = alpha[k + 1] * em
        li = beta[k + 1] * es + c0 * alpha[k + 1] * (es - em)
        cur = torch.where(f, i_spk[..., k], torch.full_like(li, 2 * th))
        alpha[k] = torch.where(f, (cur * lv_plus - tm * g_spk[..., k]) / (cur - th), torch.zeros_like(li))
        beta[k] = torch.where(f, li, torch.zeros_like(li))
    alpha, beta = torch.stack(alpha, -1), torch.stack(beta, -1)  # (B, N, S + 1)
    E = ev.t.shape[1]
    if E == 0 or S == 0:
        return torch.zeros_like(w), ev.t.new_zeros(B, E)
    te = ev.t.unsqueeze(1).expand(B, N, E).contiguous()
    seg = torch.searchsorted(t_spk.contiguous(), te)
    a_g, b_g, tr_g = (torch.gather(x, 2, seg) for x in (alpha, beta, t_right))
    d = tr_g - te
    em, es = torch.exp(-d / tm), torch.exp(-d / ts)
    lam_v = a_g * em
    lam_i = b_g * es + c0 * a_g * (es - em)
    valid = ev.valid.unsqueeze(1)
    lam_v = torch.where(valid, lam_v, torch.zeros_like(lam_v))
    lam_i = torch.where(valid, lam_i, torch.zeros_like(lam_i))
    grad_w = w.new_zeros(w.shape[1], N).index_add_(0, ev.src.reshape(-1), lam_i.permute(0, 2, 1).reshape(-1, N)).T
    grad_t = (_event_weights(ev, w) * (lam_i / ts - lam_v / tm)).sum(1)
    return grad_w.contiguous(), grad_t


def _scatter_back(grad_t: torch.Tensor, ev: _Events, shape) -> torch.Tensor:
    B = shape[0]
    out = grad_t.new_zeros(B, math.prod(shape[1:]))
    out.scatter_(1, ev.perm, grad_t)
    return out.view(shape)


def _as_3d(input_times: torch.Tensor) -> torch.Tensor:
    return input_times.unsqueeze(-1) if input_times.dim() == 2 else input_times


class EventPropFunction(torch.autograd.Function):
    """``EventPropFunction.apply(params, max_spikes, input_times, *weights) -> tuple of spike times``.

    ``params``: ``EventPropParams``; ``max_spikes``: tuple of ints, one per layer; ``input_times``
    (B, N_in) or (B, N_in, S) float, inf = no spike; ``weights[l]`` (N_l, N_{l-1}) of the same dtype.
    Returns one tensor per layer, (B, N_l, S_l), each neuron's spike times ascending, inf-padded (S_l is
    the most spikes any neuron fired). ``backward`` runs the exact adjoint and returns gradients for
    ``input_times`` and every weight; gradients arriving at padded (inf) entries are ignored. Prefer
    ``eventprop_lif`` (validates and fills defaults).
    """

    @staticmethod
    def forward(ctx, params, max_spikes, input_times, *weights):
        x = _as_3d(input_times.detach())
        layers, evs = [], []
        pre = x
        for w, m in zip(weights, max_spikes):
            ev = _events(pre, params.t_max)
            t_spk, i_spk = _layer_forward(ev, w.detach(), params, m)
            layers.append((t_spk, i_spk))
            evs.append(ev)
            pre = t_spk
        ctx.params = params
        ctx.in_shape = tuple(input_times.shape)
        ctx.pre_shapes = [tuple(x.shape)] + [tuple(t.shape) for t, _ in layers[:-1]]
        flat = [tensor for ev in evs for tensor in ev] + [tensor for pair in layers for tensor in pair]
        ctx.save_for_backward(*weights, *flat)
        ctx.n_layers = len(weights)
        return tuple(t for t, _ in layers)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        L = ctx.n_layers
        saved = ctx.saved_tensors
        weights = saved[:L]
        evs = [_Events(*saved[L + 4 * i: L + 4 * i + 4]) for i in range(L)]
        rest = saved[L + 4 * L:]
        layers = [(rest[2 * i], rest[2 * i + 1]) for i in range(L)]
        grad_ws = [None] * L
        g_down = None
        for li in range(L - 1, -1, -1):
            t_spk, i_spk = layers[li]
            g = grads[li] if grads[li] is not None else torch.zeros_like(t_spk)
            g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            if g_down is not None:
                g = g + g_down
            gw, gt = _layer_backward(evs[li], weights[li], t_spk, i_spk, g, ctx.params)
            grad_ws[li] = gw
            g_down = _scatter_back(gt, evs[li], ctx.pre_shapes[li])
        grad_in = g_down.view(ctx.in_shape)
        return (None, None, grad_in, *grad_ws)


def eventprop_lif(input_times: torch.Tensor, weights: Sequence[torch.Tensor], *, tau_mem: float = 20.0,
              tau_syn: float = 5.0, threshold: float = 1.0, t_max: float = 100.0,
              max_spikes: int | Sequence[int | None] | None = None) -> list[torch.Tensor]:
    """Exact event-driven forward of a feed-forward LIF network, differentiable by EventProp.

    ``input_times``: (B, N_in) float32/float64 (one spike per input, ``inf`` = none) or (B, N_in, S)
    (several per input, inf-padded); times must be >= 0, those >= ``t_max`` are ignored.
    ``weights``: sequence of (N_l, N_{l-1}) tensors, same dtype and device. ``max_spikes``: per-layer cap
    (int for all layers, or one entry per layer; None = unlimited). Returns a list with one (B, N_l, S_l)
    tensor per layer: spike times in [0, t_max), ascending along the last dim, inf-padded.
    ``loss.backward()`` puts the adjoint gradient in ``weights[l].grad`` and ``input_times.grad``.
    """
    weights = list(weights)
    _check_inputs(input_times, weights)
    p = _check_params(EventPropParams(tau_mem, tau_syn, threshold, t_max), input_times.dtype)
    caps = _check_max_spikes(max_spikes, len(weights))
    return list(EventPropFunction.apply(p, caps, input_times, *weights))


@torch.no_grad()
def event_forward(input_times: torch.Tensor, weights: Sequence[torch.Tensor], *, tau_mem: float = 20.0,
                  tau_syn: float = 5.0, threshold: float = 1.0, t_max: float = 100.0,
                  max_spikes: int | Sequence[int | None] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The forward of ``eventprop_lif`` without autograd, also returning each spike's synaptic current:
    a list of ``(times, currents)`` per layer, both (B, N_l, S_l) (current 0 at padding)."""
    weights = list(weights)
    _check_inputs(input_times, weights)
    p = _check_params(EventPropParams(tau_mem, tau_syn, threshold, t_max), input_times.dtype)
    caps = _check_max_spikes(max_spikes, len(weights))
    pre, out = _as_3d(input_times), []
    for w, m in zip(weights, caps):
        t_spk, i_spk = _layer_forward(_events(pre, p.t_max), w, p, m)
        out.append((t_spk, i_spk))
        pre = t_spk
    return out


def membrane_potential(input_times: torch.Tensor, weight: torch.Tensor, spike_times: torch.Tensor,
                       t: torch.Tensor, *, tau_mem: float = 20.0, tau_syn: float = 5.0,
                       threshold: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form membrane V and current I of one layer at query times, given its input and its spikes.

    ``input_times`` (B, N_in) or (B, N_in, S_in), ``weight`` (N, N_in), ``spike_times`` (B, N, S) the
    layer's own (inf-padded) spikes, ``t`` (Q,) or (B, Q) query times. Returns ``(V, I)``, each (B, N, Q):
    the sum of every past input's kernel minus ``threshold e^{-(t - t_r)/tau_mem}`` per past reset (a
    direct sum, independent of the event loop; use it to inspect or plot a simulation).
    """
    x = _as_3d(input_times)
    B = x.shape[0]
    c0 = tau_syn / (tau_syn - tau_mem)
    tq = t.expand(B, -1) if t.dim() == 1 else t
    s = tq[:, None, None, :] - x.reshape(B, 1, -1, 1)  # (B, 1, N_in * S_in, Q)
    wj = weight.repeat_interleave(x.shape[2], dim=1)[None, :, :, None]  # (1, N, N_in * S_in, 1)
    past = (s >= 0) & torch.isfinite(s)
    s0 = torch.where(past, s, torch.zeros_like(s))
    es, em = torch.exp(-s0 / tau_syn), torch.exp(-s0 / tau_mem)
    cur = (wj * torch.where(past, es, torch.zeros_like(es))).sum(2)
    v = (wj * torch.where(past, c0 * (es - em), torch.zeros_like(es))).sum(2)
    r = tq[:, None, None, :] - spike_times.unsqueeze(-1)  # (B, N, S, Q)
    fired = (r >= 0) & torch.isfinite(r)
    v = v - threshold * torch.where(fired, torch.exp(-torch.where(fired, r, torch.zeros_like(r)) / tau_mem),
                                    torch.zeros_like(r)).sum(2)
    return v, cur


def first_spike_times(spike_times: torch.Tensor, t_max: float) -> torch.Tensor:
    """First spike per neuron: (B, K, S) inf-padded -> (B, K); neurons that never fired get ``t_max``
    with zero gradient (the paper's convention)."""
    if spike_times.dim() != 3:
        raise ValueError(f"first_spike_times: spike_times must be (B, K, S), got shape {tuple(spike_times.shape)}")
    if spike_times.shape[2] == 0:  # nothing fired; stay attached to the graph (zero gradient)
        return spike_times.sum(-1) + float(t_max)
    t0 = spike_times[..., 0]
    return torch.where(torch.isfinite(t0), t0, torch.full_like(t0, float(t_max)))


def ttfs_loss(first_times: torch.Tensor, targets: torch.Tensor, *, tau0: float, tau1: float | None = None,
              alpha: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """The paper's time-to-first-spike loss: cross-entropy of ``softmax(-t / tau0)`` over the K outputs plus
    ``alpha (exp(t_y / tau1) - 1)`` for the label's own first spike time t_y (pushes it early).

    ``first_times`` (B, K) float (e.g. ``first_spike_times``), ``targets`` (B,) integer labels.
    ``reduction``: ``"mean"`` | ``"sum"`` | ``"none"`` (per-sample (B,)).
    """
    if first_times.dim() != 2:
        raise ValueError(f"ttfs_loss: first_times must be (B, K), got shape {tuple(first_times.shape)}")
    if targets.shape != (first_times.shape[0],) or targets.is_floating_point():
        raise ValueError(f"ttfs_loss: targets must be integer labels of shape ({first_times.shape[0]},), got "
                         f"{tuple(targets.shape)} {targets.dtype}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= first_times.shape[1]):
        raise ValueError(f"ttfs_loss: targets must lie in [0, {first_times.shape[1]})")
    if tau0 <= 0 or (alpha and (tau1 is None or tau1 <= 0)):
        raise ValueError(f"ttfs_loss: tau0 (and tau1 when alpha != 0) must be positive, got {tau0}, {tau1}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"ttfs_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    loss = F.cross_entropy(-first_times / tau0, targets.long(), reduction="none")
    if alpha:
        t_y = first_times.gather(1, targets.long().unsqueeze(1)).squeeze(1)
        loss = loss + alpha * (torch.exp(t_y / tau1) - 1)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def ttfs_accuracy(first_times: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose earliest output is the label: ``argmin`` over (B, K) first spike times
    (ties, e.g. no output spike at all, go to the lowest index)."""
    return (first_times.argmin(1) == targets).float().mean().item()


def latency_times(data: torch.Tensor, t_max: float, threshold: float = 0.01) -> torch.Tensor:
    """Continuous latency code: ``data`` (B, *) in [0, 1] -> spike times (B, *) = ``(1 - x) t_max`` for
    ``x > threshold``, ``inf`` (no spike) otherwise; brighter is earlier. This is ``spikegen.latency``'s
    ``"linear"`` code before rounding to steps (with ``t_max = num_steps - 1``)."""
    if not data.is_floating_point():
        raise ValueError(f"latency_times: data must be floating point, got {data.dtype}")
    if t_max <= 0:
        raise ValueError(f"latency_times: t_max must be positive, got {t_max}")
    t = (1 - data.clamp(0, 1)) * t_max
    return torch.where(data > threshold, t, torch.full_like(t, math.inf))


class EventPropNet(nn.Module):
    """Feed-forward LIF network trained by EventProp: ``EventPropNet(sizes, tau_mem=20, tau_syn=5,
    threshold=1, t_max=100, max_spikes=None, init_mean=..., init_std=..., generator=None)``.

    ``sizes = (N_in, N_1, ..., N_out)``; weights ``self.weights[l]`` (N_{l+1}, N_l), drawn from
    ``N(init_mean[l], init_std[l])`` (floats apply to every layer; defaults ``threshold / sqrt(fan_in)``
    times 2 and 1 respectively: enough drive that layers fire). ``forward(input_times)`` ->
    list of spike-time tensors per layer (see ``eventprop_lif``); ``first_spike_times(out[-1], net.t_max)``
    gives the (B, N_out) times for ``ttfs_loss``.
    """

    def __init__(self, sizes: Sequence[int], *, tau_mem: float = 20.0, tau_syn: float = 5.0, threshold: float = 1.0,
                 t_max: float = 100.0, max_spikes: int | Sequence[int | None] | None = None,
                 init_mean: float | Sequence[float] | None = None, init_std: float | Sequence[float] | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2 or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"EventPropNet: sizes must be >= 2 positive ints, got {sizes}")
        n = len(sizes) - 1
        self.params = _check_params(EventPropParams(tau_mem, tau_syn, threshold, t_max),
                                    dtype or torch.get_default_dtype())
        self.max_spikes = _check_max_spikes(max_spikes, n)

        def per_layer(v, default):
            v = [default(i) for i in range(n)] if v is None else [v] * n if isinstance(v, (int, float)) else list(v)
            if len(v) != n:
                raise ValueError(f"EventPropNet: need one init value per layer ({n}), got {len(v)}")
            return v

        means = per_layer(init_mean, lambda i: 2 * threshold / sizes[i] ** 0.5)
        stds = per_layer(init_std, lambda i: threshold / sizes[i] ** 0.5)
        self.weights = nn.ParameterList()
        for i in range(n):
            w = torch.randn(sizes[i + 1], sizes[i], generator=generator, dtype=dtype) * stds[i] + means[i]
            self.weights.append(nn.Parameter(w))

    @property
    def t_max(self) -> float:
        return self.params.t_max

    def forward(self, input_times: torch.Tensor) -> list[torch.Tensor]:
        return eventprop_lif(input_times, list(self.weights), **self.params._asdict(), max_spikes=self.max_spikes)

    def extra_repr(self) -> str:
        p = self.params
        return (f"sizes={[self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]}, tau_mem={p.tau_mem}, "
                f"tau_syn={p.tau_syn}, threshold={p.threshold}, t_max={p.t_max}")
