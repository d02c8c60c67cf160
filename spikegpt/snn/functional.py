"""Losses, metrics and regularisers for spiking classifiers (snnTorch's ``functional`` names, batch-first).

Outputs are (B, T, K): spikes or membrane of K output neurons over T steps; ``targets`` are class
labels (B,). Every loss first forms a per-sample loss ``l_b`` and then reduces it exactly as
``torch.nn.CrossEntropyLoss`` does: ``weight`` (K,) scales sample b by ``w[y_b]``; ``reduction="mean"``
returns ``sum_b w[y_b] l_b / sum_b w[y_b]`` (the plain batch mean without ``weight``), ``"sum"`` the
weighted sum and ``"none"`` the weighted per-sample losses (B,). (snnTorch divides a weighted sum by B
instead; unweighted results agree with snnTorch's.)

| function              | per-sample loss ``l_b``                                             |
|-----------------------|---------------------------------------------------------------------|
| ``ce_rate_loss``      | mean over t of cross-entropy(spk[b, t], y_b) (softmax over classes)  |
| ``ce_count_loss``     | cross-entropy(sum_t spk[b, t], y_b)                                  |
| ``mse_count_loss``    | mean over k of (count_bk - T r_bk)^2 / T, r = correct / incorrect rate |
| ``mse_membrane_loss`` | mean over t, k of (mem[b, t, k] - target_bk)^2                       |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spikegen import to_one_hot

__all__ = [
    "accuracy_rate",
    "ce_count_loss",
    "ce_rate_loss",
    "l1_rate_sparsity",
    "mse_count_loss",
    "mse_membrane_loss",
]

REDUCTIONS = ("mean", "sum", "none")


def _check(out: torch.Tensor, targets: torch.Tensor, name: str) -> None:
    if out.dim() != 3:
        raise ValueError(f"{name}: outputs must be (B, T, K), got shape {tuple(out.shape)}")
    if targets.shape != (out.shape[0],):
        raise ValueError(f"{name}: targets must be class labels of shape (B,) = ({out.shape[0]},), "
                         f"got {tuple(targets.shape)}")
    if targets.is_floating_point():
        raise ValueError(f"{name}: targets must be integer class labels, got {targets.dtype}")


def _reduce(per_sample: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None, reduction: str,
            num_classes: int, name: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weight is not None:
        if weight.shape != (num_classes,):
            raise ValueError(f"{name}: weight must have shape (K,) = ({num_classes},), got {tuple(weight.shape)}")
        w = weight.to(per_sample.dtype)[targets.long()]
        per_sample = w * per_sample
        if reduction == "mean":
            return per_sample.sum() / w.sum()
    if reduction == "mean":
        return per_sample.mean()
    return per_sample.sum() if reduction == "sum" else per_sample


def ce_rate_loss(spk: torch.Tensor, targets: torch.Tensor, *, weight: torch.Tensor | None = None,
                 reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy applied at every step to the output spikes (as logits), averaged over time.

    spk: (B, T, K); targets: (B,) labels; weight: optional (K,) class weights. Returns a scalar, or (B,)
    for ``reduction="none"``. Pushes the correct class to fire at every step and the others to stay silent.
    """
    _check(spk, targets, "ce_rate_loss")
    B, T, K = spk.shape
    ce = F.cross_entropy(spk.reshape(B * T, K), targets.long().repeat_interleave(T), reduction="none")
    return _reduce(ce.view(B, T).mean(1), targets, weight, reduction, K, "ce_rate_loss")


def ce_count_loss(spk: torch.Tensor, targets: torch.Tensor, *, weight: torch.Tensor | None = None,
                  reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the spike counts (sum over T, used as logits). spk (B, T, K), targets (B,)."""
    _check(spk, targets, "ce_count_loss")
    ce = F.cross_entropy(spk.sum(1), targets.long(), reduction="none")
    return _reduce(ce, targets, weight, reduction, spk.shape[2], "ce_count_loss")


def mse_count_loss(spk: torch.Tensor, targets: torch.Tensor, *, correct_rate: float = 1.0,
                   incorrect_rate: float = 0.0, weight: torch.Tensor | None = None,
                   reduction: str = "mean") -> torch.Tensor:
    """Squared error between spike counts and target counts ``T * rate``, divided by T.

    spk (B, T, K); the correct class aims at ``correct_rate * T`` spikes, the others at
    ``incorrect_rate * T``. Per-sample loss: mean over classes of ``(count - target)^2 / T``.
    """
    _check(spk, targets, "mse_count_loss")
    B, T, K = spk.shape
    oh = to_one_hot(targets, K).to(spk.dtype)
    target = T * (oh * correct_rate + (1 - oh) * incorrect_rate)
    per = ((spk.sum(1) - target) ** 2).mean(1) / T
    return _reduce(per, targets, weight, reduction, K, "mse_count_loss")


def mse_membrane_loss(mem: torch.Tensor, targets: torch.Tensor, *, on_target: float = 1.0,
                      off_target: float = 0.0, weight: torch.Tensor | None = None,
                      reduction: str = "mean") -> torch.Tensor:
    """Squared error of the output membrane against ``on_target`` (correct class) / ``off_target`` (others),
    averaged over steps and classes. mem (B, T, K), targets (B,)."""
    _check(mem, targets, "mse_membrane_loss")
    K = mem.shape[2]
    oh = to_one_hot(targets, K).to(mem.dtype)
    target = (oh * on_target + (1 - oh) * off_target).unsqueeze(1)
    per = ((mem - target) ** 2).mean(dim=(1, 2))
    return _reduce(per, targets, weight, reduction, K, "mse_membrane_loss")


def accuracy_rate(spk: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose most active output neuron (largest spike count over T) is the target class.
    spk (B, T, K), targets (B,). Ties go to the lowest class index."""
    _check(spk, targets, "accuracy_rate")
    return (spk.sum(1).argmax(1) == targets.long()).float().mean().item()


def l1_rate_sparsity(spk: torch.Tensor, weight: float = 1e-5, reduction: str = "sum") -> torch.Tensor:
    """L1 activity regulariser: ``weight * sum |spk|`` (``reduction="sum"``, snnTorch's) or
    ``weight * mean |spk|`` (``"mean"``: the mean firing rate). ``spk`` any shape."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"l1_rate_sparsity: reduction must be 'sum' or 'mean', got {reduction!r}")
    a = spk.abs()
    return weight * (a.sum() if reduction == "sum" else a.mean())
