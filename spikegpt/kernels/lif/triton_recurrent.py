"""The multi-step LIF neuron as Triton kernels: forward and backward along T, one launch each.

    spikes, v = lif_triton(x, v=None, *, tau=2.0, threshold=1.0, v_reset=0.0, detach_reset=False,
                           surrogate="atan", alpha=2.0, mask=None, unroll=None)

Same contract as :func:`spikegpt.kernels.lif`; ``lif(..., backend="triton")`` lands here. Computes in fp32;
x is fp32, fp16 or bf16. Registers the custom ops ``spikegpt::lif_fwd`` and ``spikegpt::lif_bwd``. Runs on
CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``. Design (one thread per channel, a backward
from the saved pre-reset potential): ``docs/kernels.md``.
"""

import math

import torch
import triton
import triton.language as tl

from ..surrogate import SURROGATE_IDS, get_surrogate

UNROLL = 16  # GPU: tokens per unrolled loop
INTERPRET_UNROLL = 4  # interpreter: short, so that small tests cross several loops
BLOCK_C = 32  # GPU: channels per program (one warp, one channel per thread)
INTERPRET_BLOCK_C = 256  # interpreter: the most channels per program (tests lower it to get several)

_ATAN = tl.constexpr(SURROGATE_IDS["atan"])
_FAST_SIGMOID = tl.constexpr(SURROGATE_IDS["fast_sigmoid"])
_SIGMOID = tl.constexpr(SURROGATE_IDS["sigmoid"])
_TRIANGULAR = tl.constexpr(SURROGATE_IDS["triangular"])
_HALF_PI = tl.constexpr(math.pi / 2)


@triton.jit
def _surrogate(x, alpha, SURROGATE: tl.constexpr):
    """dH/dx of the chosen surrogate (formulas and stable forms as in surrogate.py)."""
    if SURROGATE == _ATAN:
        z = _HALF_PI * alpha * x
        return (alpha / 2) / (1 + z * z)
    elif SURROGATE == _FAST_SIGMOID:
        z = 1 + alpha * tl.abs(x)
        return 1 / (z * z)
    elif SURROGATE == _SIGMOID:
        e = tl.exp(-tl.abs(alpha * x))  # sig(z) sig(-z) = e^{-|z|} / (1 + e^{-|z|})^2, no overflow
        return alpha * e / ((1 + e) * (1 + e))
    elif SURROGATE == _TRIANGULAR:
        return tl.maximum(alpha - alpha * alpha * tl.abs(x), 0.0)
    else:  # straight_through
        return x * 0 + 1.0


@triton.jit
def _token(i_b, t0, T, C, o_c, m_c):
    """Token index t0 as a vector (scalar compares misbehave in the interpreter), its bounds mask and
    the element offsets of that token's row; nothing for t0 < 0."""
    t = o_c * 0 + t0
    m_t = m_c & (t < T) & (t >= 0)
    return t, m_t, (i_b * T + t) * C + o_c


@triton.jit
def _fetch(x_ptr, mask_ptr, i_b, t0, T, C, o_c, m_c, HAS_MASK: tl.constexpr):
    """fp32 x (or h) of token t0 and whether it is a real token (in range and not padding)."""
    t, m_t, o_x = _token(i_b, t0, T, C, o_c, m_c)
    b_x = tl.load(x_ptr + o_x, mask=m_t, other=0.0).to(tl.float32)
    m_r = m_t
    if HAS_MASK:
        m_r = m_t & (tl.load(mask_ptr + i_b * T + t, mask=m_t, other=0) != 0)
    return b_x, m_r


@triton.jit
def _fwd_chunk(
    t0, b_v, i_b, o_c, m_c, x_ptr, mask_ptr, s_ptr, h_ptr, T, C, tau, threshold, v_reset,
    L: tl.constexpr, HAS_MASK: tl.constexpr, SOFT: tl.constexpr, SAVE_H: tl.constexpr,
):
    x0, r0 = _fetch(x_ptr, mask_ptr, i_b, t0, T, C, o_c, m_c, HAS_MASK)
    x1, r1 = _fetch(x_ptr, mask_ptr, i_b, t0 + 1, T, C, o_c, m_c, HAS_MASK)
    x2, r2 = _fetch(x_ptr, mask_ptr, i_b, t0 + 2, T, C, o_c, m_c, HAS_MASK)
    x3, r3 = _fetch(x_ptr, mask_ptr, i_b, t0 + 3, T, C, o_c, m_c, HAS_MASK)
    x4, r4 = _fetch(x_ptr, mask_ptr, i_b, t0 + 4, T, C, o_c, m_c, HAS_MASK)
    x5, r5 = _fetch(x_ptr, mask_ptr, i_b, t0 + 5, T, C, o_c, m_c, HAS_MASK)
    x6, r6 = _fetch(x_ptr, mask_ptr, i_b, t0 + 6, T, C, o_c, m_c, HAS_MASK)
    x7, r7 = _fetch(x_ptr, mask_ptr, i_b, t0 + 7, T, C, o_c, m_c, HAS_MASK)
    for i in tl.static_range(L):
        b_x, m_r = x0, r0
        x0, r0 = x1, r1
        x1, r1 = x2, r2
        x2, r2 = x3, r3
        x3, r3 = x4, r4
        x4, r4 = x5, r5
        x5, r5 = x6, r6
        x6, r6 = x7, r7
        if i + 8 < L:
            x7, r7 = _fetch(x_ptr, mask_ptr, i_b, t0 + i + 8, T, C, o_c, m_c, HAS_MASK)
        t, m_t, o_x = _token(i_b, t0 + i, T, C, o_c, m_c)
        b_h = b_v + (b_x - (b_v - v_reset)) / tau
        b_h = tl.where(m_r, b_h, b_v)  # padding: the membrane is held
        fire = m_r & (b_h >= threshold)
        if SAVE_H:
            tl.store(h_ptr + o_x, b_h, mask=m_t)
        tl.store(s_ptr + o_x, tl.where(fire, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=m_t)
        if SOFT:
            b_v = b_h - tl.where(fire, threshold, 0.0)
        else:
            b_v = tl.where(fire, v_reset, b_h)
    return b_v


@triton.jit
def _lif_fwd_kernel(
    x_ptr, v0_ptr, mask_ptr, s_ptr, v_ptr, h_ptr, T, C, tau, threshold, v_reset,
    NCH_STATIC: tl.constexpr, L: tl.constexpr, BLOCK: tl.constexpr,
    HAS_MASK: tl.constexpr, SOFT: tl.constexpr, SAVE_H: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_c = i_c * BLOCK + tl.arange(0, BLOCK)
    m_c = o_c < C
    o_s = i_b * C + o_c
    b_v = tl.load(v0_ptr + o_s, mask=m_c, other=0.0).to(tl.float32)
    if NCH_STATIC > 0:  # interpreter: a compile-time trip count
        for i_n in range(NCH_STATIC):
            b_v = _fwd_chunk(i_n * L, b_v, i_b, o_c, m_c, x_ptr, mask_ptr, s_ptr, h_ptr, T, C, tau, threshold,
                             v_reset, L, HAS_MASK, SOFT, SAVE_H)
    else:
        for i_n in range(tl.cdiv(T, L)):
            b_v = _fwd_chunk(i_n * L, b_v, i_b, o_c, m_c, x_ptr, mask_ptr, s_ptr, h_ptr, T, C, tau, threshold,
                             v_reset, L, HAS_MASK, SOFT, SAVE_H)
    tl.store(v_ptr + o_s, b_v, mask=m_c)


@triton.jit
def _fetch_bwd(h_ptr, gs_ptr, mask_ptr, i_b, t0, T, C, o_c, m_c, HAS_MASK: tl.constexpr, HAS_GS: tl.constexpr):
    """h, dL/ds (fp32) and the real-token mask of token t0."""
    b_h, m_r = _fetch(h_ptr, mask_ptr, i_b, t0, T, C, o_c, m_c, HAS_MASK)
    if HAS_GS:
        t, m_t, o_x = _token(i_b, t0, T, C, o_c, m_c)
        b_gs = tl.load(gs_ptr + o_x, mask=m_t, other=0.0).to(tl.float32)
    else:
        b_gs = b_h * 0
    return b_h, b_gs, m_r


@triton.jit
def _bwd_chunk(
    t0, g_v, i_b, o_c, m_c, h_ptr, gs_ptr, mask_ptr, gx_ptr, T, C, tau, decay, threshold, v_reset, alpha,
    L: tl.constexpr, HAS_MASK: tl.constexpr, HAS_GS: tl.constexpr, SOFT: tl.constexpr,
    DETACH: tl.constexpr, SURROGATE: tl.constexpr,
):
    """The chunk's tokens t0 .. t0 + L - 1, last first."""
    h0, s0, r0 = _fetch_bwd(h_ptr, gs_ptr, mask_ptr, i_b, t0 + L - 1, T, C, o_c, m_c, HAS_MASK, HAS_GS)
    h1, s1, r1 = _fetch_bwd(h_ptr, gs_ptr, mask_ptr, i_b, t0 + L - 2, T, C, o_c, m_c, HAS_MASK, HAS_GS)
    h2, s2, r2 = _fetch_bwd(h_ptr, gs_ptr, mask_ptr, i_b, t0 + L - 3, T, C, o_c, m_c, HAS_MASK, HAS_GS)
    h3, s3, r3 = _fetch_bwd(h_ptr, gs_ptr, mask_ptr, i_b, t0 + L - 4, T, C, o_c, m_c, HAS_MASK, HAS_GS)
    h4, s4, r4 = _fetch_bwd(h_ptr, gs_ptr, mask_ptr, i_b, t0 + L - 5, T, C, o_c, m_c, HAS_MASK, HAS_GS)
    h5, s5, r5 = _fetch_bwd(h_ptr, gs_ptr, mask_ptr, i_b, t0 + L - 6, T, C, o_c, m_c, HAS_MASK, HAS_GS)
    h6, s6, r6 = _fetch_bwd(h_ptr, gs_ptr, mask_ptr, i_b, t0 + L - 7, T, C, o_c, m_c, HAS_MASK, HAS_GS)
    h7, s7, r7 = _fetch_bwd(h_ptr, gs_ptr, mask_ptr, i_b, t0 + L - 8, T, C, o_c, m_c, HAS_MASK, HAS_GS)
    for i in tl.static_range(L):
        j = L - 1 - i
        b_h, b_gs, m_r = h0, s0, r0
        h0, s0, r0 = h1, s1, r1
        h1, s1, r1 = h2, s2, r2
        h2, s2, r2 = h3, s3, r3
        h3, s3, r3 = h4, s4, r4
        h4, s4, r4 = h5, s5, r5
        h5, s5, r5 = h6, s6, r6
        h6, s6, r6 = h7, s7, r7
        if j - 8 >= 0:
            h7, s7, r7 = _fetch_bwd(h_ptr, gs_ptr, mask_ptr, i_b, t0 + j - 8, T, C, o_c, m_c, HAS_MASK, HAS_GS)
        t, m_t, o_x = _token(i_b, t0 + j, T, C, o_c, m_c)
        sg = tl.where(m_r, _surrogate(b_h - threshold, alpha, SURROGATE), 0.0)
        fire = m_r & (b_h >= threshold)
        if SOFT:
            if DETACH:
                dvdh = sg * 0 + 1.0
            else:
                dvdh = 1.0 - threshold * sg
        else:
            dvdh = tl.where(fire, 0.0, 1.0)
            if not DETACH:
                dvdh += (v_reset - b_h) * sg
        g_a = b_gs * sg
        g_h = g_a + g_v * dvdh
        tl.store(gx_ptr + o_x, tl.where(m_r, g_h / tau, 0.0).to(gx_ptr.dtype.element_ty), mask=m_t)
        g_v = tl.where(m_r, decay * g_h, g_v)  # dh/dv_{t-1}: the leak, or 1 at padding (where g_h = g_v)
    return g_v


@triton.jit
def _lif_bwd_kernel(
    h_ptr, gs_ptr, gvT_ptr, mask_ptr, gx_ptr, gv0_ptr, T, C, tau, decay, threshold, v_reset, alpha,
    NCH_STATIC: tl.constexpr, L: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_GS: tl.constexpr, SOFT: tl.constexpr, DETACH: tl.constexpr, SURROGATE: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_c = i_c * BLOCK + tl.arange(0, BLOCK)
    m_c = o_c < C
    o_s = i_b * C + o_c
    g_v = tl.load(gvT_ptr + o_s, mask=m_c, other=0.0).to(tl.float32)
    if NCH_STATIC > 0:  # interpreter: a compile-time trip count
        for i_rev in range(NCH_STATIC):
            g_v = _bwd_chunk((NCH_STATIC - 1 - i_rev) * L, g_v, i_b, o_c, m_c, h_ptr, gs_ptr, mask_ptr, gx_ptr,
                             T, C, tau, decay, threshold, v_reset, alpha, L, HAS_MASK, HAS_GS, SOFT, DETACH,
                             SURROGATE)
    else:
        n_ch = tl.cdiv(T, L)
        for i_rev in range(n_ch):
            g_v = _bwd_chunk((n_ch - 1 - i_rev) * L, g_v, i_b, o_c, m_c, h_ptr, gs_ptr, mask_ptr, gx_ptr,
                             T, C, tau, decay, threshold, v_reset, alpha, L, HAS_MASK, HAS_GS, SOFT, DETACH,
                             SURROGATE)
    tl.store(gv0_ptr + o_s, g_v, mask=m_c)


def _launch(B: int, C: int, T: int, on_gpu: bool, unroll: int):
    """(grid, BLOCK_C, num_warps, L, static chunk count)."""
    L = unroll if unroll > 0 else (1 if T == 1 else (UNROLL if on_gpu else INTERPRET_UNROLL))
    block = BLOCK_C if on_gpu else min(INTERPRET_BLOCK_C, triton.next_power_of_2(C))
    warps = max(1, block // 32) if on_gpu else 1
    return (triton.cdiv(C, block), B), block, warps, L, (0 if on_gpu else math.ceil(T / L))


def _fwd_impl(x, v0, mask, tau, threshold, v_reset, soft, save_h, unroll):
    B, T, C = x.shape
    grid, block, warps, L, nch_static = _launch(B, C, T, x.is_cuda, unroll)
    spikes = torch.empty_like(x)
    v = torch.empty(B, C, device=x.device, dtype=torch.float32)
    h = torch.empty(B, T, C, device=x.device, dtype=torch.float32) if save_h else x.new_empty(0, dtype=torch.float32)
    m = mask.to(torch.uint8) if mask is not None else x  # a dummy pointer when there is no mask
    _lif_fwd_kernel[grid](
        x, v0, m, spikes, v, h if save_h else v, T, C, float(tau), float(threshold), float(v_reset),
        NCH_STATIC=nch_static, L=L, BLOCK=block, HAS_MASK=mask is not None, SOFT=soft, SAVE_H=save_h,
        num_warps=warps,
    )
    return spikes, v, h


def _bwd_impl(h, g_spikes, g_v, mask, tau, threshold, v_reset, soft, detach_reset, surrogate, alpha, unroll,
              x_dtype):
    B, T, C = h.shape
    grid, block, warps, L, nch_static = _launch(B, C, T, h.is_cuda, unroll)
    gx = torch.empty(B, T, C, device=h.device, dtype=x_dtype)
    gv0 = torch.empty(B, C, device=h.device, dtype=torch.float32)
    gvT = g_v.float().contiguous() if g_v is not None else torch.zeros(B, C, device=h.device)
    m = mask.to(torch.uint8) if mask is not None else h
    _lif_bwd_kernel[grid](
        h, g_spikes.contiguous() if g_spikes is not None else h, gvT, m, gx, gv0, T, C, float(tau),
        1.0 - 1.0 / tau, float(threshold), float(v_reset), float(alpha),
        NCH_STATIC=nch_static, L=L, BLOCK=block, HAS_MASK=mask is not None, HAS_GS=g_spikes is not None,
        SOFT=soft, DETACH=detach_reset, SURROGATE=surrogate, num_warps=warps,
    )
    return gx, gv0


# ---- custom ops: opaque to torch.compile, differentiable through register_autograd ----

_FWD_SCHEMA = (
    "(Tensor x, Tensor v0, Tensor? mask, float tau, float threshold, float v_reset, bool soft, "
    "bool detach_reset, int surrogate, float alpha, bool save_h, int unroll) -> (Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor h, Tensor? g_spikes, Tensor? g_v, Tensor? mask, float tau, float threshold, float v_reset, "
    "bool soft, bool detach_reset, int surrogate, float alpha, int unroll, ScalarType x_dtype) -> (Tensor, Tensor)"
)


@torch.library.custom_op("spikegpt::lif_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _lif_fwd_op(x, v0, mask, tau, threshold, v_reset, soft, detach_reset, surrogate, alpha, save_h, unroll):
    return _fwd_impl(x, v0, mask, tau, threshold, v_reset, soft, save_h, unroll)


@_lif_fwd_op.register_fake
def _(x, v0, mask, tau, threshold, v_reset, soft, detach_reset, surrogate, alpha, save_h, unroll):
    B, T, C = x.shape
    h = x.new_empty((B, T, C) if save_h else (0,), dtype=torch.float32)
    return torch.empty_like(x), x.new_empty(B, C, dtype=torch.float32), h


@torch.library.custom_op("spikegpt::lif_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _lif_bwd_op(h, g_spikes, g_v, mask, tau, threshold, v_reset, soft, detach_reset, surrogate, alpha, unroll,
                x_dtype):
    return _bwd_impl(h, g_spikes, g_v, mask, tau, threshold, v_reset, soft, detach_reset, surrogate, alpha,
                     unroll, x_dtype)


@_lif_bwd_op.register_fake
def _(h, g_spikes, g_v, mask, tau, threshold, v_reset, soft, detach_reset, surrogate, alpha, unroll, x_dtype):
    B, T, C = h.shape
    return h.new_empty(B, T, C, dtype=x_dtype), h.new_empty(B, C, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, v0, mask, tau, threshold, v_reset, soft, detach_reset, surrogate, alpha, save_h, unroll = inputs
    ctx.save_for_backward(output[2], mask)
    ctx.cfg = (tau, threshold, v_reset, soft, detach_reset, surrogate, alpha, unroll, x.dtype, v0.dtype)
    ctx.saved_h = save_h


def _backward(ctx, g_spikes, g_v, _gh):
    if not ctx.saved_h:
        raise RuntimeError("lif_triton: the forward kept no potentials for this backward (it ran without grad)")
    h, mask = ctx.saved_tensors
    tau, threshold, v_reset, soft, detach_reset, surrogate, alpha, unroll, x_dtype, v_dtype = ctx.cfg
    gx, gv0 = _lif_bwd_op(h, g_spikes, g_v, mask, tau, threshold, v_reset, soft, detach_reset, surrogate, alpha,
                          unroll, x_dtype)
    return gx, gv0.to(v_dtype), None, None, None, None, None, None, None, None, None, None


_lif_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def lif_triton(
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
    unroll: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-step LIF with the Triton kernels; ``lif(..., backend="triton")`` calls this.

    Args:
        x: (B, T, C) fp32 / fp16 / bf16 input current (made contiguous).
        v: None (zeros) or (B, C) initial membrane (used in fp32).
        tau, threshold, v_reset, detach_reset, surrogate, alpha: as in ``lif``; ``v_reset=None`` is the
            soft reset.
        mask: optional (B, T); 0 marks padding (membrane held, no spike).
        unroll: tokens per unrolled loop, >= 1 (default ``UNROLL`` on a GPU, ``INTERPRET_UNROLL`` in the
            interpreter, 1 when T = 1); any value gives the same numbers.

    Returns:
        spikes (B, T, C) in x's dtype (exactly 0 or 1) and the final membrane (B, C) fp32.

    Raises:
        ValueError: x not (B, T, C) or not fp32 / fp16 / bf16, v not (B, C), unroll < 1, unknown surrogate.

    Example (on a GPU)::

        x = torch.randn(2, 64, 96, device="cuda", dtype=torch.bfloat16)
        spikes, v = lif_triton(x, v_reset=None, surrogate="sigmoid", alpha=4.0)
    """
    if x.dim() != 3:
        raise ValueError(f"lif_triton: x must be (B, T, C), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"lif_triton: x must be fp32, fp16 or bf16, got {x.dtype} (use backend='torch')")
    if unroll is not None and unroll < 1:
        raise ValueError(f"lif_triton: unroll must be >= 1, got {unroll}")
    get_surrogate(surrogate)
    B, T, C = x.shape
    v0 = x.new_zeros(B, C, dtype=torch.float32) if v is None else v
    if v0.shape != (B, C):
        raise ValueError(f"lif_triton: v must be (B, C) = ({B}, {C}), got {tuple(v0.shape)}")
    v32 = v0.float().contiguous()
    x = x.contiguous()
    save_h = torch.is_grad_enabled() and (x.requires_grad or v32.requires_grad)
    soft = v_reset is None
    spikes, v_out, _ = _lif_fwd_op(
        x, v32, mask, float(tau), float(threshold), 0.0 if soft else float(v_reset), soft, bool(detach_reset),
        SURROGATE_IDS[surrogate], float(alpha), save_h, 0 if unroll is None else int(unroll),
    )
    return spikes, v_out
