"""Online learning with eligibility traces (e-prop, Bellec et al. 2020) for a recurrent LIF layer.

The network (``RSNN``): N recurrent LIF neurons driven by inputs x (B, T, N_in) and a leaky readout::

    I[t]   = W_in x[t] + W_rec z[t-1]
    v[t]   = beta v[t-1] + I[t] - thr z[t-1]           z[t] = H(v[t] - thr)   (snnTorch Leaky, subtract)
    y[t]   = kappa y[t-1] + W_out z[t] + b_out         (K readout units; kappa = 0: plain linear readout)

``RSNN.forward`` runs it under autograd (BPTT). ``EProp`` computes the weight gradients forward in
time instead, with memory independent of T. For a weight W feeding neuron j, the eligibility vector
``eps[t] = dv_j[t]/dW`` along the neuron's own dynamics obeys

    eps[t] = beta eps[t-1] + pre[t]                                       (reset detached, e-prop's choice)
    eps[t] = (beta - thr psi[t-1]) eps[t-1] + pre[t]                      (reset differentiated)

with ``pre`` the input x[t] (for W_in) or z[t-1] (for W_rec) and ``psi[t] = dH/dv`` the surrogate at
v[t]. The eligibility trace ``e[t] = psi[t] eps[t]`` is low-passed with the readout's kappa
(``ebar[t] = kappa ebar[t-1] + e[t]``), and the gradient accumulates as ``sum_t L_j[t] ebar[t]`` with
the learning signal ``L_j[t] = sum_k B_jk dE/dy_k[t]``: ``B = W_out^T`` ("symmetric") or a fixed random
matrix ("random"). Readout gradients are exact online: ``sum_t dE/dy[t] zbar[t]^T``.

What is dropped is only the credit that flows from one neuron's spikes into other neurons
(through W_rec): for a single layer with no recurrence (``recurrent=False`` or W_rec = 0) and
symmetric feedback, e-prop's gradients equal BPTT's exactly (the tests check this to float tolerance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import surrogate as _surrogate
from .neurons import LeakyState, leaky_step

__all__ = ["EProp", "EPropState", "RSNN"]


def loss_and_error(kind: str, y: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The readout loss of one step and its gradient dL/dy (the learning signal of the online rules).

    y: (B, K) readout; target: (B,) class ids for ``kind="ce"`` (mean cross-entropy), or (B, K) values for
    ``"mse"`` (mean squared error). Returns (loss, dL/dy (B, K))."""
    B, K = y.shape
    if kind == "ce":
        loss = F.cross_entropy(y, target.long())
        err = (torch.softmax(y, -1) - F.one_hot(target.long(), K).to(y.dtype)) / B
    else:
        loss = F.mse_loss(y, target)
        err = 2 * (y - target) / (B * K)
    return loss, err


class RSNN(nn.Module):
    """Recurrent LIF layer with a leaky readout (equations in the module docstring).

    ``RSNN(n_in, n_hidden, n_out, beta=0.9, kappa=0.0, threshold=1.0, spike_grad=None,
    recurrent=True, detach_reset=True)``. ``forward(x)``: x (B, T, n_in) -> readout y (B, T, n_out)
    and hidden spikes z (B, T, n_hidden), differentiable (BPTT). Weights: ``w_in`` (n_hidden, n_in),
    ``w_rec`` (n_hidden, n_hidden, absent when ``recurrent=False``), ``readout`` (``nn.Linear``).
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, beta: float = 0.9, kappa: float = 0.0,
                 threshold: float = 1.0, spike_grad: Callable | str | None = None, recurrent: bool = True,
                 detach_reset: bool = True, bias: bool = True):
        super().__init__()
        for name, v in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"RSNN: {name} must be a positive int, got {v!r}")
        if not 0 <= beta <= 1 or not 0 <= kappa <= 1:
            raise ValueError(f"RSNN: beta and kappa must lie in [0, 1], got beta={beta}, kappa={kappa}")
        self.spike_fn = _surrogate.resolve_differentiable(spike_grad, "RSNN", "e-prop needs its derivative")
        self.beta, self.kappa, self.threshold = float(beta), float(kappa), float(threshold)
        self.detach_reset = detach_reset
        self.w_in = nn.Parameter(torch.randn(n_hidden, n_in) / n_in**0.5)
        self.w_rec = nn.Parameter(torch.zeros(n_hidden, n_hidden)) if recurrent else None
        self.readout = nn.Linear(n_hidden, n_out, bias=bias)

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.w_in.shape[1], self.w_in.shape[0], self.readout.out_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[2] != self.sizes[0]:
            raise ValueError(f"RSNN: x must be (B, T, n_in={self.sizes[0]}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        N, K = self.sizes[1], self.sizes[2]
        drive = x @ self.w_in.T  # (B, T, N)
        st = LeakyState(x.new_zeros(B, N))
        z = x.new_zeros(B, N)
        y = x.new_zeros(B, K)
        ys, zs = [], []
        for t in range(T):
            cur = drive[:, t] if self.w_rec is None else drive[:, t] + z @ self.w_rec.T
            z, st = leaky_step(cur, st, beta=self.beta, threshold=self.threshold, spike_fn=self.spike_fn,
                               detach_reset=self.detach_reset)
            y = self.kappa * y + self.readout(z)
            ys.append(y)
            zs.append(z)
        return torch.stack(ys, 1), torch.stack(zs, 1)


class EPropState(NamedTuple):
    """Everything e-prop carries from step to step; sizes independent of T."""

    v: torch.Tensor  # (B, N) membrane
    z: torch.Tensor  # (B, N) last spikes
    y: torch.Tensor  # (B, K) readout
    eps_in: torch.Tensor  # (B, 1 or N, N_in) eligibility vectors of W_in
    eps_rec: torch.Tensor | None  # (B, 1 or N, N)
    ebar_in: torch.Tensor  # (B, N, N_in) kappa-filtered eligibility traces
    ebar_rec: torch.Tensor | None  # (B, N, N)
    zbar: torch.Tensor  # (B, N) kappa-filtered spikes (readout weight traces)
    cbar: float  # kappa-filtered constant (readout bias trace)


class EProp:
    """Forward-mode (online) gradients for an ``RSNN``; they accumulate into the parameters' ``.grad``.

    ``loss``: ``"ce"`` (cross-entropy of the readout at every step, targets (B,) labels for all steps
    or (B, T) per-step labels) or ``"mse"`` (targets (B, K) or (B, T, K)); the loss is the mean over
    batch and steps, as ``F.cross_entropy`` / ``F.mse_loss`` of the whole (B, T, K) readout.
    ``feedback``: ``"symmetric"`` (B = W_out^T, exact in the coinciding case) or ``"random"``.

    Use ``accumulate(x, targets)`` for a whole batch, or ``init_state`` + ``step`` for a stream.
    """

    def __init__(self, net: RSNN, loss: str = "ce", feedback: str = "symmetric",
                 generator: torch.Generator | None = None):
        if loss not in ("ce", "mse"):
            raise ValueError(f"EProp: loss must be 'ce' or 'mse', got {loss!r}")
        if feedback not in ("symmetric", "random"):
            raise ValueError(f"EProp: feedback must be 'symmetric' or 'random', got {feedback!r}")
        self.net, self.loss, self.feedback = net, loss, feedback
        _, N, K = net.sizes
        self.B_fb = None
        if feedback == "random":
            w = net.readout.weight
            self.B_fb = torch.randn(K, N, generator=generator, dtype=w.dtype).to(w.device) / N**0.5

    def init_state(self, batch_size: int, device=None, dtype=None) -> EPropState:
        """Zero state for ``batch_size`` sequences."""
        n_in, N, _ = self.net.sizes
        p = self.net.w_in
        kw = dict(device=device or p.device, dtype=dtype or p.dtype)
        rec = self.net.w_rec is not None
        return EPropState(
            v=torch.zeros(batch_size, N, **kw), z=torch.zeros(batch_size, N, **kw),
            y=torch.zeros(batch_size, self.net.sizes[2], **kw),
            eps_in=torch.zeros(batch_size, 1, n_in, **kw),
            eps_rec=torch.zeros(batch_size, 1, N, **kw) if rec else None,
            ebar_in=torch.zeros(batch_size, N, n_in, **kw),
            ebar_rec=torch.zeros(batch_size, N, N, **kw) if rec else None,
            zbar=torch.zeros(batch_size, N, **kw), cbar=0.0,
        )

    @staticmethod
    def _add_grad(p: torch.Tensor, g: torch.Tensor) -> None:
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)

    @torch.no_grad()
    def step(self, x: torch.Tensor, target: torch.Tensor, state: EPropState,
             scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, EPropState]:
        """One time step: x (B, n_in), target (B,) labels or (B, K) values. Adds ``scale`` times this
        step's gradient to ``.grad``. Returns the readout y (B, K), this step's loss and the new state."""
        net = self.net
        beta, thr, kappa = net.beta, net.threshold, net.kappa
        fn = net.spike_fn
        v, z = state.v, state.z
        fired = (v >= thr).to(v.dtype)  # z[t-1], as the neuron's reset sees it
        cur = x @ net.w_in.T
        if net.w_rec is not None:
            cur = cur + z @ net.w_rec.T
        v_new = beta * v + cur - thr * fired
        z_new = (v_new >= thr).to(v.dtype)
        psi = fn.grad(v_new - thr)
        decay = beta if net.detach_reset else (beta - thr * fn.grad(v - thr)).unsqueeze(-1)
        eps_in = decay * state.eps_in + x.unsqueeze(1)
        ebar_in = kappa * state.ebar_in + psi.unsqueeze(-1) * eps_in
        eps_rec = ebar_rec = None
        if net.w_rec is not None:
            eps_rec = decay * state.eps_rec + z.unsqueeze(1)
            ebar_rec = kappa * state.ebar_rec + psi.unsqueeze(-1) * eps_rec
        y = kappa * state.y + net.readout(z_new)
        zbar = kappa * state.zbar + z_new
        cbar = kappa * state.cbar + 1.0
        loss, err = loss_and_error(self.loss, y, target)
        err = err * scale
        fb = net.readout.weight if self.B_fb is None else self.B_fb  # (K, N)
        L = err @ fb  # (B, N) learning signals
        self._add_grad(net.w_in, torch.einsum("bj,bji->ji", L, ebar_in))
        if net.w_rec is not None:
            self._add_grad(net.w_rec, torch.einsum("bj,bji->ji", L, ebar_rec))
        self._add_grad(net.readout.weight, err.T @ zbar)
        if net.readout.bias is not None:
            self._add_grad(net.readout.bias, err.sum(0) * cbar)
        new = EPropState(v_new, z_new, y, eps_in, eps_rec, ebar_in, ebar_rec, zbar, cbar)
        return y, loss, new

    def accumulate(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Run x (B, T, n_in) and add the e-prop gradient of the mean-over-(B, T) loss to ``.grad``.

        ``targets``: "ce": (B,) or (B, T) labels; "mse": (B, K) or (B, T, K). Returns the loss and the
        time-averaged readout (B, K) (for predictions). Memory does not grow with T.
        """
        return run_online(self, x, targets)


def run_online(learner, x: torch.Tensor, targets: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The ``accumulate`` of the online rules (e-prop, OSTL, OSTTP): check x (B, T, n_in) and targets, then call
    ``learner.step(x_t, target_t, state, scale=1/T)`` forward in time from ``learner.init_state``. Returns the mean
    loss and the time-averaged output (B, K)."""
    name = type(learner).__name__
    n_in = learner.net.sizes[0]
    if x.dim() != 3 or x.shape[2] != n_in:
        raise ValueError(f"{name}: x must be (B, T, n_in={n_in}), got {tuple(x.shape)}")
    B, T, _ = x.shape
    per_step = targets.dim() == (2 if learner.loss == "ce" else 3)
    if targets.shape[0] != B or (per_step and targets.shape[1] != T):
        raise ValueError(f"{name}: targets of shape {tuple(targets.shape)} do not match x {tuple(x.shape)}")
    state = learner.init_state(B, x.device, x.dtype)
    total, ysum = 0.0, 0.0
    for t in range(T):
        y, loss, state = learner.step(x[:, t], targets[:, t] if per_step else targets, state, scale=1.0 / T)
        total += loss.item() / T
        ysum = ysum + y / T
    return total, ysum
