"""What every WKV implementation shares: the state layout, its empty value, the input checks, and the
routing of the returned running max's gradient (used by the PyTorch and the chunk-parallel Triton paths)."""

from __future__ import annotations

import torch

NEG_INF = -1e38  # the "very negative finite" initial max: keeps every difference finite

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (num, den, max), each (B, C)


def empty_state(B: int, C: int, device: torch.device | str | None, dtype: torch.dtype) -> State:
    """The state of a fresh sequence: ``num = den = 0`` and ``max = NEG_INF``, each (B, C) of ``dtype``."""
    z = torch.zeros(B, C, device=device, dtype=dtype)
    return z, z.clone(), torch.full((B, C), NEG_INF, device=device, dtype=dtype)


def check_inputs(time_decay, time_first, k, v, state) -> None:
    """Raise ``ValueError`` naming the argument whose shape or dtype breaks the ``wkv`` contract."""
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"wkv: k and v must both be (B, T, C); got {tuple(k.shape)} and {tuple(v.shape)}")
    B, T, C = k.shape
    for name, p in (("time_decay", time_decay), ("time_first", time_first)):
        if p.shape != (C,):
            raise ValueError(f"wkv: {name} must have shape (C,) = ({C},), got {tuple(p.shape)}")
    if not k.is_floating_point() or not v.is_floating_point():
        raise ValueError(f"wkv: k and v must be floating point, got {k.dtype} and {v.dtype}")
    if T == 0:
        raise ValueError("wkv: the sequence is empty (T = 0)")
    if state is not None:  # (a loop, not any(...): this runs at every decode step)
        if len(state) != 3:
            raise ValueError(f"wkv: state must be (num, den, max), each (B, C) = ({B}, {C}); got {len(state)} tensors")
        for s in state:
            if s.shape != (B, C):
                shapes = [tuple(s.shape) for s in state]
                raise ValueError(f"wkv: state must be (num, den, max), each (B, C) = ({B}, {C}); got {shapes}")
            if not s.is_floating_point():
                raise ValueError(f"wkv: state must be floating point, got {[s.dtype for s in state]}")


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
