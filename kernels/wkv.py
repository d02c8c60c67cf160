"""WKV: the RWKV-4 linear-attention recurrence, in fp32 with the running-max trick.

    y, state = wkv(time_decay, time_first, k, v, state=None)

Per channel, with ``w = -exp(time_decay)`` and ``u = time_first``:

    y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{(t-1-i) w + k_i} + e^{u + k_t})

The state ``(num, den, max)`` carries the two sums scaled by ``e^{-max}``, so nothing overflows.

PyTorch path (CPU, and any device): the sequence is cut into N chunks of L ~ sqrt(T) tokens and run in
three passes, each vectorised over (batch, chunk, channel): the recurrence inside all chunks at once
(L Python steps), a scan over the chunk boundaries (N steps, on (B, C) tensors), then every output at
once. That is L + N ~ 2 sqrt(T) Python steps instead of T, the same O(T C) work as the recurrence, and
exactly its arithmetic (running max everywhere, so any ``w`` and ``|k|`` up to fp32's exp range are
safe). The backward is written out (``_wkv_chunked_backward``): the adjoints of the two sums obey a linear
recurrence run backwards, solved in the same three vectorised passes, so autograd records no graph over
the Python steps (1.8x faster fwd+bwd than autograd through the passes at B=4, T=256, C=512 on 2 CPU
cores). A single token without gradients (the generation step) takes a direct formula. A chunked form
with an (L x L) weight matrix per channel does O(T L C) exponentials (or, factorised, many tiny
per-channel matmuls) and was slower in our CPU trials.

Padding: ``mask`` (B, T), 0 where a token is padding, makes the op hold its state there: padded tokens
neither add to the sums nor decay them, and output 0. Real tokens then get exactly what the unpadded
sequence gives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._backend import check_mask, compute_dtype, resolve_backend
from .wkv_reference import NEG_INF

CHUNK = None  # chunk length; None picks ~sqrt(T)

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _empty_state(B: int, C: int, device: torch.device, dt: torch.dtype) -> State:
    z = torch.zeros(B, C, device=device, dtype=dt)
    return z, z.clone(), torch.full((B, C), NEG_INF, device=device, dtype=dt)


def _wkv_step(w, u, k, v, state: State, mask):
    """One token. k, v: (B, C) in the compute dtype; mask: (B,) bool or None."""
    a, b, p = state
    ww = u + k
    q = torch.maximum(p, ww)
    e1, e2 = torch.exp(p - q), torch.exp(ww - q)
    y = (e1 * a + e2 * v) / (e1 * b + e2)
    ww = p + w
    q = torch.maximum(ww, k)
    e1, e2 = torch.exp(ww - q), torch.exp(k - q)
    new = (e1 * a + e2 * v, e1 * b + e2, q)
    if mask is None:
        return y, new
    m = mask[:, None]
    return torch.where(m, y, 0.0), tuple(torch.where(m, n, o) for n, o in zip(new, state))


def _plan(T: int, chunk: int | None) -> tuple[int, int]:
    """(L, N): chunk length and number of chunks. L + N Python steps are fewest near L = sqrt(T)."""
    L = min(chunk or min(64, max(4, math.ceil(math.sqrt(T)))), T)
    return L, math.ceil(T / L)


def _pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad dim 1 of a (B, T, C) tensor to length n."""
    return F.pad(x, (0, 0, 0, n - x.shape[1])) if n > x.shape[1] else x


def _wkv_chunked(w, u, k, v, state: State, mask, L: int, N: int, keep: bool = False):
    """All tokens. k, v: (B, N*L, C) in the compute dtype; mask: (B, N*L) bool or None.

    Three passes, each vectorised over (batch, chunk, channel): (1) the recurrence inside every chunk
    at once, from an empty state, L steps; (2) a scan over the N chunk boundaries that gives the state
    entering each chunk; (3) every output at once, combining the in-chunk state before t, the entering
    state decayed over the real tokens before t, and the current token's bonus term.

    Returns y (B, N*L, C), the final state and, with ``keep``, the state before every token as
    (P, A, Bs) (B, N*L, C): its max and its two sums scaled by e^-P (what the backward reads).
    """
    B, _, C = k.shape
    k, v = k.view(B, N, L, C), v.view(B, N, L, C)
    m = None if mask is None else mask.view(B, N, L, 1)

    # (1) in-chunk recurrence from an empty state; keep the state before each position.
    a = k.new_zeros(B, N, C)
    b = k.new_zeros(B, N, C)
    p = k.new_full((B, N, C), NEG_INF)
    before = []
    ks, vs = k.unbind(2), v.unbind(2)
    ms = None if m is None else m.unbind(2)
    for t in range(L):
        before.append((a, b, p))
        kt, vt = ks[t], vs[t]
        ww = p + w
        q = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - q), torch.exp(kt - q)
        new = (e1 * a + e2 * vt, e1 * b + e2, q)
        if m is None:
            a, b, p = new
        else:
            a, b, p = (torch.where(ms[t], x, y) for x, y in zip(new, (a, b, p)))
    la, lb, lp = a, b, p  # each chunk's own contribution at its end
    at, bt, pt = (torch.stack(x, dim=2) for x in zip(*before))  # (B, N, L, C)

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
    S = pi + count[..., None] * w
    D = u + k
    if keep:  # the whole state before t, then the output from it
        P = torch.maximum(pt, S)
        et, eS = torch.exp(pt - P), torch.exp(S - P)
        A, Bs = et * at + eS * ai, et * bt + eS * bi
        q = torch.maximum(P, D)
        e1, e2 = torch.exp(P - q), torch.exp(D - q)
        y = (e1 * A + e2 * v) / (e1 * Bs + e2)
        kept = tuple(x.reshape(B, N * L, C) for x in (P, A, Bs))
    else:
        M = torch.maximum(torch.maximum(pt, S), D)
        et, eS, eD = torch.exp(pt - M), torch.exp(S - M), torch.exp(D - M)
        y = (et * at + eS * ai + eD * v) / (et * bt + eS * bi + eD)
        kept = None
    if m is not None:
        y = torch.where(m, y, 0.0)
    return y.reshape(B, N * L, C), (a, b, p), kept


def _wkv_chunked_backward(w, u, k, v, y, kept, state0, stateT, mask, gy, gT, L: int, N: int):
    """Gradients of ``_wkv_chunked`` in the same three vectorised passes, run backwards.

    With ``P, A, Bs`` the state before token t and ``Pn`` the max after it, the adjoints of the two sums,
    scaled by e^P like the sums themselves (``xa = dL/dnum * e^P``), follow a linear recurrence whose
    factor ``f_t = e^{w + P_t - Pn_t}`` is at most 1:

        xa_{t-1} = f_t xa_t + gy_t e1_t / d_t          xb_{t-1} = f_t xb_t - gy_t y_t e1_t / d_t

    (e1, e2, d: the output's weights and denominator). It is solved like the forward: inside every chunk
    from zero (with the running product of f), a scan over chunk ends, then every position at once. The
    gradient of the returned max takes the argmax path of the running max: to the last key that set it
    (and to w once per real token after it), or to the incoming max.
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


def route_max_gradient(Gp, last, mask, gk):
    """Send the gradient of the returned max along the argmax path of the running max.

    The final max is ``k_j + n w`` for the last token j that set it (n: real tokens after j), or the
    incoming max plus ``n w`` when no token did. Gp (B, C): dL/d(max) with the unscaled sums held;
    last (B, C): j, or -1; mask: (B, T) or None; gk (B, T, C) fp32/fp64 gains Gp at j in place.
    Returns the share of dL/dw (C,) and of dL/d(incoming max) (B, C).
    """
    B, T, _ = gk.shape
    has = last >= 0
    at = last.clamp(min=0)
    real = torch.ones(B, T, device=gk.device, dtype=gk.dtype) if mask is None else mask.to(gk.dtype)
    nreal = real.cumsum(1)  # real tokens up to and including t
    total = nreal[:, -1:]
    after = total - torch.gather(nreal, 1, at)  # real tokens after j
    gk.scatter_add_(1, at[:, None], torch.where(has, Gp, 0.0)[:, None])
    return (Gp * torch.where(has, after, total)).sum(0), torch.where(has, 0.0, Gp)


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


def _wkv_torch(time_decay, time_first, k, v, state, mask, chunk=CHUNK):
    B, T, C = k.shape
    dt = compute_dtype(k)
    w = -torch.exp(time_decay.to(dt))
    u = time_first.to(dt)
    st = _empty_state(B, C, k.device, dt) if state is None else tuple(s.to(dt) for s in state)
    if T == 1 and not torch.is_grad_enabled():
        y, st = _wkv_step(w, u, k[:, 0].to(dt), v[:, 0].to(dt), st, None if mask is None else mask[:, 0])
        return y[:, None].to(v.dtype), st
    a, b, p = st
    y, *st = _WKVFunction.apply(w, u, k.to(dt), v.to(dt), a, b, p.clamp(min=NEG_INF), mask, chunk)
    return y.to(v.dtype), tuple(st)


def _check(time_decay, time_first, k, v, state):
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"wkv: k and v must both be (B, T, C); got {tuple(k.shape)} and {tuple(v.shape)}")
    B, T, C = k.shape
    for name, p in (("time_decay", time_decay), ("time_first", time_first)):
        if p.shape != (C,):
            raise ValueError(f"wkv: {name} must have shape (C,) = ({C},), got {tuple(p.shape)}")
    if not k.is_floating_point() or not v.is_floating_point():
        raise ValueError(f"wkv: k and v must be floating point, got {k.dtype} and {v.dtype}")
    if state is not None:
        if len(state) != 3 or any(s.shape != (B, C) for s in state):
            shapes = [tuple(s.shape) for s in state]
            raise ValueError(f"wkv: state must be (num, den, max), each (B, C) = ({B}, {C}); got {shapes}")


def wkv(
    time_decay: torch.Tensor,
    time_first: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: State | None = None,
    *,
    mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, State]:
    """RWKV-4 WKV over a sequence, continuing ``state``.

    Args:
        time_decay, time_first: (C,). The per-token decay is ``w = -exp(time_decay)``; ``u = time_first``.
        k, v: (B, T, C), fp32 / fp16 / bf16 (fp64 on the PyTorch path).
        state: None (empty) or ``(num, den, max)``, each (B, C) fp32 (fp64 for fp64 inputs).
        mask: optional (B, T); 0 marks padding, where the state is held and the output is 0.
        backend: None (automatic: Triton on CUDA, PyTorch elsewhere), ``"torch"``, ``"triton"`` or
            ``"triton_chunked"`` (the chunk-parallel Triton kernels, ``wkv_triton_chunked.py``).

    Returns:
        y: (B, T, C) in v's dtype, and the state after the last token, which continues the sequence
        exactly: ``wkv(.., k[:, :t], ..)`` then ``wkv(.., k[:, t:], .., state)`` equals one call.

    Example:
        >>> C = 4; k = torch.randn(2, 5, C); v = torch.randn(2, 5, C)
        >>> y, st = wkv(torch.zeros(C), torch.zeros(C), k, v)
        >>> y.shape, st[0].shape
        (torch.Size([2, 5, 4]), torch.Size([2, 4]))
    """
    _check(time_decay, time_first, k, v, state)
    mask = check_mask(mask, k.shape[0], k.shape[1], "wkv")
    if k.shape[1] == 0:
        raise ValueError("wkv: the sequence is empty (T = 0)")
    use = resolve_backend(backend, k, "wkv")
    if use == "triton" and backend is None and torch.float64 in (k.dtype, v.dtype):
        use = "torch"  # the kernels compute in fp32: automatic choice keeps fp64 on the PyTorch path
    if use == "triton":
        from .wkv_triton import wkv_triton

        return wkv_triton(time_decay, time_first, k, v, state, mask=mask)
    if use == "triton_chunked":
        from .wkv_triton_chunked import wkv_triton_chunked

        return wkv_triton_chunked(time_decay, time_first, k, v, state, mask=mask)
    return _wkv_torch(time_decay, time_first, k, v, state, mask)
