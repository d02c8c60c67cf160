"""WKV: the RWKV-4 linear-attention recurrence, in fp32 with the running-max trick.

    y, state = wkv(time_decay, time_first, k, v, state=None)

Per channel, with ``w = -exp(time_decay)`` and ``u = time_first``:

    y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{(t-1-i) w + k_i} + e^{u + k_t})

The state ``(num, den, max)`` carries the two sums scaled by ``e^{-max}``, so nothing overflows.

PyTorch path (CPU, and any device): the sequence is cut into chunks of ``CHUNK`` tokens. Inside a chunk
every pairwise weight ``e^{(t-1-i) w + k_i}`` is formed at once as a (chunk x chunk) matrix per channel,
normalised by its row maximum; only the chunk-boundary states are scanned in a Python loop over
T / CHUNK steps. Exponents are formed directly (never as a product of ``e^{-i w}`` factors, which would
overflow for strongly decaying channels), so any ``w`` and ``|k|`` up to fp32's exp range are safe.
Autograd differentiates the whole thing, including the incoming state. A single token (T = 1, the
generation step) takes a direct formula.

Padding: ``mask`` (B, T), 0 where a token is padding, makes the op hold its state there: padded tokens
neither add to the sums nor decay them, and output 0. Real tokens then get exactly what the unpadded
sequence gives. Implemented by counting real tokens instead of positions in every exponent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._backend import check_mask, compute_dtype, resolve_backend
from .wkv_reference import NEG_INF

CHUNK = 16

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


def _wkv_chunked(w, u, k, v, state: State, mask, chunk: int):
    """All tokens. k, v: (B, T, C) in the compute dtype; mask: (B, T) bool or None."""
    B, T, C = k.shape
    L = min(chunk, T)
    N = math.ceil(T / L)
    pad = N * L - T
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=k.device)
    if pad:  # the ragged last chunk is handled as padding
        k, v = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad), value=False)
    k, v, m = k.view(B, N, L, C), v.view(B, N, L, C), mask.view(B, N, L)
    mf = m.to(k.dtype)
    c = mf.cumsum(-1)  # real tokens up to and including t, within the chunk   (B, N, L)
    e = c - mf  # real tokens strictly before t
    n = c[..., -1:]  # real tokens in the chunk                                (B, N, 1)
    neg_inf = torch.tensor(float("-inf"), dtype=k.dtype, device=k.device)
    kk = torch.where(m[..., None], k, neg_inf)  # padding adds nothing

    # Chunk-local end states (as if the chunk started empty): exponent (n - c_i) w + k_i.
    E = (n - c)[..., None] * w + kk  # (B, N, L, C)
    lp = E.amax(dim=2).clamp(min=NEG_INF)  # (B, N, C)
    P = torch.exp(E - lp[:, :, None])
    la, lb = (P * v).sum(2), P.sum(2)

    # Scan the chunk boundaries: state entering chunk j, decayed by its n_j real tokens at the end.
    a, b, p = (s.clamp(min=NEG_INF) if i == 2 else s for i, s in enumerate(state))
    ins = []
    nw = n[..., 0, None] * w  # (B, N, C) total decay of each chunk
    for j in range(N):
        ins.append((a, b, p))
        pw = p + nw[:, j]
        q = torch.maximum(pw, lp[:, j])
        e1, e2 = torch.exp(pw - q), torch.exp(lp[:, j] - q)
        a, b, p = e1 * a + e2 * la[:, j], e1 * b + e2 * lb[:, j], q
    ai, bi, pi = (torch.stack(s, dim=1) for s in zip(*ins))  # (B, N, C) each

    # Outputs: incoming state decayed by e_t real tokens, earlier tokens of the chunk, and the bonus term.
    idx = torch.arange(L, device=k.device)
    before = (idx[:, None] > idx[None, :]) & m[:, :, None, :]  # i < t and i real   (B, N, L, L)
    A = (e[..., :, None] - c[..., None, :])[..., None] * w + k[:, :, None]  # (B, N, L, L, C)
    A = torch.where(before[..., None], A, neg_inf)
    S = pi[:, :, None] + e[..., None] * w  # (B, N, L, C)
    D = u + k
    M = torch.maximum(torch.maximum(A.amax(dim=3), S), D)
    PA = torch.exp(A - M[:, :, :, None])
    eS, eD = torch.exp(S - M), torch.exp(D - M)
    num = (PA * v[:, :, None]).sum(3) + eS * ai[:, :, None] + eD * v
    den = PA.sum(3) + eS * bi[:, :, None] + eD
    y = torch.where(m[..., None], num / torch.where(m[..., None], den, 1.0), 0.0)
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
    if resolve_backend(backend, k, "wkv") == "triton":
        from .wkv_triton import wkv_triton

        return wkv_triton(time_decay, time_first, k, v, state, mask=mask)
    return _wkv_torch(time_decay, time_first, k, v, state, mask)
