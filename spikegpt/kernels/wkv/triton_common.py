"""Triton building blocks shared by the two WKV kernels (``triton_recurrent`` and ``triton_chunk``)."""

import triton
import triton.language as tl

from .common import NEG_INF

NEG_INF_C = tl.constexpr(NEG_INF)


@triton.jit
def scaled_pair(d):
    """(e^{min(d, 0)}, e^{min(-d, 0)}): the weights of two terms whose exponents differ by d, scaled so
    that the larger is 1. One exponential."""
    e = tl.exp(-tl.abs(d))
    return tl.where(d >= 0, 1.0, e), tl.where(d >= 0, e, 1.0)


@triton.jit
def state_step(b_a, b_b, b_p, w, b_k, b_v, m_r):
    """num <- e^w num + e^k v, den <- e^w den + e^k, p <- max(p + w, k); held where m_r is False."""
    ww = b_p + w
    e1, e2 = scaled_pair(ww - b_k)
    b_a = tl.where(m_r, e1 * b_a + e2 * b_v, b_a)
    b_b = tl.where(m_r, e1 * b_b + e2, b_b)
    b_p = tl.where(m_r, tl.maximum(ww, b_k), b_p)
    return b_a, b_b, b_p


@triton.jit
def token(i_b, t0, T, C, o_c, m_c):
    """Token index t0 as a vector (scalar compares misbehave in the interpreter), its bounds mask and
    the element offsets of that token's row."""
    t = o_c * 0 + t0
    m_t = m_c & (t < T)
    return t, m_t, (i_b * T + t) * C + o_c


@triton.jit
def fetch(k_ptr, v_ptr, mask_ptr, i_b, t0, T, C, o_c, m_c, HAS_MASK: tl.constexpr):
    """fp32 k and v of token t0 and whether it is a real token (in range and not padding)."""
    t, m_t, o_x = token(i_b, t0, T, C, o_c, m_c)
    b_k = tl.load(k_ptr + o_x, mask=m_t, other=0.0).to(tl.float32)
    b_v = tl.load(v_ptr + o_x, mask=m_t, other=0.0).to(tl.float32)
    m_r = m_t
    if HAS_MASK:
        m_r = m_t & (tl.load(mask_ptr + i_b * T + t, mask=m_t, other=0) != 0)
    return b_k, b_v, m_r
