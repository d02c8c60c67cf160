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
safe). Autograd differentiates it, including the incoming state. A single token (T = 1, the generation
step) takes a direct formula. A chunked form with an (L x L) weight matrix per channel does O(T L C)
exponentials (or, factorised, many tiny per-channel matmuls) and was slower in our CPU trials.

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


def _wkv_chunked(w, u, k, v, state: State, mask, chunk: int | None):
    """All tokens. k, v: (B, T, C) in the compute dtype; mask: (B, T) bool or None.

    Three passes, each vectorised over (batch, chunk, channel): (1) the recurrence inside every chunk
    at once, from an empty state, L steps; (2) a scan over the N chunk boundaries that gives the state
    entering each chunk; (3) every output at once, combining the in-chunk state before t, the entering
    state decayed over the real tokens before t, and the current token's bonus term.
    """
    B, T, C = k.shape
    L = chunk or min(64, max(4, math.ceil(math.sqrt(T))))  # L + N Python steps: smallest near sqrt(T)
    L = min(L, T)
    N = math.ceil(T / L)
    pad = N * L - T
    if pad:  # the ragged last chunk is handled as padding
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=k.device)
        k, v = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad), value=False)
    k, v = k.view(B, N, L, C), v.view(B, N, L, C)
    m = None if mask is None else mask.view(B, N, L, 1)

    # (1) in-chunk recurrence from an empty state; keep the state before each position.
    a = k.new_zeros(B, N, C)
    b = k.new_zeros(B, N, C)
    p = k.new_full((B, N, C), NEG_INF)
    before = []
    ks, vs = k.unbind(2), v.unbind(2)  # unbind, not indexing: its backward is one stack, not L zero-fills
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
    a, b, p = state[0], state[1], state[2].clamp(min=NEG_INF)
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
    M = torch.maximum(torch.maximum(pt, S), D)
    et, eS, eD = torch.exp(pt - M), torch.exp(S - M), torch.exp(D - M)
    y = (et * at + eS * ai + eD * v) / (et * bt + eS * bi + eD)
    if m is not None:
        y = torch.where(m, y, 0.0)
    return y.reshape(B, N * L, C)[:, :T], (a, b, p)


def _wkv_torch(time_decay, time_first, k, v, state, mask, chunk=CHUNK):
    B, T, C = k.shape
    dt = compute_dtype(k)
    w = -torch.exp(time_decay.to(dt))
    u = time_first.to(dt)
    st = _empty_state(B, C, k.device, dt) if state is None else tuple(s.to(dt) for s in state)
    if T == 1:
        y, st = _wkv_step(w, u, k[:, 0].to(dt), v[:, 0].to(dt), st, None if mask is None else mask[:, 0])
        return y[:, None].to(v.dtype), st
    y, st = _wkv_chunked(w, u, k.to(dt), v.to(dt), st, mask, chunk)
    return y.to(v.dtype), st


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
        backend: None (automatic: Triton on CUDA, PyTorch elsewhere), ``"torch"`` or ``"triton"``.

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
    return _wkv_torch(time_decay, time_first, k, v, state, mask)
