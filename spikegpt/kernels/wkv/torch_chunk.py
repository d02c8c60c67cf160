"""WKV in PyTorch, on every device (the fast CPU path); ``wkv(..., backend="torch")`` lands here.

    y, state = wkv_torch(time_decay, time_first, k, v, state=None, mask=None, chunk_size=None)

Same contract as :func:`spikegpt.kernels.wkv`. T is cut into chunks of ``chunk_size`` tokens (``CHUNK_SIZE``
when None, read at every call), counted in real tokens: a row's outputs and final state do not depend on
its padding or on the other rows of the batch (bit for bit in fp32 on CPU). Design: ``docs/kernels.md``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..backend import compute_dtype
from .common import NEG_INF, State, empty_state, route_max_gradient

CHUNK_SIZE = 32  # tokens per chunk when the call gives none


def _wkv_step(decay, u, k, v, state: State, mask):
    """One token. decay: (C,) ``exp(time_decay) = -w``; k, v: (B, C) in the compute dtype; mask: (B,) bool or None."""
    a, b, p = state
    ww = u + k
    q = torch.maximum(p, ww)
    e1, e2 = torch.sub(p, q).exp_(), ww.sub_(q).exp_()  # (in place on fresh temporaries: fewer allocations)
    y = torch.mul(e1, a).addcmul_(e2, v).div_(torch.addcmul(e2, e1, b))  # (e1 a + e2 v) / (e1 b + e2)
    ww = p - decay  # p + w
    q = torch.maximum(ww, k)
    e1, e2 = ww.sub_(q).exp_(), torch.sub(k, q).exp_()
    new = (torch.mul(e1, a).addcmul_(e2, v), torch.addcmul(e2, e1, b), q)
    if mask is None:
        return y, new
    m = mask[:, None]
    return torch.where(m, y, 0.0), tuple(torch.where(m, n, o) for n, o in zip(new, state))


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)``, without the call when it is one already (a decode step is bound by its number of calls)."""
    return x if x.dtype == dtype else x.to(dtype)


def _plan(T: int, chunk: int) -> tuple[int, int]:
    """(L, N): chunk length (at most T) and number of chunks."""
    L = min(chunk, T)
    return L, math.ceil(T / L)


def _pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad dim 1 of a (B, T, C) tensor to length n."""
    return F.pad(x, (0, 0, 0, n - x.shape[1])) if n > x.shape[1] else x


def _wkv_chunked(w, u, k, v, state: State, mask, L: int, N: int, keep: bool = False):
    """All tokens, in three passes over (batch, chunk, channel) (``docs/kernels.md``).

    k, v: (B, N*L, C) in the compute dtype; mask: (B, N*L) bool or None. Returns y (B, N*L, C), the final
    state and, with ``keep``, the state before every token as (P, A, Bs), each (B, N*L, C): its max and its
    two sums scaled by e^-P (what the backward reads).
    """
    B, _, C = k.shape
    k, v = k.view(B, N, L, C), v.view(B, N, L, C)
    m = None if mask is None else mask.view(B, N, L, 1)

    # (1) in-chunk recurrence from an empty state; keep the state before each position. Slot t of slots_a / _b / _p
    # (L + 1, B, N, C) holds the state before position t, slot L each chunk's own contribution at its end; every
    # step writes its (contiguous) slot in place (no temporaries but two).
    slots_a = k.new_empty(L + 1, B, N, C)
    slots_b = torch.empty_like(slots_a)
    slots_p = torch.empty_like(slots_a)
    slots_a[0] = 0.0
    slots_b[0] = 0.0
    slots_p[0] = NEG_INF
    ks, vs = k.unbind(2), v.unbind(2)
    ms = None if m is None else m.unbind(2)
    t1 = k.new_empty(B, N, C)
    t2 = torch.empty_like(t1)
    add, sub, mul, maximum, addcmul = torch.add, torch.sub, torch.mul, torch.maximum, torch.addcmul
    for t in range(L):
        kt, vt = ks[t], vs[t]
        a, b, p, a1, b1, p1 = slots_a[t], slots_b[t], slots_p[t], slots_a[t + 1], slots_b[t + 1], slots_p[t + 1]
        ww = add(p, w, out=t1)
        q = maximum(ww, kt, out=p1)
        e1, e2 = sub(ww, q, out=t1).exp_(), sub(kt, q, out=t2).exp_()
        mul(e1, a, out=a1).addcmul_(e2, vt)  # e1 a + e2 v
        addcmul(e2, e1, b, out=b1)  # e1 b + e2
        if m is not None:
            for new, old in ((a1, a), (b1, b), (p1, p)):
                torch.where(ms[t], new, old, out=new)
    la, lb, lp = slots_a[L], slots_b[L], slots_p[L]  # each chunk's own contribution at its end
    at, bt, pt = (x[:L].permute(1, 2, 0, 3) for x in (slots_a, slots_b, slots_p))  # (B, N, L, C) views

    # (2) scan the chunk boundaries: the state entering chunk j, then decayed over its n_j real tokens.
    if m is None:
        count = torch.arange(L, device=k.device, dtype=k.dtype).expand(B, N, L)
        n = torch.full((B, N, 1), float(L), device=k.device, dtype=k.dtype)
    else:
        mf = m[..., 0].to(k.dtype)
        count = mf.cumsum(-1) - mf  # real tokens before t within its chunk
        n = mf.sum(-1, keepdim=True)
    nw = n * w  # (B, N, C)
    a, b, p = state
    ins = []
    for nwj, laj, lbj, lpj in zip(nw.unbind(1), la.unbind(1), lb.unbind(1), lp.unbind(1)):
        ins.append((a, b, p))
        pw = p + nwj
        q = torch.maximum(pw, lpj)
        e1, e2 = torch.exp(pw - q), torch.exp(lpj - q)
        a, b, p = e1 * a + e2 * laj, e1 * b + e2 * lbj, q
    ai, bi, pi = (torch.stack(x, dim=1)[:, :, None] for x in zip(*ins))  # (B, N, 1, C)

    # (3) outputs
    S = torch.mul(count[..., None], w).add_(pi)  # pi + count w
    D = u + k
    if keep:  # the whole state before t, then the output from it
        P = torch.maximum(pt, S)
        et, eS = torch.exp(pt - P), torch.exp(S - P)
        A, Bs = et * at + eS * ai, et * bt + eS * bi
        q = torch.maximum(P, D)
        e1, e2 = torch.exp(P - q), torch.exp(D - q)
        y = (e1 * A + e2 * v) / (e1 * Bs + e2)
        kept = tuple(x.reshape(B, N * L, C) for x in (P, A, Bs))
    else:  # (et at + eS ai + eD v) / (et bt + eS bi + eD), in place
        M = torch.maximum(pt, S)
        torch.maximum(M, D, out=M)
        et = torch.sub(pt, M).exp_()
        eS = S.sub_(M).exp_()
        eD = D.sub_(M).exp_()
        y = torch.mul(et, at).addcmul_(eS, ai).addcmul_(eD, v)
        y.div_(et.mul_(bt).addcmul_(eS, bi).add_(eD))
        kept = None
    if m is not None:
        y = torch.where(m, y, 0.0)
    return y.reshape(B, N * L, C), (a, b, p), kept


def _wkv_chunked_backward(w, u, k, v, y, kept, state0, stateT, mask, gy, gT, L: int, N: int):
    """Gradients of ``_wkv_chunked`` (w, u, k, v and the incoming state) from dL/dy ``gy`` and dL/d(final
    state) ``gT``: the adjoint recurrence ``x_{t-1} = f_t x_t + c_t`` (``f_t <= 1``) in the forward's three
    passes, run backwards (``docs/kernels.md``). Returns (gw, gu, gk, gv, ga0, gb0, gp0).
    """
    B, TT, C = k.shape
    a0, b0, _ = state0
    aT, bT, pT = stateT
    ga, gb, gp = gT
    P, A, Bs = kept
    real = None if mask is None else mask[..., None]
    if real is not None:
        gy = torch.where(real, gy, 0.0)  # y is a constant 0 at padding
    Pn = torch.cat([P[:, 1:], pT[:, None]], 1)  # the max after each token (held through padding)
    D = u + k
    q = torch.maximum(P, D)
    e1, e2 = torch.exp(P - q), torch.exp(D - q)
    gyd = gy / (e1 * Bs + e2)
    ca = gyd * e1  # d y_t / d (state before t), times gy
    cb = -ca * y
    bonus = gyd * e2  # d y_t / d v_t through the current token's own term, times gy
    f = torch.exp(w + P - Pn)
    g = torch.exp(k - Pn)  # e^{k_t} in the scaled update
    if real is not None:
        f = torch.where(real, f, 1.0)  # padding holds the state
        g = torch.where(real, g, 0.0)

    # (1) inside every chunk, backwards from a zero adjoint at its end
    fs, cas, cbs = (x.view(B, N, L, C).unbind(2) for x in (f, ca, cb))
    xa = k.new_zeros(B, N, C)
    xb = k.new_zeros(B, N, C)
    prod = k.new_ones(B, N, C)
    after = [None] * L  # (xa, xb, product of f) for the state after each position
    for t in range(L - 1, -1, -1):
        after[t] = (xa, xb, prod)
        xa = torch.addcmul(cas[t], fs[t], xa)
        xb = torch.addcmul(cbs[t], fs[t], xb)
        prod = fs[t] * prod
    # (2) scan the chunk ends from the last: the adjoint arriving at each chunk's final state
    end_a, end_b = ga, gb
    ends = [None] * N
    for j in range(N - 1, -1, -1):
        ends[j] = (end_a, end_b)
        end_a = torch.addcmul(xa[:, j], prod[:, j], end_a)
        end_b = torch.addcmul(xb[:, j], prod[:, j], end_b)
    ga0, gb0 = end_a, end_b  # the adjoint of the incoming state
    # (3) every position: the adjoint of the state after t
    la, lb, lprod = (torch.stack(x, dim=2) for x in zip(*after))  # (B, N, L, C)
    ea, eb = (torch.stack(x, dim=1)[:, :, None] for x in zip(*ends))  # (B, N, 1, C)
    XA = torch.addcmul(la, lprod, ea).view(B, TT, C)
    XB = torch.addcmul(lb, lprod, eb).view(B, TT, C)

    gv = torch.addcmul(bonus, XA, g)
    vy = bonus * (v - y)
    gk = torch.addcmul(vy, g, torch.addcmul(XB, XA, v))
    gu = vy.sum((0, 1))
    wterm = f * (XA * A + XB * Bs)
    if real is not None:
        wterm = torch.where(real, wterm, 0.0)
    gw = wterm.sum((0, 1))

    # the returned max: routed along the argmax path of the running max
    sets = k >= P + w  # token t set the running max
    if real is not None:
        sets = sets & real
    steps = torch.arange(TT, device=k.device).view(1, TT, 1)
    last = torch.where(sets, steps, -1).amax(1)  # (B, C): the last token that set it, -1 if none
    gw_max, gp0_max = route_max_gradient(gp - ga * aT - gb * bT, last, mask, gk)
    return gw + gw_max, gu, gk, gv, ga0, gb0, ga0 * a0 + gb0 * b0 + gp0_max


class _WKVFunction(torch.autograd.Function):
    """The chunked path with its own backward (no autograd graph over the L + N Python steps)."""

    @staticmethod
    def forward(ctx, w, u, k, v, a0, b0, p0, mask, chunk):  # type: ignore[override]
        B, T, C = k.shape
        L, N = _plan(T, chunk)
        if N * L > T:  # the ragged last chunk is handled as padding
            if mask is None:
                mask = torch.ones(B, T, dtype=torch.bool, device=k.device)
            k, v = _pad_to(k, N * L), _pad_to(v, N * L)
            mask = F.pad(mask, (0, N * L - T), value=False)
        keep = any(ctx.needs_input_grad[:7])
        y, st, kept = _wkv_chunked(w, u, k, v, (a0, b0, p0), mask, L, N, keep=keep)
        if keep:
            ctx.save_for_backward(w, u, k, v, y, *kept, a0, b0, p0, *st, mask)
            ctx.shape = (T, L, N)
        return (y[:, :T] if N * L > T else y), *st

    @staticmethod
    def backward(ctx, gy, ga, gb, gp):  # type: ignore[override]
        w, u, k, v, y, P, A, Bs, a0, b0, p0, aT, bT, pT, mask = ctx.saved_tensors
        T, L, N = ctx.shape
        gy = _pad_to(gy, N * L)
        gT = tuple(torch.zeros_like(a0) if g is None else g for g in (ga, gb, gp))
        gw, gu, gk, gv, ga0, gb0, gp0 = _wkv_chunked_backward(
            w, u, k, v, y, (P, A, Bs), (a0, b0, p0), (aT, bT, pT), mask, gy, gT, L, N
        )
        return gw, gu, gk[:, :T], gv[:, :T], ga0, gb0, gp0, None, None


def _compact(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, inverse): ``order[b]`` lists row b's real positions first (in order), then its padding;
    ``inverse`` undoes it. mask: (B, T) bool."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    ramp = torch.arange(mask.shape[1], device=mask.device).expand_as(order)
    return order, torch.empty_like(order).scatter_(1, order, ramp)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Positions ``index`` (B, T) of each row of x (B, T, C)."""
    return x.gather(1, index[..., None].expand_as(x))


def wkv_torch(
    time_decay: torch.Tensor,
    time_first: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: State | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, State]:
    """WKV over (B, T, C) ``k``, ``v`` (any float dtype; accumulated in fp32, or fp64 for fp64 inputs).

    ``mask``: (B, T) bool or None. ``chunk_size``: tokens per chunk (None reads ``CHUNK_SIZE``); below 1 it
    raises ``ValueError``. Returns y (B, T, C) in v's dtype and the state after the last token, each (B, C)
    in the accumulation dtype. The other inputs are not checked here: :func:`spikegpt.kernels.wkv` does that.
    """
    B, T, C = k.shape
    chunk = CHUNK_SIZE if chunk_size is None else chunk_size
    if chunk < 1:  # checked before the one-token path, so that the error does not depend on T
        raise ValueError(f"wkv: chunk_size must be >= 1, got {chunk}")
    dt, out_dtype = compute_dtype(k), v.dtype
    decay = torch.exp(_as(time_decay, dt))  # -w
    u = _as(time_first, dt)
    st = empty_state(B, C, k.device, dt) if state is None else tuple(_as(s, dt) for s in state)
    if T == 1 and not torch.is_grad_enabled():
        y, st = _wkv_step(decay, u, _as(k[:, 0], dt), _as(v[:, 0], dt), st, None if mask is None else mask[:, 0])
        return _as(y[:, None], out_dtype), st
    w = -decay
    k, v = k.to(dt), v.to(dt)
    inverse = None
    if mask is not None:
        order, inverse = _compact(mask)
        k, v, mask = _take(k, order), _take(v, order), mask.gather(1, order)
    a, b, p = st
    y, *st = _WKVFunction.apply(w, u, k, v, a, b, p.clamp(min=NEG_INF), mask, chunk)
    if inverse is not None:
        y = _take(y, inverse)
    return y.to(out_dtype), tuple(st)
