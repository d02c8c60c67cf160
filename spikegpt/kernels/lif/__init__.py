"""The multi-step leaky integrate-and-fire neuron along the token axis: one public function choosing
among its implementations.

| file                    | what                                                        |
|-------------------------|-------------------------------------------------------------|
| ``torch_recurrent.py``  | PyTorch: the recurrence without autograd, a one-pass backward |
| ``triton_recurrent.py`` | Triton: one thread per (row, channel) walking T (CUDA)      |
| ``naive.py``            | the step-by-step loop reference (tests only)                |

Design notes: ``docs/kernels.md``.
"""

from __future__ import annotations

import torch

from ..backend import check_mask, compute_dtype, resolve_backend
from ..surrogate import get_surrogate
from .torch_recurrent import lif_torch

__all__ = ["lif"]


def lif(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a LIF neuron per (batch row, channel) along T.

    Args:
        x: (B, T, C) input current, any float dtype.
        v: None (zeros) or (B, C) initial membrane.
        tau, threshold: membrane time constant (> 1 keeps the leak in (0, 1)) and firing threshold.
        v_reset: hard-reset value, or None for a soft reset (subtract the threshold).
        detach_reset: treat the spike as a constant inside the reset term when differentiating.
        surrogate, alpha: the surrogate of dH/dx used by the backward (see ``surrogate.py``).
        mask: optional (B, T); 0 marks padding, where the membrane is held and no spike is emitted.
        backend: None (automatic), ``"torch"`` or ``"triton"`` (``"triton_chunked"`` means ``"triton"`` here).

    Returns:
        spikes (B, T, C) in x's dtype with values exactly 0 or 1, and the final membrane (B, C) in
        fp32 (fp64 for fp64 inputs). Chunking T and passing the membrane on equals one call.

    Raises:
        ValueError: x not (B, T, C) or not floating point, v not (B, C), tau <= 0, an unknown surrogate,
            a mask that does not fit, or a backend that cannot run here.

    Example:
        >>> s, v = lif(torch.full((1, 4, 1), 1.0))   # h = 0.5, 0.75, 0.875, ... never reaches 1
        >>> s.flatten().tolist()
        [0.0, 0.0, 0.0, 0.0]
    """
    if x.dim() != 3:
        raise ValueError(f"lif: x must be (B, T, C), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"lif: x must be floating point, got {x.dtype}")
    B, T, C = x.shape
    if v is not None and v.shape != (B, C):
        raise ValueError(f"lif: v must be (B, C) = ({B}, {C}), got {tuple(v.shape)}")
    if tau <= 0:
        raise ValueError(f"lif: tau must be positive, got {tau}")
    get_surrogate(surrogate)
    mask = check_mask(mask, B, T, "lif")
    if v is None:
        v = x.new_zeros(B, C, dtype=compute_dtype(x))
    use = resolve_backend(backend, x, "lif")
    if use == "triton_chunked":
        use = "triton"  # one LIF kernel: the chunked choice concerns WKV only
    if use == "triton" and backend is None and x.dtype == torch.float64:
        use = "torch"  # the kernels compute in fp32: automatic choice keeps fp64 on the PyTorch path
    if use == "triton":
        from .triton_recurrent import lif_triton

        return lif_triton(x, v, tau=tau, threshold=threshold, v_reset=v_reset, detach_reset=detach_reset,
                          surrogate=surrogate, alpha=alpha, mask=mask)
    return lif_torch(x, v, mask, tau, threshold, v_reset, detach_reset, surrogate, alpha)
