"""WKV as per-channel Triton kernels (the CUDA default): forward, backward and the one-token step.

    y, state = wkv_triton(time_decay, time_first, k, v, state=None, *, mask=None, unroll=None, groups=None)

Same contract as :func:`spikegpt.kernels.wkv`; ``wkv(..., backend="triton")`` lands here. Computes in fp32;
k and v are fp32, fp16 or bf16. Registers the custom ops ``spikegpt::wkv_fwd`` and ``spikegpt::wkv_bwd``
(``torch.compile`` traces them without graph breaks). Runs on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1``. Design (one thread per channel, checkpointed backward): ``docs/kernels.md``.
"""

import math

import torch
import triton
import triton.language as tl

from .common import empty_state
from .triton_common import NEG_INF_C, fetch, scaled_pair, state_step, token

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

UNROLL = 16  # GPU: tokens per unrolled loop (the backward's compile time and registers grow fast with it)
GROUPS = 4  # GPU: unrolled loops per checkpoint (a checkpoint every GROUPS * UNROLL tokens)
INTERPRET_UNROLL = 4  # interpreter: small, so that short test sequences cross several loops and groups
INTERPRET_GROUPS = 2
BLOCK_C = 32  # channels per program on a GPU: one warp, one channel per thread
INTERPRET_BLOCK_C = 256  # interpreter: the most channels per program (tests lower it to get several)

@triton.jit
def _fwd_group(
    i_g, n_g, i_b, o_c, m_c, w, u, b_a, b_b, b_p,
    k_ptr, v_ptr, mask_ptr, y_ptr, ckpt_ptr, T, C,
    L: tl.constexpr, R: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr,
):
    """One checkpoint group: R chunks of L unrolled tokens, from token i_g * R * L on."""
    if SAVE:
        p_ck = ckpt_ptr + (i_b * n_g + i_g) * 3 * C + o_c
        tl.store(p_ck, b_a, mask=m_c)
        tl.store(p_ck + C, b_b, mask=m_c)
        tl.store(p_ck + 2 * C, b_p, mask=m_c)
    for s in range(R):
        t0 = (i_g * R + s) * L
        # A queue of 8 tokens loaded ahead of use: the compiler cannot move a load above a store of y
        # (it may alias), so loads in flight must be issued explicitly in program order.
        k0, v0, r0 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0, T, C, o_c, m_c, HAS_MASK)
        k1, v1, r1 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 1, T, C, o_c, m_c, HAS_MASK)
        k2, v2, r2 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 2, T, C, o_c, m_c, HAS_MASK)
        k3, v3, r3 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 3, T, C, o_c, m_c, HAS_MASK)
        k4, v4, r4 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 4, T, C, o_c, m_c, HAS_MASK)
        k5, v5, r5 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 5, T, C, o_c, m_c, HAS_MASK)
        k6, v6, r6 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 6, T, C, o_c, m_c, HAS_MASK)
        k7, v7, r7 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 7, T, C, o_c, m_c, HAS_MASK)
        for i in tl.static_range(L):
            b_k, b_v, m_r = k0, v0, r0
            k0, v0, r0 = k1, v1, r1
            k1, v1, r1 = k2, v2, r2
            k2, v2, r2 = k3, v3, r3
            k3, v3, r3 = k4, v4, r4
            k4, v4, r4 = k5, v5, r5
            k5, v5, r5 = k6, v6, r6
            k6, v6, r6 = k7, v7, r7
            if i + 8 < L:
                k7, v7, r7 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + i + 8, T, C, o_c, m_c, HAS_MASK)
            t, m_t, o_x = token(i_b, t0 + i, T, C, o_c, m_c)
            # y = (e^p a + e^{u+k} v) / (e^p b + e^{u+k}), both sums scaled by the larger exponent
            e1, e2 = scaled_pair(b_p - (u + b_k))
            b_y = (e1 * b_a + e2 * b_v) / (e1 * b_b + e2)
            tl.store(y_ptr + o_x, tl.where(m_r, b_y, 0.0).to(y_ptr.dtype.element_ty), mask=m_t)
            b_a, b_b, b_p = state_step(b_a, b_b, b_p, w, b_k, b_v, m_r)
    return b_a, b_b, b_p


@triton.jit
def _wkv_fwd_kernel(
    td_ptr, tf_ptr, k_ptr, v_ptr, a0_ptr, b0_ptr, p0_ptr, mask_ptr,
    y_ptr, a_ptr, b_ptr, p_ptr, ckpt_ptr,
    T, C,
    NG_STATIC: tl.constexpr, L: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr,
    HAS_MASK: tl.constexpr, SAVE: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_c = i_c * BLOCK + tl.arange(0, BLOCK)
    m_c = o_c < C
    w = -tl.exp(tl.load(td_ptr + o_c, mask=m_c, other=0.0))
    u = tl.load(tf_ptr + o_c, mask=m_c, other=0.0)
    o_s = i_b * C + o_c
    b_a = tl.load(a0_ptr + o_s, mask=m_c, other=0.0)
    b_b = tl.load(b0_ptr + o_s, mask=m_c, other=0.0)
    b_p = tl.maximum(tl.load(p0_ptr + o_s, mask=m_c, other=0.0), NEG_INF_C)
    if NG_STATIC > 0:  # interpreter: a compile-time trip count
        for i_g in range(NG_STATIC):
            b_a, b_b, b_p = _fwd_group(
                i_g, NG_STATIC, i_b, o_c, m_c, w, u, b_a, b_b, b_p,
                k_ptr, v_ptr, mask_ptr, y_ptr, ckpt_ptr, T, C, L, R, HAS_MASK, SAVE,
            )
    else:
        n_g = tl.cdiv(T, L * R)
        for i_g in range(n_g):
            b_a, b_b, b_p = _fwd_group(
                i_g, n_g, i_b, o_c, m_c, w, u, b_a, b_b, b_p,
                k_ptr, v_ptr, mask_ptr, y_ptr, ckpt_ptr, T, C, L, R, HAS_MASK, SAVE,
            )
    tl.store(a_ptr + o_s, b_a, mask=m_c)
    tl.store(b_ptr + o_s, b_b, mask=m_c)
    tl.store(p_ptr + o_s, b_p, mask=m_c)


@triton.jit
def _fetch_bwd(k_ptr, v_ptr, gy_ptr, mask_ptr, p_row, i_b, t0, t_lo, T, C, o_c, m_c,
               BLOCK: tl.constexpr, HAS_MASK: tl.constexpr):
    """What the adjoint step of token t0 reads: k, v, dL/dy (fp32) and the state before it (its scratch
    row); nothing (zeros) when t0 < t_lo, i.e. before the chunk, as the queue's prologue asks in short chunks."""
    t, m_t, o_x = token(i_b, t0, T, C, o_c, m_c)
    m_t = m_t & (t >= t_lo)
    b_k = tl.load(k_ptr + o_x, mask=m_t, other=0.0).to(tl.float32)
    b_v = tl.load(v_ptr + o_x, mask=m_t, other=0.0).to(tl.float32)
    b_gy = tl.load(gy_ptr + o_x, mask=m_t, other=0.0).to(tl.float32)
    m_r = m_t
    if HAS_MASK:
        m_r = m_t & (tl.load(mask_ptr + i_b * T + t, mask=m_t, other=0) != 0)
    m_s = m_c & (t >= t_lo)
    b_a = tl.load(p_row, mask=m_s, other=0.0)
    b_b = tl.load(p_row + BLOCK, mask=m_s, other=0.0)
    b_p = tl.load(p_row + 2 * BLOCK, mask=m_s, other=0.0)
    return b_k, b_v, b_gy, b_a, b_b, b_p, m_r


@triton.jit
def _bwd_group(
    i_g, n_g, i_b, o_c, m_c, w, u, g_a, g_b, g_r, g_P, acc_w, acc_u, p_scr,
    k_ptr, v_ptr, mask_ptr, ckpt_ptr, gy_ptr, gk_ptr, gv_ptr, T, C,
    L: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr,
):
    """Backward through one checkpoint group (R * L tokens), given the adjoint of the state after it."""
    p_ck = ckpt_ptr + (i_b * n_g + i_g) * 3 * C + o_c
    b_a = tl.load(p_ck, mask=m_c, other=0.0)
    b_b = tl.load(p_ck + C, mask=m_c, other=0.0)
    b_p = tl.load(p_ck + 2 * C, mask=m_c, other=0.0)
    # 1) rebuild the group's states (before each token) from its checkpoint, into the scratch rows
    for s in range(R):
        t0 = (i_g * R + s) * L
        k0, v0, r0 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0, T, C, o_c, m_c, HAS_MASK)
        k1, v1, r1 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 1, T, C, o_c, m_c, HAS_MASK)
        k2, v2, r2 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 2, T, C, o_c, m_c, HAS_MASK)
        k3, v3, r3 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 3, T, C, o_c, m_c, HAS_MASK)
        k4, v4, r4 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 4, T, C, o_c, m_c, HAS_MASK)
        k5, v5, r5 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 5, T, C, o_c, m_c, HAS_MASK)
        k6, v6, r6 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 6, T, C, o_c, m_c, HAS_MASK)
        k7, v7, r7 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + 7, T, C, o_c, m_c, HAS_MASK)
        for i in tl.static_range(L):
            b_k, b_v, m_r = k0, v0, r0
            k0, v0, r0 = k1, v1, r1
            k1, v1, r1 = k2, v2, r2
            k2, v2, r2 = k3, v3, r3
            k3, v3, r3 = k4, v4, r4
            k4, v4, r4 = k5, v5, r5
            k5, v5, r5 = k6, v6, r6
            k6, v6, r6 = k7, v7, r7
            if i + 8 < L:
                k7, v7, r7 = fetch(k_ptr, v_ptr, mask_ptr, i_b, t0 + i + 8, T, C, o_c, m_c, HAS_MASK)
            p_row = p_scr + (s * L + i) * (3 * BLOCK)
            tl.store(p_row, b_a)
            tl.store(p_row + BLOCK, b_b)
            tl.store(p_row + 2 * BLOCK, b_p)
            b_a, b_b, b_p = state_step(b_a, b_b, b_p, w, b_k, b_v, m_r)
    tl.debug_barrier()
    # 2) the adjoint recurrence, last token first (a queue of 4 tokens read ahead)
    for s_rev in range(R):
        s = R - 1 - s_rev
        t0 = (i_g * R + s) * L
        p_row0 = p_scr + (s * L) * (3 * BLOCK)
        k0, v0, y0, a0, b0, c0, r0 = _fetch_bwd(k_ptr, v_ptr, gy_ptr, mask_ptr, p_row0 + (L - 1) * 3 * BLOCK,
                                                i_b, t0 + L - 1, t0, T, C, o_c, m_c, BLOCK, HAS_MASK)
        k1, v1, y1, a1, b1, c1, r1 = _fetch_bwd(k_ptr, v_ptr, gy_ptr, mask_ptr, p_row0 + (L - 2) * 3 * BLOCK,
                                                i_b, t0 + L - 2, t0, T, C, o_c, m_c, BLOCK, HAS_MASK)
        k2, v2, y2, a2, b2, c2, r2 = _fetch_bwd(k_ptr, v_ptr, gy_ptr, mask_ptr, p_row0 + (L - 3) * 3 * BLOCK,
                                                i_b, t0 + L - 3, t0, T, C, o_c, m_c, BLOCK, HAS_MASK)
        k3, v3, y3, a3, b3, c3, r3 = _fetch_bwd(k_ptr, v_ptr, gy_ptr, mask_ptr, p_row0 + (L - 4) * 3 * BLOCK,
                                                i_b, t0 + L - 4, t0, T, C, o_c, m_c, BLOCK, HAS_MASK)
        for i in tl.static_range(L):
            j = L - 1 - i
            b_k, b_v, b_gy, b_a, b_b, b_p, m_r = k0, v0, y0, a0, b0, c0, r0
            k0, v0, y0, a0, b0, c0, r0 = k1, v1, y1, a1, b1, c1, r1
            k1, v1, y1, a1, b1, c1, r1 = k2, v2, y2, a2, b2, c2, r2
            k2, v2, y2, a2, b2, c2, r2 = k3, v3, y3, a3, b3, c3, r3
            if j - 4 >= 0:
                k3, v3, y3, a3, b3, c3, r3 = _fetch_bwd(
                    k_ptr, v_ptr, gy_ptr, mask_ptr, p_row0 + (j - 4) * 3 * BLOCK,
                    i_b, t0 + j - 4, t0, T, C, o_c, m_c, BLOCK, HAS_MASK,
                )
            t, m_t, o_x = token(i_b, t0 + j, T, C, o_c, m_c)
            # recompute y_t = (e1 a + e2 v) / z, with M = max(p, u + k) factored out of both sums
            ww = u + b_k
            e1, e2 = scaled_pair(b_p - ww)
            b_M = tl.maximum(b_p, ww)
            b_z = e1 * b_b + e2
            b_y = (e1 * b_a + e2 * b_v) / b_z
            q = b_gy / b_z  # dL/dy_t / z_t; dy_t/dnum_{t-1} = e^{-M} / z_t
            g_yk = q * e2 * (b_v - b_y)  # through the bonus term e^{u + k_t}: dL/du and part of dL/dk
            # e^{r + k} <= 1 (the min only keeps padding, where r may be huge, from overflowing);
            # dnum_t/dk_t = e^k v, dden_t/dk_t = e^k
            e_rk = tl.exp(tl.minimum(g_r + b_k, 0.0))
            win = m_r & (b_k > b_p + w)  # token t set the running max p_t
            g_k = g_yk + e_rk * (g_a * b_v + g_b) + tl.where(win, g_P, 0.0)
            g_v = q * e2 + g_a * e_rk
            tl.store(gk_ptr + o_x, tl.where(m_r, g_k, 0.0).to(gk_ptr.dtype.element_ty), mask=m_t)
            tl.store(gv_ptr + o_x, tl.where(m_r, g_v, 0.0).to(gv_ptr.dtype.element_ty), mask=m_t)
            # dL/dw: the decay of the state entering t (e^w num_{t-1}), and the argmax path of p after its key
            g_wt = tl.exp(tl.minimum(w + g_r + b_p, 0.0)) * (g_a * b_a + g_b * b_b) + tl.where(win, 0.0, g_P)
            acc_w += tl.where(m_r, g_wt, 0.0)
            acc_u += tl.where(m_r, g_yk, 0.0)
            g_P = tl.where(win, 0.0, g_P)
            # adjoint of the state before t: e^w (ga, gb) e^r + (q, -q y) e^{-M}, rescaled to the larger exponent
            rw = g_r + w
            e1, e2 = scaled_pair(rw + b_M)
            g_a = tl.where(m_r, e1 * g_a + e2 * q, g_a)
            g_b = tl.where(m_r, e1 * g_b - e2 * q * b_y, g_b)
            g_r = tl.where(m_r, tl.maximum(rw, -b_M), g_r)
    tl.debug_barrier()
    return g_a, g_b, g_r, g_P, acc_w, acc_u


@triton.jit
def _wkv_bwd_kernel(
    td_ptr, tf_ptr, k_ptr, v_ptr, a0_ptr, b0_ptr, p0_ptr, mask_ptr, ckpt_ptr,
    gy_ptr, gaT_ptr, gbT_ptr, gpT_ptr, aT_ptr, bT_ptr, pT_ptr,
    gk_ptr, gv_ptr, gw_ptr, gu_ptr, ga0_ptr, gb0_ptr, gp0_ptr, scr_ptr,
    T, C,
    NG_STATIC: tl.constexpr, L: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_c = i_c * BLOCK + tl.arange(0, BLOCK)
    m_c = o_c < C
    w = -tl.exp(tl.load(td_ptr + o_c, mask=m_c, other=0.0))
    u = tl.load(tf_ptr + o_c, mask=m_c, other=0.0)
    o_s = i_b * C + o_c
    # this program's scratch: R * L rows of (a, b, p), each BLOCK wide
    p_scr = scr_ptr + (i_b * tl.num_programs(0) + i_c) * (R * L * 3 * BLOCK) + tl.arange(0, BLOCK)

    # Adjoint of the final state. (num, den) = (a, b) e^p, so dL/dnum = gaT e^{-pT} (same for den);
    # what is left of dL/dpT once a and b are accounted for flows along the argmax path of p.
    g_a = tl.load(gaT_ptr + o_s, mask=m_c, other=0.0)  # dL/dnum_t = g_a e^{g_r}, dL/dden_t = g_b e^{g_r}
    g_b = tl.load(gbT_ptr + o_s, mask=m_c, other=0.0)
    g_r = -tl.load(pT_ptr + o_s, mask=m_c, other=0.0)
    g_P = (
        tl.load(gpT_ptr + o_s, mask=m_c, other=0.0)
        - g_a * tl.load(aT_ptr + o_s, mask=m_c, other=0.0)
        - g_b * tl.load(bT_ptr + o_s, mask=m_c, other=0.0)
    )
    acc_w = tl.zeros([BLOCK], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK], dtype=tl.float32)
    if NG_STATIC > 0:  # interpreter: a compile-time trip count
        for i_rev in range(NG_STATIC):
            g_a, g_b, g_r, g_P, acc_w, acc_u = _bwd_group(
                NG_STATIC - 1 - i_rev, NG_STATIC, i_b, o_c, m_c, w, u, g_a, g_b, g_r, g_P, acc_w, acc_u,
                p_scr, k_ptr, v_ptr, mask_ptr, ckpt_ptr, gy_ptr, gk_ptr, gv_ptr, T, C, L, R, BLOCK, HAS_MASK,
            )
    else:
        n_g = tl.cdiv(T, L * R)
        for i_rev in range(n_g):
            g_a, g_b, g_r, g_P, acc_w, acc_u = _bwd_group(
                n_g - 1 - i_rev, n_g, i_b, o_c, m_c, w, u, g_a, g_b, g_r, g_P, acc_w, acc_u,
                p_scr, k_ptr, v_ptr, mask_ptr, ckpt_ptr, gy_ptr, gk_ptr, gv_ptr, T, C, L, R, BLOCK, HAS_MASK,
            )
    # the incoming state: num_0 = a0 e^{p0}
    b_a = tl.load(a0_ptr + o_s, mask=m_c, other=0.0)
    b_b = tl.load(b0_ptr + o_s, mask=m_c, other=0.0)
    b_p = tl.maximum(tl.load(p0_ptr + o_s, mask=m_c, other=0.0), NEG_INF_C)
    e0 = tl.exp(g_r + b_p)
    tl.store(ga0_ptr + o_s, g_a * e0, mask=m_c)
    tl.store(gb0_ptr + o_s, g_b * e0, mask=m_c)
    tl.store(gp0_ptr + o_s, (g_a * b_a + g_b * b_b) * e0 + g_P, mask=m_c)
    tl.store(gw_ptr + o_s, acc_w * w, mask=m_c)  # dw/dtime_decay = w
    tl.store(gu_ptr + o_s, acc_u, mask=m_c)


def plan(T: int, on_gpu: bool, unroll: int | None = None, groups: int | None = None) -> tuple[int, int]:
    """(L, R) of a launch: L tokens per unrolled loop, a checkpoint every R * L tokens. Any values give
    the same numbers; they only trade compile time, registers and checkpoint bytes."""
    if (unroll is not None and unroll < 1) or (groups is not None and groups < 1):
        raise ValueError(f"wkv_triton: unroll and groups must be >= 1, got {unroll} and {groups}")
    if T == 1 and unroll is None and groups is None:
        return 1, 1  # the generation step
    L = unroll or (UNROLL if on_gpu else INTERPRET_UNROLL)
    R = groups or (GROUPS if on_gpu else INTERPRET_GROUPS)
    return L, max(1, min(R, math.ceil(T / L)))  # a short sequence gets no wholly empty chunks


def _grid(B: int, C: int, on_gpu: bool) -> tuple[tuple[int, int], int, int]:
    """(grid, BLOCK_C, num_warps): one channel per thread on a GPU; few wide programs in the interpreter."""
    block = BLOCK_C if on_gpu else min(INTERPRET_BLOCK_C, triton.next_power_of_2(C))
    return (triton.cdiv(C, block), B), block, (max(1, block // 32) if on_gpu else 1)


def _fwd_impl(time_decay, time_first, k, v, a0, b0, p0, mask, unroll, groups, save):
    B, T, C = k.shape
    grid, block, warps = _grid(B, C, k.is_cuda)
    n_g = math.ceil(T / (unroll * groups))
    y = torch.empty(B, T, C, device=k.device, dtype=v.dtype)
    a, b, p = (torch.empty(B, C, device=k.device, dtype=torch.float32) for _ in range(3))
    ckpt = torch.empty(B, n_g if save else 0, 3, C, device=k.device, dtype=torch.float32)
    m = mask.to(torch.uint8) if mask is not None else k  # a dummy pointer when there is no mask
    _wkv_fwd_kernel[grid](
        time_decay, time_first, k, v, a0, b0, p0, m, y, a, b, p, ckpt if save else a, T, C,
        NG_STATIC=0 if k.is_cuda else n_g, L=unroll, R=groups, BLOCK=block,
        HAS_MASK=mask is not None, SAVE=save, num_warps=warps,
    )
    return y, a, b, p, ckpt


def _bwd_impl(time_decay, time_first, k, v, a0, b0, p0, mask, ckpt, gy, ga, gb, gp, aT, bT, pT, unroll, groups):
    B, T, C = k.shape
    grid, block, warps = _grid(B, C, k.is_cuda)
    n_g = math.ceil(T / (unroll * groups))
    if ckpt.shape[1] != n_g:
        raise RuntimeError("wkv_triton: the forward kept no checkpoints for this backward (it ran without grad)")
    dev = k.device
    gk = torch.empty(B, T, C, device=dev, dtype=k.dtype)
    gv = torch.empty(B, T, C, device=dev, dtype=v.dtype)
    gw, gu, ga0, gb0, gp0 = (torch.empty(B, C, device=dev, dtype=torch.float32) for _ in range(5))
    scratch = torch.empty(B * grid[0] * groups * unroll * 3 * block, device=dev, dtype=torch.float32)
    m = mask.to(torch.uint8) if mask is not None else k
    _wkv_bwd_kernel[grid](
        time_decay, time_first, k, v, a0, b0, p0, m, ckpt, gy, ga, gb, gp, aT, bT, pT,
        gk, gv, gw, gu, ga0, gb0, gp0, scratch, T, C,
        NG_STATIC=0 if k.is_cuda else n_g, L=unroll, R=groups, BLOCK=block,
        HAS_MASK=mask is not None, num_warps=warps,
    )
    return gw.sum(0), gu.sum(0), gk, gv, ga0, gb0, gp0


# ---- custom ops: opaque to torch.compile, differentiable through register_autograd ----

_FWD_SCHEMA = (
    "(Tensor time_decay, Tensor time_first, Tensor k, Tensor v, Tensor a0, Tensor b0, Tensor p0, "
    "Tensor? mask, int unroll, int groups, bool save) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor time_decay, Tensor time_first, Tensor k, Tensor v, Tensor a0, Tensor b0, Tensor p0, "
    "Tensor? mask, Tensor ckpt, Tensor gy, Tensor ga, Tensor gb, Tensor gp, Tensor aT, Tensor bT, "
    "Tensor pT, int unroll, int groups) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("spikegpt::wkv_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _wkv_fwd_op(time_decay, time_first, k, v, a0, b0, p0, mask, unroll, groups, save):
    return _fwd_impl(time_decay, time_first, k, v, a0, b0, p0, mask, unroll, groups, save)


@_wkv_fwd_op.register_fake
def _(time_decay, time_first, k, v, a0, b0, p0, mask, unroll, groups, save):
    B, T, C = k.shape
    n_g = (T + unroll * groups - 1) // (unroll * groups)
    st = [k.new_empty(B, C, dtype=torch.float32) for _ in range(3)]
    ckpt = k.new_empty(B, n_g if save else 0, 3, C, dtype=torch.float32)
    return (k.new_empty(B, T, C, dtype=v.dtype), *st, ckpt)


@torch.library.custom_op("spikegpt::wkv_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _wkv_bwd_op(time_decay, time_first, k, v, a0, b0, p0, mask, ckpt, gy, ga, gb, gp, aT, bT, pT, unroll, groups):
    return _bwd_impl(time_decay, time_first, k, v, a0, b0, p0, mask, ckpt, gy, ga, gb, gp, aT, bT, pT,
                     unroll, groups)


@_wkv_bwd_op.register_fake
def _(time_decay, time_first, k, v, a0, b0, p0, mask, ckpt, gy, ga, gb, gp, aT, bT, pT, unroll, groups):
    return (
        torch.empty_like(time_decay), torch.empty_like(time_first), torch.empty_like(k), torch.empty_like(v),
        torch.empty_like(a0), torch.empty_like(b0), torch.empty_like(p0),
    )


def _setup_context(ctx, inputs, output):
    time_decay, time_first, k, v, a0, b0, p0, mask, unroll, groups, save = inputs
    _, aT, bT, pT, ckpt = output
    ctx.save_for_backward(time_decay, time_first, k, v, a0, b0, p0, mask, ckpt, aT, bT, pT)
    ctx.plan = (unroll, groups)


def _backward(ctx, gy, ga, gb, gp, _gckpt):
    time_decay, time_first, k, v, a0, b0, p0, mask, ckpt, aT, bT, pT = ctx.saved_tensors
    gy = torch.zeros_like(k, dtype=v.dtype) if gy is None else gy.contiguous()
    ga, gb, gp = (torch.zeros_like(aT) if g is None else g.float().contiguous() for g in (ga, gb, gp))
    grads = _wkv_bwd_op(time_decay, time_first, k, v, a0, b0, p0, mask, ckpt, gy, ga, gb, gp, aT, bT, pT,
                        *ctx.plan)
    return (*grads, None, None, None, None)


_wkv_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def wkv_triton(
    time_decay: torch.Tensor,
    time_first: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: State | None = None,
    *,
    mask: torch.Tensor | None = None,
    unroll: int | None = None,
    groups: int | None = None,
) -> tuple[torch.Tensor, State]:
    """RWKV-4 WKV with the Triton kernels; ``wkv(..., backend="triton")`` calls this.

    Args:
        time_decay, time_first: (C,), any float dtype (used in fp32).
        k, v: (B, T, C), fp32 / fp16 / bf16 (fp64 is the PyTorch path's only); made contiguous.
        state: None or ``(num, den, max)``, each (B, C) (used in fp32).
        mask: optional (B, T); 0 marks padding (state held, output 0).
        unroll, groups: launch shape (see ``plan``), each >= 1: tokens per unrolled loop (GPU default
            ``UNROLL``) and unrolled loops per checkpoint (GPU default ``GROUPS``). Every choice gives the
            same numbers.

    Returns:
        y (B, T, C) in v's dtype and the final state ``(num, den, max)``, each (B, C) fp32. Differentiable
        with respect to time_decay, time_first, k, v and the incoming state.

    Raises:
        ValueError: k, v not (B, T, C) of one shape or not fp32 / fp16 / bf16; unroll or groups < 1.

    Example (on a GPU)::

        k = torch.randn(2, 64, 96, device="cuda", dtype=torch.bfloat16); v = torch.randn_like(k)
        y, (num, den, mx) = wkv_triton(torch.zeros(96, device="cuda"), torch.zeros(96, device="cuda"), k, v)
    """
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"wkv_triton: k and v must both be (B, T, C); got {tuple(k.shape)} and {tuple(v.shape)}")
    for name, x in (("k", k), ("v", v)):
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"wkv_triton: {name} must be fp32, fp16 or bf16, got {x.dtype} (use backend='torch')")
    B, T, C = k.shape
    L, R = plan(T, k.is_cuda, unroll, groups)
    st = empty_state(B, C, k.device, torch.float32) if state is None else tuple(s.float().contiguous() for s in state)
    td = time_decay.float().contiguous()
    tf = time_first.float().contiguous()
    k, v = k.contiguous(), v.contiguous()
    save = torch.is_grad_enabled() and any(x.requires_grad for x in (td, tf, k, v, *st))
    y, a, b, p, _ = _wkv_fwd_op(td, tf, k, v, *st, mask, L, R, save)
    return y, (a, b, p)
