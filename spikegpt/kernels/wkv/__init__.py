"""WKV, the RWKV-4 linear-attention recurrence: one public function choosing among its implementations.

| file                 | what                                                                    |
|----------------------|-------------------------------------------------------------------------|
| ``torch_chunk.py``   | PyTorch, fixed-length chunks in three vectorised passes (CPU, any device) |
| ``triton_recurrent.py`` | Triton, one thread per (row, channel) walking T (the CUDA default)    |
| ``triton_chunk.py``  | Triton, chunk-parallel (``backend="triton_chunked"``)                   |
| ``naive.py``         | the token-by-token loop reference (tests only)                          |
| ``common.py``, ``triton_common.py`` | what the implementations share                           |

Design notes (why each implementation is built as it is): ``docs/kernels.md``.
"""

from __future__ import annotations

import torch

from ..backend import check_mask, resolve_backend
from .common import State, check_inputs
from .torch_chunk import wkv_torch

__all__ = ["State", "wkv"]


def wkv(
    time_decay: torch.Tensor,
    time_first: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: State | None = None,
    *,
    mask: torch.Tensor | None = None,
    backend: str | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, State]:
    """RWKV-4 WKV over a sequence, continuing ``state``.

    Per channel, with ``w = -exp(time_decay)`` and ``u = time_first``::

        y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{(t-1-i) w + k_i} + e^{u + k_t})

    Args:
        time_decay, time_first: (C,).
        k, v: (B, T, C), fp32 / fp16 / bf16 (fp64 on the PyTorch path); T >= 1.
        state: None (empty) or ``(num, den, max)``, each (B, C) fp32 (fp64 for fp64 inputs): the two sums
            scaled by ``e^-max``.
        mask: optional (B, T); 0 marks padding, where the state is held and the output is 0. On the PyTorch
            path a row's y and final state do not depend on its padding or on the other rows.
        backend: None (automatic: Triton on CUDA, PyTorch elsewhere), ``"torch"``, ``"triton"`` or
            ``"triton_chunked"``; a Triton choice where Triton cannot run raises ``ValueError``.
        chunk_size: tokens per chunk of the PyTorch path, >= 1 (None: ``torch_chunk.CHUNK_SIZE``, read at
            each call); it moves only the last bits. The Triton backends ignore it.

    Returns:
        y: (B, T, C) in v's dtype, and the state after the last token, which continues the sequence
        exactly: ``wkv(.., k[:, :t], ..)`` then ``wkv(.., k[:, t:], .., state)`` equals one call.

    Raises:
        ValueError: for shapes, dtypes, a mask or a state that do not fit, an unknown backend, or
            ``chunk_size < 1`` on the PyTorch path.

    Example:
        >>> C = 4; k = torch.randn(2, 5, C); v = torch.randn(2, 5, C)
        >>> y, st = wkv(torch.zeros(C), torch.zeros(C), k, v)
        >>> y.shape, st[0].shape
        (torch.Size([2, 5, 4]), torch.Size([2, 4]))
    """
    check_inputs(time_decay, time_first, k, v, state)
    mask = check_mask(mask, k.shape[0], k.shape[1], "wkv")
    use = resolve_backend(backend, k, "wkv")
    if use == "triton" and backend is None and torch.float64 in (k.dtype, v.dtype):
        use = "torch"  # the kernels compute in fp32: automatic choice keeps fp64 on the PyTorch path
    if use == "triton":
        from .triton_recurrent import wkv_triton

        return wkv_triton(time_decay, time_first, k, v, state, mask=mask)
    if use == "triton_chunked":
        from .triton_chunk import wkv_triton_chunked

        return wkv_triton_chunked(time_decay, time_first, k, v, state, mask=mask)
    return wkv_torch(time_decay, time_first, k, v, state, mask, chunk_size)
