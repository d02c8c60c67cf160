"""Spike codes: rate, latency and delta encoders, their decoders, and class targets.

Spike trains are batch-first, time on dim 1: ``data`` (B, *) becomes spikes (B, T, *) (``delta``
takes a signal already laid out as (B, T, *)). Encoders return float tensors in ``data``'s dtype.

- ``rate``: each step is an independent Bernoulli draw with probability ``clamp(gain * data, 0, 1)``;
  ``rate_decode`` (mean over T) is an unbiased estimate of that probability.
- ``latency``: at most one spike per feature; larger values fire earlier. ``"linear"``: at step
  ``round((1 - x) (T - 1))``; ``"log"``: at the time an RC membrane driven by ``x`` (tau ``tau``) takes
  to reach ``threshold``, ``t = tau ln(x / (x - threshold))``; values at or below ``threshold``
  (and times beyond the window, unless ``clip``) never fire. ``latency_decode`` returns first-spike times.
- ``delta``: delta modulation. A reference starts at the first sample; whenever the signal is at
  least ``threshold`` above (below) it, an ON (OFF, -1) spike is emitted and the reference moves by
  ``threshold``. ``delta_decode`` rebuilds the signal as ``initial + threshold * cumsum(spikes)``;
  its error stays below ``threshold`` while the signal moves less than ``threshold`` per step.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "delta",
    "delta_decode",
    "latency",
    "latency_decode",
    "latency_targets",
    "rate",
    "rate_decode",
    "rate_targets",
    "to_one_hot",
]


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")


def rate(
    data: torch.Tensor, num_steps: int, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bernoulli rate code: ``data`` (B, *) -> spikes (B, num_steps, *), P(spike) = ``clamp(gain * data, 0, 1)``."""
    _check_steps(num_steps)
    p = (gain * data).clamp(0, 1)
    p = p.unsqueeze(1).expand(p.shape[0], num_steps, *p.shape[1:])
    return torch.bernoulli(p, generator=generator).to(data.dtype)


def rate_decode(spikes: torch.Tensor) -> torch.Tensor:
    """Firing rate per feature: spikes (B, T, *) -> mean over T, (B, *)."""
    if spikes.dim() < 2:
        raise ValueError(f"spikes must be (B, T, ...), got shape {tuple(spikes.shape)}")
    return spikes.mean(dim=1)


def latency(
    data: torch.Tensor,
    num_steps: int,
    *,
    method: str = "linear",
    tau: float = 5.0,
    threshold: float = 0.01,
    normalize: bool = False,
    clip: bool = False,
) -> torch.Tensor:
    """Time-to-first-spike code: ``data`` (B, *) in [0, 1] -> spikes (B, num_steps, *), at most one per feature.

    ``method="linear"``: spike at ``round((1 - x)(num_steps - 1))`` for ``x > threshold``.
    ``method="log"``: spike at ``round(tau ln(x / (x - threshold)))``, the time an RC membrane with time
    constant ``tau`` driven by ``x`` takes to reach ``threshold``; ``normalize=True`` first rescales these
    times so the largest one in the batch lands on step ``num_steps - 1``.
    Spikes later than the window are dropped, or put on the last step with ``clip=True``.
    """
    _check_steps(num_steps)
    if method not in ("linear", "log"):
        raise ValueError(f"latency: method must be 'linear' or 'log', got {method!r}")
    if not 0 <= threshold < 1:
        raise ValueError(f"latency: threshold must lie in [0, 1), got {threshold}")
    x = data.to(torch.float64)
    fires = x > threshold
    if method == "linear":
        t = (1 - x.clamp(0, 1)) * (num_steps - 1)
    else:
        if tau <= 0:
            raise ValueError(f"latency: tau must be positive, got {tau}")
        safe = torch.where(fires, x, torch.ones_like(x))
        t = tau * torch.log(safe / (safe - threshold))
        if normalize:
            finite = t[fires]
            tmax = finite.max() if finite.numel() else torch.tensor(1.0, dtype=t.dtype)
            t = t * (num_steps - 1) / tmax.clamp_min(1e-12)
    t = torch.round(t)
    if clip:
        t = t.clamp(max=num_steps - 1)
    fires = fires & (t <= num_steps - 1)
    steps = torch.arange(num_steps, dtype=t.dtype, device=t.device).view(1, num_steps, *([1] * (x.dim() - 1)))
    return ((steps == t.unsqueeze(1)) & fires.unsqueeze(1)).to(data.dtype)


def latency_decode(spikes: torch.Tensor) -> torch.Tensor:
    """First-spike time per feature: spikes (B, T, *) -> (B, *) float, ``T`` where a feature never fires."""
    if spikes.dim() < 2:
        raise ValueError(f"spikes must be (B, T, ...), got shape {tuple(spikes.shape)}")
    T = spikes.shape[1]
    fired = spikes != 0
    first = torch.argmax(fired.to(torch.uint8), dim=1).to(torch.float32)
    return torch.where(fired.any(dim=1), first, torch.full_like(first, float(T)))


def delta(data: torch.Tensor, threshold: float = 0.1, off_spike: bool = True) -> torch.Tensor:
    """Delta modulation of a signal ``data`` (B, T, *) -> spikes (B, T, *) in {-1, 0, 1} ({0, 1} without ``off_spike``).

    The reference starts at ``data[:, 0]``; at each step one ON spike is emitted when the signal is at
    least ``threshold`` above the reference (which then rises by ``threshold``), and an OFF spike (-1)
    when at least ``threshold`` below (only with ``off_spike``). Decode with ``delta_decode``.
    """
    if data.dim() < 2:
        raise ValueError(f"delta: data must be (B, T, ...), got shape {tuple(data.shape)}")
    if threshold <= 0:
        raise ValueError(f"delta: threshold must be positive, got {threshold}")
    ref = data[:, 0].clone()
    out = torch.zeros_like(data)
    for t in range(data.shape[1]):
        d = data[:, t] - ref
        s = (d >= threshold).to(data.dtype)
        if off_spike:
            s = s - (d <= -threshold).to(data.dtype)
        out[:, t] = s
        ref = ref + threshold * s
    return out


def delta_decode(spikes: torch.Tensor, threshold: float, initial: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Rebuild a delta-coded signal: ``initial + threshold * cumsum(spikes, dim=1)``, (B, T, *)."""
    if spikes.dim() < 2:
        raise ValueError(f"spikes must be (B, T, ...), got shape {tuple(spikes.shape)}")
    if isinstance(initial, torch.Tensor):
        initial = initial.unsqueeze(1)
    return initial + threshold * torch.cumsum(spikes, dim=1)


def to_one_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class labels (B,) int -> one-hot (B, num_classes) float; raises on labels outside [0, num_classes)."""
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"targets must be integer class labels, got {targets.dtype}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got range "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    return torch.nn.functional.one_hot(targets.long(), num_classes).to(torch.get_default_dtype())


def rate_targets(
    targets: torch.Tensor, num_classes: int, num_steps: int, on_rate: float = 1.0, off_rate: float = 0.0
) -> torch.Tensor:
    """Target spike trains for rate-coded classification: labels (B,) -> (B, num_steps, num_classes).

    The correct class fires with rate ``on_rate``, the others with ``off_rate``; spikes are spread
    evenly (deterministic: a train with rate r holds exactly ``floor(r * num_steps)`` spikes, the k-th at
    the first step where ``floor((t + 1) r)`` reaches k).
    """
    _check_steps(num_steps)
    for name, r in (("on_rate", on_rate), ("off_rate", off_rate)):
        if not 0 <= r <= 1:
            raise ValueError(f"rate_targets: {name} must lie in [0, 1], got {r}")
    oh = to_one_hot(targets, num_classes)
    r = oh * on_rate + (1 - oh) * off_rate  # (B, K)
    t = torch.arange(num_steps + 1, dtype=torch.float64).view(1, -1, 1)
    counts = torch.floor(t * r.unsqueeze(1).double() + 1e-9)  # (B, T+1, K)
    return (counts[:, 1:] - counts[:, :-1]).to(oh.dtype)


def latency_targets(
    targets: torch.Tensor, num_classes: int, num_steps: int, on_time: int = 0, off_time: int | None = None
) -> torch.Tensor:
    """Target first-spike times: labels (B,) -> (B, num_classes) float; the correct class at ``on_time``,
    the others at ``off_time`` (default ``num_steps - 1``). Compare with ``latency_decode`` of the output."""
    _check_steps(num_steps)
    off_time = num_steps - 1 if off_time is None else off_time
    for name, v in (("on_time", on_time), ("off_time", off_time)):
        if not 0 <= v <= num_steps - 1 or math.floor(v) != v:
            raise ValueError(f"latency_targets: {name} must be an integer step in [0, {num_steps - 1}], got {v}")
    oh = to_one_hot(targets, num_classes)
    return oh * on_time + (1 - oh) * off_time
