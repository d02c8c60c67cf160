"""Truncated backpropagation through time: run a long sequence in windows, carrying detached state.

Plain BPTT is autograd over the unrolled network. For long sequences ``truncated_bptt`` splits T into
windows of ``window`` steps; each window runs from the state the previous one left, backpropagates
its own loss, and the state is detached before the next window, so memory grows with ``window``, not
T. With ``window >= T`` it is exactly BPTT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["detach_state", "truncated_bptt"]


def detach_state(state: Any) -> Any:
    """Detach every tensor in a (nested) state: tensors, tuples / NamedTuples, lists, dicts; None passes."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(detach_state(s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    raise ValueError(f"detach_state: cannot detach a {type(state).__name__}")


def truncated_bptt(
    forward: Callable[[torch.Tensor, Any], tuple[Any, Any]],
    inputs: torch.Tensor,
    loss_fn: Callable[[Any, torch.Tensor | None], torch.Tensor],
    window: int,
    *,
    targets: torch.Tensor | None = None,
    state: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[list[float], Any]:
    """Train over ``inputs`` (B, T, ...) in windows of ``window`` steps.

    ``forward(x_window, state) -> (outputs, state)`` runs the network over one window (B, w, ...) from
    ``state`` (None at first); ``loss_fn(outputs, targets_window)`` gives that window's scalar loss, with
    ``targets`` (B, T, ...) sliced the same way (None if not given). Each window's loss is
    backpropagated at once; with an ``optimizer`` it then steps and zeroes the gradients, otherwise the
    gradients of all windows add up in ``.grad``. Returns the window losses and the final (detached) state.
    """
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"truncated_bptt: window must be a positive int, got {window!r}")
    if inputs.dim() < 2:
        raise ValueError(f"truncated_bptt: inputs must be (B, T, ...), got shape {tuple(inputs.shape)}")
    T = inputs.shape[1]
    if targets is not None and (targets.dim() < 2 or targets.shape[:2] != inputs.shape[:2]):
        raise ValueError(f"truncated_bptt: targets must be (B, T, ...) = {tuple(inputs.shape[:2])} + ..., "
                         f"got {tuple(targets.shape)}")
    losses = []
    for t0 in range(0, T, window):
        sl = slice(t0, min(t0 + window, T))
        out, state = forward(inputs[:, sl], state)
        loss = loss_fn(out, None if targets is None else targets[:, sl])
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad()
        losses.append(loss.item())
        state = detach_state(state)
    return losses, state
