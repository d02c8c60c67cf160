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
| ``mse_regression_loss`` | mean over t >= burn_in and features of (mem[b, t] - y[b, t])^2     |

**Population codes** (snnTorch's ``population_code=True, num_classes=C``): ``ce_rate_loss``,
``ce_count_loss``, ``mse_count_loss`` and ``accuracy_rate`` accept outputs with K = C * P neurons, P per
class in contiguous groups (class c owns neurons ``c P .. c P + P - 1``); each class's spikes are first
summed over its group (``population_pool``, (B, T, C)), and the loss or metric above is applied to the C
pooled outputs. ``mse_count_loss`` then aims at ``T P rate`` spikes per group (snnTorch truncates that
target to an int; it agrees whenever ``T P rate`` is whole). ``weight`` is then (C,).

**Regression** (snnTorch's regression tutorials): the readout is a non-spiking leaky integrator, the house
``Leaky(beta, reset_mechanism="none")`` (its membrane ``U[t] = beta U[t-1] + I[t]``; ignore its spikes), and
``mse_regression_loss`` compares that membrane with a continuous target at every step (``burn_in`` skips
the first steps, while the membrane charges up from zero).
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
    "mse_regression_loss",
    "population_pool",
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


def population_pool(spk: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sum the outputs of each class's group: spk (B, T, C * P) -> (B, T, C), class c pooling neurons
    ``c P .. c P + P - 1``. Raises when K is not a multiple of ``num_classes``."""
    if spk.dim() != 3:
        raise ValueError(f"population_pool: outputs must be (B, T, K), got shape {tuple(spk.shape)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"population_pool: num_classes must be a positive int, got {num_classes!r}")
    B, T, K = spk.shape
    if K % num_classes:
        raise ValueError(f"population code: the number of outputs K={K} is not divisible by "
                         f"num_classes={num_classes}")
    return spk.reshape(B, T, num_classes, K // num_classes).sum(-1)


def _classes(spk: torch.Tensor, population_code: bool, num_classes: int | None, name: str) -> torch.Tensor:
    """The per-class outputs (B, T, C): ``spk`` itself, or its population-pooled groups."""
    if not population_code:
        if num_classes is not None:
            raise ValueError(f"{name}: num_classes is only used with population_code=True")
        return spk
    if num_classes is None:
        raise ValueError(f"{name}: population_code=True needs num_classes")
    try:
        return population_pool(spk, num_classes)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


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
                 reduction: str = "mean", population_code: bool = False,
                 num_classes: int | None = None) -> torch.Tensor:
    """Cross-entropy applied at every step to the output spikes (as logits), averaged over time.

    spk: (B, T, K); targets: (B,) labels; weight: optional (K,) class weights ((C,) with a population
    code). Returns a scalar, or (B,) for ``reduction="none"``. Pushes the correct class to fire at every
    step and the others to stay silent. ``population_code=True``: the logits at step t are the C group
    sums of that step's spikes (module docstring).
    """
    _check(spk, targets, "ce_rate_loss")
    spk = _classes(spk, population_code, num_classes, "ce_rate_loss")
    B, T, K = spk.shape
    ce = F.cross_entropy(spk.reshape(B * T, K), targets.long().repeat_interleave(T), reduction="none")
    return _reduce(ce.view(B, T).mean(1), targets, weight, reduction, K, "ce_rate_loss")


def ce_count_loss(spk: torch.Tensor, targets: torch.Tensor, *, weight: torch.Tensor | None = None,
                  reduction: str = "mean", population_code: bool = False,
                  num_classes: int | None = None) -> torch.Tensor:
    """Cross-entropy of the spike counts (sum over T, used as logits). spk (B, T, K), targets (B,);
    ``population_code=True``: of the C group counts."""
    _check(spk, targets, "ce_count_loss")
    spk = _classes(spk, population_code, num_classes, "ce_count_loss")
    ce = F.cross_entropy(spk.sum(1), targets.long(), reduction="none")
    return _reduce(ce, targets, weight, reduction, spk.shape[2], "ce_count_loss")


def mse_count_loss(spk: torch.Tensor, targets: torch.Tensor, *, correct_rate: float = 1.0,
                   incorrect_rate: float = 0.0, weight: torch.Tensor | None = None,
                   reduction: str = "mean", population_code: bool = False,
                   num_classes: int | None = None) -> torch.Tensor:
    """Squared error between spike counts and target counts ``T * rate``, divided by T.

    spk (B, T, K); the correct class aims at ``correct_rate * T`` spikes, the others at
    ``incorrect_rate * T``. Per-sample loss: mean over classes of ``(count - target)^2 / T``.
    ``population_code=True``: counts are the C group sums of P = K / C neurons each, aiming at
    ``T P rate``.
    """
    _check(spk, targets, "mse_count_loss")
    n_out = spk.shape[2]
    spk = _classes(spk, population_code, num_classes, "mse_count_loss")
    B, T, K = spk.shape
    P = n_out // K
    oh = to_one_hot(targets, K).to(spk.dtype)
    target = T * P * (oh * correct_rate + (1 - oh) * incorrect_rate)
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


def accuracy_rate(spk: torch.Tensor, targets: torch.Tensor, *, population_code: bool = False,
                  num_classes: int | None = None) -> float:
    """Fraction of samples whose most active output neuron (largest spike count over T) is the target class.
    spk (B, T, K), targets (B,). Ties go to the lowest class index. ``population_code=True``: the most
    active of the C groups (largest summed count)."""
    _check(spk, targets, "accuracy_rate")
    spk = _classes(spk, population_code, num_classes, "accuracy_rate")
    return (spk.sum(1).argmax(1) == targets.long()).float().mean().item()


def mse_regression_loss(mem: torch.Tensor, target: torch.Tensor, *, burn_in: int = 0,
                        reduction: str = "mean") -> torch.Tensor:
    """Squared error of a membrane (or any output) trajectory against a continuous target, over time.

    mem: (B, T, *) float; target: (B, T, *) (a target trajectory) or (B, *) (the same target at every
    step). Per-sample loss: mean over steps ``t >= burn_in`` and features of ``(mem - target)^2``;
    ``reduction`` ``"mean"`` (batch mean: then the loss equals ``torch.nn.MSELoss`` on the kept steps),
    ``"sum"`` or ``"none"`` (B,). ``burn_in`` in [0, T) skips the first steps.
    """
    if not isinstance(mem, torch.Tensor) or mem.dim() < 2 or not mem.is_floating_point():
        raise ValueError(f"mse_regression_loss: mem must be a floating (B, T, *) tensor, got "
                         f"{tuple(mem.shape) if isinstance(mem, torch.Tensor) else type(mem).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"mse_regression_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    B, T = mem.shape[:2]
    const = (B, *mem.shape[2:])
    if not isinstance(target, torch.Tensor) or target.shape not in (mem.shape, const):
        got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"mse_regression_loss: target must be (B, T, *) = {tuple(mem.shape)} or (B, *) = {const}, "
                         f"got {got}")
    if isinstance(burn_in, bool) or not isinstance(burn_in, int) or not 0 <= burn_in < T:
        raise ValueError(f"mse_regression_loss: burn_in must be an int in [0, T) = [0, {T}), got {burn_in!r}")
    target = target[:, burn_in:] if target.shape == mem.shape else target.unsqueeze(1)
    per = ((mem[:, burn_in:] - target) ** 2).reshape(B, -1).mean(1)
    if reduction == "mean":
        return per.mean()
    return per.sum() if reduction == "sum" else per


def l1_rate_sparsity(spk: torch.Tensor, weight: float = 1e-5, reduction: str = "sum") -> torch.Tensor:
    """L1 activity regulariser: ``weight * sum |spk|`` (``reduction="sum"``, snnTorch's) or
    ``weight * mean |spk|`` (``"mean"``: the mean firing rate). ``spk`` any shape."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"l1_rate_sparsity: reduction must be 'sum' or 'mean', got {reduction!r}")
    a = spk.abs()
    return weight * (a.sum() if reduction == "sum" else a.mean())
