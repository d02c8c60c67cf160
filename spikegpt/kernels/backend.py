"""Choosing between the Triton and PyTorch implementations of an op.

Automatic choice (``backend=None``) picks Triton only for CUDA tensors with Triton importable, so a
machine without a GPU never launches a Triton kernel. ``backend="triton"`` on CPU tensors is allowed
only under the Triton interpreter (``TRITON_INTERPRET=1``, read when the kernel module is imported),
which is how the kernels are tested without a GPU.
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("torch", "triton", "triton_chunked")  # triton_chunked: the chunk-parallel Triton WKV


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is optional and Linux-only)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreter() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str | None, x: torch.Tensor, op: str) -> str:
    """Return the backend (one of ``BACKENDS``) for running ``op`` on tensors like ``x``.

    Raises ``ValueError`` for an unknown backend, or for a Triton one where it cannot run
    (no Triton installed, or CPU tensors outside the interpreter).
    """
    if backend is None:
        return "triton" if x.is_cuda and triton_available() else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of {BACKENDS} or None (automatic)")
    if backend.startswith("triton"):
        if not triton_available():
            raise ValueError(f"{op}: backend={backend!r} needs the triton package, which is not installed")
        if not x.is_cuda and not triton_interpreter():
            raise ValueError(
                f"{op}: backend={backend!r} cannot run on {x.device.type} tensors; move them to CUDA, "
                "set TRITON_INTERPRET=1 before importing spikegpt (testing only), or use backend='torch'"
            )
    return backend


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype of both ops: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_mask(mask: torch.Tensor | None, B: int, T: int, op: str) -> torch.Tensor | None:
    """Validate an optional (B, T) mask (1/True = real token, 0/False = padding); return it as bool."""
    if mask is None:
        return None
    if mask.shape != (B, T):
        raise ValueError(f"{op}: mask must have shape (B, T) = ({B}, {T}), got {tuple(mask.shape)}")
    return mask.bool()
