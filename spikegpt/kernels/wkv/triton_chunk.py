"""WKV as chunk-parallel Triton kernels: the T-parallel alternative to ``wkv_triton``, kept for measurement.

    y, state = wkv_triton_chunked(time_decay, time_first, k, v, state=None, *, mask=None, chunk=None)

Same contract as :func:`spikegpt.kernels.wkv`; ``wkv(..., backend="triton_chunked")`` and
``SpikeGPTConfig(kernel_backend="triton_chunked")`` land here (automatic dispatch never does). Computes in
fp32; k and v are fp32, fp16 or bf16. Registers the custom ops ``spikegpt::wkv_chunked_fwd`` and
``spikegpt::wkv_chunked_bwd``. Design (three launches each way): ``docs/kernels.md``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import NEG_INF, empty_state, route_max_gradient
from .triton_common import NEG_INF_C, fetch, scaled_pair, state_step, token

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

CHUNK = 32  # GPU: tokens per chunk (the scratch of one backward program is CHUNK x 3 x BLOCK_C fp32)
INTERPRET_CHUNK = 4
BLOCK_C = 32  # GPU: channels per program, one per thread
INTERPRET_BLOCK_C = 256


@triton.jit
def _chunk_program(td_ptr, tf_ptr, C, BLOCK: tl.constexpr):
    """This program's batch row, chunk, channels (and their bounds mask), w and u."""
    i_b = tl.program_id(1).to(tl.int64)
    o_c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_c = o_c < C
    w = -tl.exp(tl.load(td_ptr + o_c, mask=m_c, other=0.0))
    u = tl.load(tf_ptr + o_c, mask=m_c, other=0.0)
    return i_b, tl.program_id(2), o_c, m_c, w, u


@triton.jit
def _chunk_end_kernel(td_ptr, k_ptr, v_ptr, mask_ptr, end_ptr, T, C,
                      L: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
    """Pass 1: chunk j from an empty state; writes its end state (a, b, p) to end[b, j]."""
    i_b, i_j, o_c, m_c, w, _ = _chunk_program(td_ptr, td_ptr, C, BLOCK)
    b_a = tl.zeros([BLOCK], dtype=tl.float32)
    b_b = tl.zeros([BLOCK], dtype=tl.float32)
    b_p = tl.zeros([BLOCK], dtype=tl.float32) + NEG_INF_C
    for i in range(L):
        b_k, b_v, m_r = fetch(k_ptr, v_ptr, mask_ptr, i_b, i_j * L + i, T, C, o_c, m_c, HAS_MASK)
        b_a, b_b, b_p = state_step(b_a, b_b, b_p, w, b_k, b_v, m_r)
    p_e = end_ptr + ((i_b * tl.num_programs(2) + i_j) * 3) * C + o_c
    tl.store(p_e, b_a, mask=m_c)
    tl.store(p_e + C, b_b, mask=m_c)
    tl.store(p_e + 2 * C, b_p, mask=m_c)


@triton.jit
def _scan_step(j, N, i_b, o_c, m_c, w, b_a, b_b, b_p, end_ptr, n_ptr, ins_ptr, C):
    """Write the state entering chunk j, then carry it over chunk j (n_j real tokens)."""
    p_i = ins_ptr + ((i_b * N + j) * 3) * C + o_c
    tl.store(p_i, b_a, mask=m_c)
    tl.store(p_i + C, b_b, mask=m_c)
    tl.store(p_i + 2 * C, b_p, mask=m_c)
    p_e = end_ptr + ((i_b * N + j) * 3) * C + o_c
    la = tl.load(p_e, mask=m_c, other=0.0)
    lb = tl.load(p_e + C, mask=m_c, other=0.0)
    lp = tl.load(p_e + 2 * C, mask=m_c, other=0.0)
    n_j = tl.load(n_ptr + i_b * N + j + o_c * 0)
    pw = b_p + n_j * w
    e1, e2 = scaled_pair(pw - lp)
    return e1 * b_a + e2 * la, e1 * b_b + e2 * lb, tl.maximum(pw, lp)


@triton.jit
def _chunk_scan_kernel(td_ptr, a0_ptr, b0_ptr, p0_ptr, end_ptr, n_ptr, ins_ptr, a_ptr, b_ptr, p_ptr, N, C,
                       N_STATIC: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 2: the state entering every chunk, and the final state."""
    i_c = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_c = i_c * BLOCK + tl.arange(0, BLOCK)
    m_c = o_c < C
    w = -tl.exp(tl.load(td_ptr + o_c, mask=m_c, other=0.0))
    o_s = i_b * C + o_c
    b_a = tl.load(a0_ptr + o_s, mask=m_c, other=0.0)
    b_b = tl.load(b0_ptr + o_s, mask=m_c, other=0.0)
    b_p = tl.maximum(tl.load(p0_ptr + o_s, mask=m_c, other=0.0), NEG_INF_C)
    if N_STATIC > 0:  # interpreter: a compile-time trip count
        for j in range(N_STATIC):
            b_a, b_b, b_p = _scan_step(j, N, i_b, o_c, m_c, w, b_a, b_b, b_p, end_ptr, n_ptr, ins_ptr, C)
    else:
        for j in range(N):
            b_a, b_b, b_p = _scan_step(j, N, i_b, o_c, m_c, w, b_a, b_b, b_p, end_ptr, n_ptr, ins_ptr, C)
    tl.store(a_ptr + o_s, b_a, mask=m_c)
    tl.store(b_ptr + o_s, b_b, mask=m_c)
    tl.store(p_ptr + o_s, b_p, mask=m_c)


@triton.jit
def _load_state(ptr, i_b, j, N, C, o_c, m_c):
    p = ptr + ((i_b * N + j) * 3) * C + o_c
    return (tl.load(p, mask=m_c, other=0.0), tl.load(p + C, mask=m_c, other=0.0),
            tl.load(p + 2 * C, mask=m_c, other=0.0))


@triton.jit
def _chunk_out_kernel(td_ptr, tf_ptr, k_ptr, v_ptr, mask_ptr, ins_ptr, y_ptr, T, C,
                      L: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
    """Pass 3: chunk j from its entering state, writing y."""
    i_b, i_j, o_c, m_c, w, u = _chunk_program(td_ptr, tf_ptr, C, BLOCK)
    b_a, b_b, b_p = _load_state(ins_ptr, i_b, i_j, tl.num_programs(2), C, o_c, m_c)
    for i in range(L):
        t0 = i_j * L + i
        b_k, b_v, m_r = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0, T, C, o_c, m_c, HAS_MASK)
        t, m_t, o_x = token(i_b, t0, T, C, o_c, m_c)
        e1, e2 = scaled_pair(b_p - (u + b_k))
        b_y = (e1 * b_a + e2 * b_v) / (e1 * b_b + e2)
        tl.store(y_ptr + o_x, tl.where(m_r, b_y, 0.0).to(y_ptr.dtype.element_ty), mask=m_t)
        b_a, b_b, b_p = state_step(b_a, b_b, b_p, w, b_k, b_v, m_r)


@triton.jit
def _rebuild(p_scr, ins_ptr, k_ptr, v_ptr, mask_ptr, w, i_b, i_j, N, T, C, o_c, m_c,
             L: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
    """Write the state before each token of chunk j into the scratch rows; return the max after it."""
    b_a, b_b, b_p = _load_state(ins_ptr, i_b, i_j, N, C, o_c, m_c)
    for i in range(L):
        row = p_scr + i * 3 * BLOCK
        tl.store(row, b_a)
        tl.store(row + BLOCK, b_b)
        tl.store(row + 2 * BLOCK, b_p)
        b_k, b_v, m_r = fetch(k_ptr, v_ptr, mask_ptr, i_b, i_j * L + i, T, C, o_c, m_c, HAS_MASK)
        b_a, b_b, b_p = state_step(b_a, b_b, b_p, w, b_k, b_v, m_r)
    return b_p


@triton.jit
def _bwd_prologue(td_ptr, tf_ptr, k_ptr, v_ptr, mask_ptr, ins_ptr, scr_ptr, T, C,
                  L: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
    """What both backward chunk passes start with: this program's indices, w and u, its scratch rows
    filled with the chunk's states, and the max after the chunk."""
    i_b, i_j, o_c, m_c, w, u = _chunk_program(td_ptr, tf_ptr, C, BLOCK)
    N = tl.num_programs(2)
    p_scr = scr_ptr + ((i_b * N + i_j) * tl.num_programs(0) + tl.program_id(0)) * (L * 3 * BLOCK) + tl.arange(0, BLOCK)
    pn = _rebuild(p_scr, ins_ptr, k_ptr, v_ptr, mask_ptr, w, i_b, i_j, N, T, C, o_c, m_c, L, BLOCK, HAS_MASK)
    return i_b, i_j, N, o_c, m_c, w, u, p_scr, pn


@triton.jit
def _adjoint_token(p_scr, i, pn, k_ptr, v_ptr, gy_ptr, mask_ptr, w, u, i_b, t0, T, C, o_c, m_c,
                   BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
    """What the adjoint step of token t0 needs: f, g, the y-terms ca, cb, bonus, and the state before it."""
    row = p_scr + i * 3 * BLOCK
    b_a = tl.load(row)
    b_b = tl.load(row + BLOCK)
    b_p = tl.load(row + 2 * BLOCK)
    b_k, b_v, m_r = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0, T, C, o_c, m_c, HAS_MASK)
    t, m_t, o_x = token(i_b, t0, T, C, o_c, m_c)
    b_gy = tl.load(gy_ptr + o_x, mask=m_r, other=0.0).to(tl.float32)
    e1, e2 = scaled_pair(b_p - (u + b_k))
    b_y = (e1 * b_a + e2 * b_v) / (e1 * b_b + e2)
    gyd = b_gy / (e1 * b_b + e2)
    ca = gyd * e1
    cb = -ca * b_y
    bonus = gyd * e2
    f = tl.where(m_r, tl.exp(w + b_p - pn), 1.0)
    g = tl.where(m_r, tl.exp(tl.where(m_r, b_k - pn, 0.0)), 0.0)  # padding: no exp of k - (-1e38)
    return b_a, b_b, b_p, b_k, b_v, b_y, m_r, m_t, o_x, ca, cb, bonus, f, g


@triton.jit
def _chunk_adj_kernel(td_ptr, tf_ptr, k_ptr, v_ptr, gy_ptr, mask_ptr, ins_ptr, scr_ptr, adj_ptr, last_ptr, T, C,
                      L: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
    """Backward pass 1: chunk j backwards from a zero adjoint: (xa, xb) at its start, the product of f over
    it, and the index of the last token in it that set the running max (-1 if none)."""
    i_b, i_j, N, o_c, m_c, w, u, p_scr, pn = _bwd_prologue(td_ptr, tf_ptr, k_ptr, v_ptr, mask_ptr, ins_ptr, scr_ptr,
                                                           T, C, L, BLOCK, HAS_MASK)
    xa = tl.zeros([BLOCK], dtype=tl.float32)
    xb = tl.zeros([BLOCK], dtype=tl.float32)
    prod = tl.zeros([BLOCK], dtype=tl.float32) + 1.0
    last = tl.zeros([BLOCK], dtype=tl.int32) - 1
    for ii in range(L):
        i = L - 1 - ii
        t0 = i_j * L + i
        b_a, b_b, b_p, b_k, b_v, b_y, m_r, m_t, o_x, ca, cb, bonus, f, g = _adjoint_token(
            p_scr, i, pn, k_ptr, v_ptr, gy_ptr, mask_ptr, w, u, i_b, t0, T, C, o_c, m_c, BLOCK, HAS_MASK)
        sets = m_r & (b_k >= b_p + w)
        last = tl.maximum(last, tl.where(sets, o_c * 0 + t0, -1))
        xa = f * xa + ca
        xb = f * xb + cb
        prod = f * prod
        pn = b_p
    p_o = adj_ptr + ((i_b * N + i_j) * 3) * C + o_c
    tl.store(p_o, xa, mask=m_c)
    tl.store(p_o + C, xb, mask=m_c)
    tl.store(p_o + 2 * C, prod, mask=m_c)
    tl.store(last_ptr + (i_b * N + i_j) * C + o_c, last, mask=m_c)


@triton.jit
def _adj_scan_step(j, N, i_b, o_c, m_c, xa, xb, adj_ptr, ends_ptr, C):
    """Write the adjoint arriving at chunk j's end, then carry it to chunk j's start."""
    p_e = ends_ptr + ((i_b * N + j) * 2) * C + o_c
    tl.store(p_e, xa, mask=m_c)
    tl.store(p_e + C, xb, mask=m_c)
    p_a = adj_ptr + ((i_b * N + j) * 3) * C + o_c
    la = tl.load(p_a, mask=m_c, other=0.0)
    lb = tl.load(p_a + C, mask=m_c, other=0.0)
    prod = tl.load(p_a + 2 * C, mask=m_c, other=0.0)
    return la + prod * xa, lb + prod * xb


@triton.jit
def _adj_scan_kernel(ga_ptr, gb_ptr, adj_ptr, ends_ptr, ga0_ptr, gb0_ptr, N, C,
                     N_STATIC: tl.constexpr, BLOCK: tl.constexpr):
    """Backward pass 2: from the last chunk to the first, the adjoint arriving at every chunk's end."""
    i_c = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_c = i_c * BLOCK + tl.arange(0, BLOCK)
    m_c = o_c < C
    o_s = i_b * C + o_c
    xa = tl.load(ga_ptr + o_s, mask=m_c, other=0.0)
    xb = tl.load(gb_ptr + o_s, mask=m_c, other=0.0)
    if N_STATIC > 0:  # interpreter: a compile-time trip count
        for jj in range(N_STATIC):
            xa, xb = _adj_scan_step(N_STATIC - 1 - jj, N, i_b, o_c, m_c, xa, xb, adj_ptr, ends_ptr, C)
    else:
        for jj in range(N):
            xa, xb = _adj_scan_step(N - 1 - jj, N, i_b, o_c, m_c, xa, xb, adj_ptr, ends_ptr, C)
    tl.store(ga0_ptr + o_s, xa, mask=m_c)
    tl.store(gb0_ptr + o_s, xb, mask=m_c)


@triton.jit
def _chunk_grad_kernel(td_ptr, tf_ptr, k_ptr, v_ptr, gy_ptr, mask_ptr, ins_ptr, scr_ptr, ends_ptr,
                       gk_ptr, gv_ptr, gw_ptr, gu_ptr, T, C,
                       L: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
    """Backward pass 3: chunk j backwards from the adjoint arriving at its end: dk, dv, and this chunk's
    share of the time_decay (w) and time_first gradients."""
    i_b, i_j, N, o_c, m_c, w, u, p_scr, pn = _bwd_prologue(td_ptr, tf_ptr, k_ptr, v_ptr, mask_ptr, ins_ptr, scr_ptr,
                                                           T, C, L, BLOCK, HAS_MASK)
    p_e = ends_ptr + ((i_b * N + i_j) * 2) * C + o_c
    xa = tl.load(p_e, mask=m_c, other=0.0)
    xb = tl.load(p_e + C, mask=m_c, other=0.0)
    acc_w = tl.zeros([BLOCK], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK], dtype=tl.float32)
    for ii in range(L):
        i = L - 1 - ii
        t0 = i_j * L + i
        b_a, b_b, b_p, b_k, b_v, b_y, m_r, m_t, o_x, ca, cb, bonus, f, g = _adjoint_token(
            p_scr, i, pn, k_ptr, v_ptr, gy_ptr, mask_ptr, w, u, i_b, t0, T, C, o_c, m_c, BLOCK, HAS_MASK)
        vy = bonus * (b_v - b_y)
        tl.store(gv_ptr + o_x, (bonus + xa * g).to(gv_ptr.dtype.element_ty), mask=m_t)
        tl.store(gk_ptr + o_x, (vy + g * (xa * b_v + xb)).to(gk_ptr.dtype.element_ty), mask=m_t)
        acc_u += vy
        acc_w += tl.where(m_r, f * (xa * b_a + xb * b_b), 0.0)
        xa = f * xa + ca
        xb = f * xb + cb
        pn = b_p
    o_p = (i_b * N + i_j) * C + o_c
    tl.store(gw_ptr + o_p, acc_w, mask=m_c)
    tl.store(gu_ptr + o_p, acc_u, mask=m_c)


def _launch(B: int, T: int, C: int, on_gpu: bool, chunk: int | None):
    L = chunk or (CHUNK if on_gpu else INTERPRET_CHUNK)
    L = max(1, min(L, T))
    N = math.ceil(T / L)
    block = BLOCK_C if on_gpu else min(INTERPRET_BLOCK_C, triton.next_power_of_2(C))
    warps = max(1, block // 32) if on_gpu else 1
    return L, N, block, warps, (0 if on_gpu else N)


def _real_counts(mask, B, T, L, N, device):
    """(B, N) fp32: real tokens in each chunk."""
    m = torch.ones(B, T, device=device) if mask is None else mask.float()
    return torch.nn.functional.pad(m, (0, N * L - T)).view(B, N, L).sum(-1).contiguous()


def _fwd_impl(td, tf, k, v, a0, b0, p0, mask, L):
    B, T, C = k.shape
    _, N, block, warps, n_static = _launch(B, T, C, k.is_cuda, L)
    dev = k.device
    m = mask.to(torch.uint8).contiguous() if mask is not None else k  # a dummy pointer when there is no mask
    grid3 = (triton.cdiv(C, block), B, N)
    ends = torch.empty(B, N, 3, C, device=dev, dtype=torch.float32)
    _chunk_end_kernel[grid3](td, k, v, m, ends, T, C, L=L, BLOCK=block, HAS_MASK=mask is not None, num_warps=warps)
    n = _real_counts(mask, B, T, L, N, dev)
    ins = torch.empty(B, N, 3, C, device=dev, dtype=torch.float32)
    a, b, p = (torch.empty(B, C, device=dev, dtype=torch.float32) for _ in range(3))
    _chunk_scan_kernel[grid3[:2]](td, a0, b0, p0, ends, n, ins, a, b, p, N, C, N_STATIC=n_static, BLOCK=block,
                                  num_warps=warps)
    y = torch.empty(B, T, C, device=dev, dtype=v.dtype)
    _chunk_out_kernel[grid3](td, tf, k, v, m, ins, y, T, C, L=L, BLOCK=block, HAS_MASK=mask is not None,
                             num_warps=warps)
    return y, a, b, p, ins


def _bwd_impl(td, tf, k, v, a0, b0, p0, mask, ins, gy, ga, gb, gp, aT, bT, pT, L):
    B, T, C = k.shape
    _, N, block, warps, n_static = _launch(B, T, C, k.is_cuda, L)
    dev = k.device
    m = mask.to(torch.uint8).contiguous() if mask is not None else k
    grid3 = (triton.cdiv(C, block), B, N)
    scratch = torch.empty(B * N * grid3[0] * L * 3 * block, device=dev, dtype=torch.float32)
    adj = torch.empty(B, N, 3, C, device=dev, dtype=torch.float32)
    last = torch.empty(B, N, C, device=dev, dtype=torch.int32)
    _chunk_adj_kernel[grid3](td, tf, k, v, gy, m, ins, scratch, adj, last, T, C, L=L, BLOCK=block,
                             HAS_MASK=mask is not None, num_warps=warps)
    ends = torch.empty(B, N, 2, C, device=dev, dtype=torch.float32)
    ga0, gb0 = torch.empty_like(aT), torch.empty_like(aT)
    _adj_scan_kernel[grid3[:2]](ga, gb, adj, ends, ga0, gb0, N, C, N_STATIC=n_static, BLOCK=block, num_warps=warps)
    gk, gv = torch.empty_like(k), torch.empty_like(v)
    gw, gu = (torch.empty(B, N, C, device=dev, dtype=torch.float32) for _ in range(2))
    _chunk_grad_kernel[grid3](td, tf, k, v, gy, m, ins, scratch, ends, gk, gv, gw, gu, T, C, L=L, BLOCK=block,
                              HAS_MASK=mask is not None, num_warps=warps)
    gk_full = gk.float()
    gw_max, gp0_max = route_max_gradient(gp - ga * aT - gb * bT, last.amax(1), mask, gk_full)
    gw = gw.sum((0, 1)) + gw_max
    gp0 = ga0 * a0 + gb0 * b0 + gp0_max
    gp0 = torch.where(p0 >= NEG_INF, gp0, 0.0)  # the clamp of the incoming max
    return gw * -torch.exp(td), gu.sum((0, 1)), gk_full.to(k.dtype), gv, ga0, gb0, gp0


# ---- custom ops: opaque to torch.compile, differentiable through register_autograd ----

_FWD_SCHEMA = (
    "(Tensor time_decay, Tensor time_first, Tensor k, Tensor v, Tensor a0, Tensor b0, Tensor p0, "
    "Tensor? mask, int chunk) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor time_decay, Tensor time_first, Tensor k, Tensor v, Tensor a0, Tensor b0, Tensor p0, "
    "Tensor? mask, Tensor ins, Tensor gy, Tensor ga, Tensor gb, Tensor gp, Tensor aT, Tensor bT, "
    "Tensor pT, int chunk) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("spikegpt::wkv_chunked_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _fwd_op(time_decay, time_first, k, v, a0, b0, p0, mask, chunk):
    return _fwd_impl(time_decay, time_first, k, v, a0, b0, p0, mask, chunk)


@_fwd_op.register_fake
def _(time_decay, time_first, k, v, a0, b0, p0, mask, chunk):
    B, T, C = k.shape
    st = [k.new_empty(B, C, dtype=torch.float32) for _ in range(3)]
    return (k.new_empty(B, T, C, dtype=v.dtype), *st, k.new_empty(B, (T + chunk - 1) // chunk, 3, C,
                                                                 dtype=torch.float32))


@torch.library.custom_op("spikegpt::wkv_chunked_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _bwd_op(time_decay, time_first, k, v, a0, b0, p0, mask, ins, gy, ga, gb, gp, aT, bT, pT, chunk):
    return _bwd_impl(time_decay, time_first, k, v, a0, b0, p0, mask, ins, gy, ga, gb, gp, aT, bT, pT, chunk)


@_bwd_op.register_fake
def _(time_decay, time_first, k, v, a0, b0, p0, mask, ins, gy, ga, gb, gp, aT, bT, pT, chunk):
    return (torch.empty_like(time_decay), torch.empty_like(time_first), torch.empty_like(k), torch.empty_like(v),
            torch.empty_like(a0), torch.empty_like(b0), torch.empty_like(p0))


def _setup_context(ctx, inputs, output):
    time_decay, time_first, k, v, a0, b0, p0, mask, chunk = inputs
    _, aT, bT, pT, ins = output
    ctx.save_for_backward(time_decay, time_first, k, v, a0, b0, p0, mask, ins, aT, bT, pT)
    ctx.chunk = chunk


def _backward(ctx, gy, ga, gb, gp, _gins):
    time_decay, time_first, k, v, a0, b0, p0, mask, ins, aT, bT, pT = ctx.saved_tensors
    gy = torch.zeros_like(k, dtype=v.dtype) if gy is None else gy.contiguous()
    ga, gb, gp = (torch.zeros_like(aT) if g is None else g.float().contiguous() for g in (ga, gb, gp))
    grads = _bwd_op(time_decay, time_first, k, v, a0, b0, p0, mask, ins, gy, ga, gb, gp, aT, bT, pT, ctx.chunk)
    return (*grads, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def wkv_triton_chunked(
    time_decay: torch.Tensor,
    time_first: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: State | None = None,
    *,
    mask: torch.Tensor | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, State]:
    """RWKV-4 WKV with the chunk-parallel Triton kernels (an alternative design kept for measurement).

    Args:
        time_decay, time_first: (C,); k, v: (B, T, C) fp32 / fp16 / bf16; state: None or ``(num, den, max)``
            each (B, C); mask: optional (B, T), 0 at padding; chunk: tokens per chunk, >= 1 (GPU default
            ``CHUNK``); it moves only the last bits.

    Returns:
        y (B, T, C) in v's dtype and the final state, each (B, C) fp32; differentiable in every input.

    Raises:
        ValueError: k, v not (B, T, C) of one shape or not fp32 / fp16 / bf16; chunk < 1.
    """
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"wkv_triton_chunked: k and v must both be (B, T, C); got {tuple(k.shape)}, {tuple(v.shape)}")
    for name, x in (("k", k), ("v", v)):
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"wkv_triton_chunked: {name} must be fp32, fp16 or bf16, got {x.dtype}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"wkv_triton_chunked: chunk must be >= 1, got {chunk}")
    B, T, C = k.shape
    L = _launch(B, T, C, k.is_cuda, chunk)[0]
    st = empty_state(B, C, k.device, torch.float32) if state is None else tuple(s.float().contiguous() for s in state)
    y, a, b, p, _ = _fwd_op(time_decay.float().contiguous(), time_first.float().contiguous(), k.contiguous(),
                            v.contiguous(), *st, mask, L)
    return y, (a, b, p)
