"""Online spatio-temporal learning: OSTL (Bohnstingl et al. 2022) and OSTTP (Ortner et al. 2023).

The network (``LIFStack``): feed-forward layers of LIF neurons (snnTorch ``Leaky``, subtract reset,
delayed reset), layer l with input ``x_l[t]`` (the data for l = 0, else ``z_{l-1}[t]``)::

    v_l[t] = beta v_l[t-1] + W_l x_l[t] + b_l - thr_l r_l[t]      r_l[t] = z_l[t-1] = H(v_l[t-1] - thr_l)
    z_l[t] = H(v_l[t] - thr_l)

and as output either a memoryless linear readout ``y[t] = W_o z_L[t] + b_o`` (``output="linear"``) or the
top layer's spikes ``y[t] = z_L[t]`` (``output="spikes"``), with a loss ``E[t]`` at every step.

OSTL splits ``dE[t]/dtheta_l`` into a temporal part, carried forward as per-synapse eligibility traces
along each neuron's own dynamics, and a spatial part, the error of this step backpropagated through the
layers at this step only. With ``psi_l[t] = dz_l/dv_l`` (the surrogate at ``v_l[t] - thr_l``) and
the decay ``a_l[t] = dv_l[t]/dv_l[t-1]`` (``beta``, or ``beta - thr_l psi(v_l[t-1] - thr_l)`` when the reset
is differentiated, ``detach_reset=False``)::

    e_W[t]   = a[t] e_W[t-1] + x_l[t]       e_b[t] = a[t] e_b[t-1] + 1          (dv[t]/dW, dv[t]/db)
    e_thr[t] = a[t] e_thr[t-1] - r[t] (+ thr psi(v[t-1] - thr) when the reset is differentiated)
    g_L[t]   = dE[t]/dz_L[t]  (W_o^T dE/dy, or dE/dy for output="spikes")
    g_l[t]   = W_{l+1}^T (psi_{l+1}[t] g_{l+1}[t])                        (spatial part, this step only)
    dW_l    += (psi_l g_l) e_W^T,   db_l += psi_l g_l e_b,   dthr_l += psi_l g_l (e_thr - 1)

For one LIF layer (with a linear readout or as the output) this is exactly BPTT's gradient: a neuron's
state depends on its parameters only through its own recursion, which the traces follow exactly.
For deeper stacks OSTL drops the cross-layer temporal terms: the credit that reaches theta_l through
``z_l[t'] -> v_{l+1}[t'] -> v_{l+1}[t]`` for t' < t (layer l's earlier outputs carried forward by the
upper layers' membranes and resets). The top LIF layer's and the readout's gradients stay exact.

OSTTP keeps the traces but replaces the spatial part for the hidden layers by direct random target
projection (DRTP, Frenkel et al. 2021): ``g_l[t] = B_l^T target[t]`` with a fixed random ``B_l`` (K, N_l)
and the one-hot (``"ce"``) or value (``"mse"``) target, scaled by 1/B like the batch-mean loss. No
backward pass through the layers, no weight transport, and no wait for the output error. The output
layer (the readout, or the top LIF layer for ``output="spikes"``) learns from its exact error.
Memory of both is independent of T: the state holds one trace per synapse and sample (one per input
and sample when the reset is detached, as then ``a = beta`` is shared by all neurons).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import surrogate as _surrogate
from .eprop import loss_and_error, run_online
from .neurons import LeakyState, leaky_step

__all__ = ["LIFStack", "OSTL", "OSTLState", "OSTTP"]


class LIFStack(nn.Module):
    """Feed-forward LIF layers and an output (equations in the module docstring).

    ``LIFStack(sizes, *, beta=0.9, threshold=1.0, spike_grad=None, detach_reset=True, learn_threshold=False,
    output="linear", bias=True)``. ``sizes = [n_in, N_1, ..., N_L, K]``: LIF layers ``fcs[l]``
    (``nn.Linear``) of sizes N_1..N_L and a linear readout ``readout`` to K (``output="linear"``, needs
    L >= 1), or LIF layers of sizes N_1..N_L = K whose top spikes are the output (``output="spikes"``).
    ``threshold{l}`` (N_l,) (list: ``thresholds``) are parameters with ``learn_threshold``, else buffers.
    ``spike_grad`` must be a ``spikegpt.snn.surrogate`` spike function (the online rules need its
    derivative; default atan(2)).
    ``forward(x)``: x (B, T, n_in) -> y (B, T, K) and the spikes of every LIF layer (B, T, N_l),
    differentiable (BPTT).
    """

    def __init__(self, sizes: Sequence[int], *, beta: float = 0.9, threshold: float = 1.0,
                 spike_grad: Callable | str | None = None, detach_reset: bool = True, learn_threshold: bool = False,
                 output: str = "linear", bias: bool = True):
        super().__init__()
        sizes = list(sizes)
        if output not in ("linear", "spikes"):
            raise ValueError(f"LIFStack: output must be 'linear' or 'spikes', got {output!r}")
        if len(sizes) < (3 if output == "linear" else 2):
            raise ValueError(f"LIFStack: sizes must be [n_in, hidden..., n_out] with at least "
                             f"{1 if output == 'linear' else 0} hidden size(s) for output={output!r}, got {sizes}")
        for v in sizes:
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"LIFStack: sizes must be positive ints, got {sizes}")
        if not 0 <= beta <= 1:
            raise ValueError(f"LIFStack: beta must lie in [0, 1], got {beta}")
        self.spike_fn = _surrogate.resolve_differentiable(spike_grad, "LIFStack",
                                                          "the online rules need its derivative")
        self.beta, self.detach_reset, self.output = float(beta), bool(detach_reset), output
        lif_sizes = sizes[1:-1] if output == "linear" else sizes[1:]
        ins = sizes[: len(lif_sizes)]
        self.fcs = nn.ModuleList(nn.Linear(i, o, bias=bias) for i, o in zip(ins, lif_sizes))
        for i, n in enumerate(lif_sizes):  # a parameter when trained, else a buffer (as the neurons do)
            thr = torch.full((n,), float(threshold))
            if learn_threshold:
                setattr(self, f"threshold{i}", nn.Parameter(thr))
            else:
                self.register_buffer(f"threshold{i}", thr)
        self.readout = nn.Linear(sizes[-2], sizes[-1], bias=bias) if output == "linear" else None
        self.sizes = tuple(sizes)

    @property
    def thresholds(self) -> list[torch.Tensor]:
        """The LIF layers' thresholds ``threshold{l}``, each (N_l,)."""
        return [getattr(self, f"threshold{i}") for i in range(len(self.fcs))]

    @property
    def num_layers(self) -> int:
        """Number of LIF layers L."""
        return len(self.fcs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.dim() != 3 or x.shape[2] != self.sizes[0]:
            raise ValueError(f"LIFStack: x must be (B, T, n_in={self.sizes[0]}), got {tuple(x.shape)}")
        h = x
        spikes = []
        for fc, thr in zip(self.fcs, self.thresholds):
            cur = fc(h)
            st = LeakyState(torch.zeros_like(cur[:, 0]))
            zs = []
            for t in range(x.shape[1]):
                z, st = leaky_step(cur[:, t], st, beta=self.beta, threshold=thr, spike_fn=self.spike_fn,
                                   detach_reset=self.detach_reset)
                zs.append(z)
            h = torch.stack(zs, 1)
            spikes.append(h)
        y = self.readout(h) if self.readout is not None else h
        return y, spikes


class OSTLState(NamedTuple):
    """Everything OSTL / OSTTP carry from step to step (one entry per LIF layer); sizes independent of T."""

    v: tuple[torch.Tensor, ...]  # (B, N_l) membranes
    e_w: tuple[torch.Tensor, ...]  # (B, 1 or N_l, n_in_l) eligibility of W_l (1: detached reset, shared)
    e_b: tuple[torch.Tensor, ...]  # (B, 1 or N_l) eligibility of b_l
    e_thr: tuple[torch.Tensor, ...]  # (B, N_l) eligibility of thr_l


def _add_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g.clone()
    else:
        p.grad.add_(g)


class OSTL:
    """Online spatio-temporal learning for a ``LIFStack``; gradients accumulate into the parameters' ``.grad``.

    ``loss``: ``"ce"`` (cross-entropy of y at every step; targets (B,) labels for all steps or (B, T)
    per-step labels) or ``"mse"`` (targets (B, K) or (B, T, K)); the loss is the mean over batch and steps,
    as ``F.cross_entropy`` / ``F.mse_loss`` of the whole (B, T, K) output. Exact (= BPTT) for one LIF
    layer; for more, the cross-layer temporal terms are dropped (module docstring).

    Use ``accumulate(x, targets)`` for a whole batch, or ``init_state`` + ``step`` for a stream.
    """

    spatial = True  # backpropagate the error through the layers at each step (OSTTP: no)

    def __init__(self, net: LIFStack, loss: str = "ce"):
        if not isinstance(net, LIFStack):
            raise ValueError(f"{type(self).__name__}: net must be a LIFStack, got {type(net).__name__}")
        if loss not in ("ce", "mse"):
            raise ValueError(f"{type(self).__name__}: loss must be 'ce' or 'mse', got {loss!r}")
        self.net, self.loss = net, loss

    def init_state(self, batch_size: int, device=None, dtype=None) -> OSTLState:
        """Zero state for ``batch_size`` sequences."""
        p = self.net.fcs[0].weight
        kw = dict(device=device or p.device, dtype=dtype or p.dtype)
        shared = self.net.detach_reset
        v, e_w, e_b, e_thr = [], [], [], []
        for fc in self.net.fcs:
            n, n_in = fc.out_features, fc.in_features
            v.append(torch.zeros(batch_size, n, **kw))
            e_w.append(torch.zeros(batch_size, 1 if shared else n, n_in, **kw))
            e_b.append(torch.zeros(batch_size, 1 if shared else n, **kw))
            e_thr.append(torch.zeros(batch_size, n, **kw))
        return OSTLState(tuple(v), tuple(e_w), tuple(e_b), tuple(e_thr))

    def _hidden_signal(self, layer: int, from_above: torch.Tensor | None, target: torch.Tensor,
                       scale: float) -> torch.Tensor:
        """dE/dz of hidden layer ``layer`` (B, N_l) given the spatially backpropagated one (OSTL: itself)."""
        return from_above

    @torch.no_grad()
    def step(self, x: torch.Tensor, target: torch.Tensor, state: OSTLState,
             scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, OSTLState]:
        """One time step: x (B, n_in), target (B,) labels ("ce") or (B, K) values ("mse"). Adds ``scale``
        times this step's gradient to ``.grad``. Returns the output y (B, K), this step's loss and the new state."""
        net = self.net
        if x.dim() != 2 or x.shape[1] != net.sizes[0]:
            raise ValueError(f"{type(self).__name__}: x must be (B, n_in={net.sizes[0]}), got {tuple(x.shape)}")
        beta, fn = net.beta, net.spike_fn
        h = x
        psis, new_v, new_ew, new_eb, new_et = [], [], [], [], []
        for fc, thr, v, e_w, e_b, e_thr in zip(net.fcs, net.thresholds, *state):
            fired = (v >= thr).to(v.dtype)  # z[t-1], the delayed reset
            v_new = beta * v + F.linear(h, fc.weight, fc.bias) - thr * fired
            z = (v_new >= thr).to(v.dtype)
            if net.detach_reset:
                a = beta
                e_thr = a * e_thr - fired
            else:
                psi_prev = fn.grad(v - thr)
                a = beta - thr * psi_prev
                e_thr = a * e_thr - fired + thr * psi_prev
            a_w = a if net.detach_reset else a.unsqueeze(-1)
            e_w = a_w * e_w + h.unsqueeze(1)
            e_b = a * e_b + 1.0
            psis.append(fn.grad(v_new - thr))
            new_v.append(v_new)
            new_ew.append(e_w)
            new_eb.append(e_b)
            new_et.append(e_thr)
            h = z
        y = net.readout(h) if net.readout is not None else h
        loss, err = loss_and_error(self.loss, y, target)
        err = err * scale
        n_hidden = net.num_layers if net.readout is not None else net.num_layers - 1
        g = err  # dE/dz of the top LIF layer for output="spikes"
        if net.readout is not None:
            _add_grad(net.readout.weight, err.T @ h)
            if net.readout.bias is not None:
                _add_grad(net.readout.bias, err.sum(0))
            g = err @ net.readout.weight if self.spatial else None  # (B, N_L)
        for layer in reversed(range(net.num_layers)):
            if layer < n_hidden:
                g = self._hidden_signal(layer, g, target, scale)
            fc, thr = net.fcs[layer], net.thresholds[layer]
            delta = g * psis[layer]  # dE/dv_l (B, N_l), the spatial part
            e_w = new_ew[layer]
            gw = delta.T @ e_w[:, 0] if e_w.shape[1] == 1 else torch.einsum("bj,bji->ji", delta, e_w)
            _add_grad(fc.weight, gw)
            if fc.bias is not None:
                _add_grad(fc.bias, (delta * new_eb[layer]).sum(0))
            if thr.requires_grad:
                _add_grad(thr, (delta * (new_et[layer] - 1.0)).sum(0))
            g = delta @ fc.weight if self.spatial else None  # dE/dz_{l-1} through this step only
        return y, loss, OSTLState(tuple(new_v), tuple(new_ew), tuple(new_eb), tuple(new_et))

    def accumulate(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Run x (B, T, n_in) and add the online gradient of the mean-over-(B, T) loss to ``.grad``.

        ``targets``: "ce": (B,) or (B, T) labels; "mse": (B, K) or (B, T, K). Returns the loss and the
        time-averaged output (B, K) (for predictions). Memory does not grow with T.
        """
        return run_online(self, x, targets)


class OSTTP(OSTL):
    """OSTL's eligibility traces with direct random target projection for the hidden layers.

    ``OSTTP(net, loss="ce", generator=None)``: as ``OSTL``, except that every hidden LIF layer l (all of
    them with a linear readout; all but the top one for ``output="spikes"``) takes the learning signal
    ``dE/dz_l := (scale / B) target_vec @ B_l``, with ``target_vec`` the one-hot label ("ce") or the target
    values ("mse"), (B, K), and ``B_l = feedback[l]`` a fixed (K, N_l) matrix drawn N(0, 1/K) from
    ``generator``. The output layer learns from its exact error with its own traces.
    """

    def __init__(self, net: LIFStack, loss: str = "ce", generator: torch.Generator | None = None):
        super().__init__(net, loss)
        self.spatial = False
        K = net.sizes[-1]
        w = net.fcs[0].weight
        self.feedback = [torch.randn(K, fc.out_features, generator=generator, dtype=w.dtype).to(w.device) / K**0.5
                         for fc in net.fcs]

    def _hidden_signal(self, layer: int, from_above: torch.Tensor | None, target: torch.Tensor,
                       scale: float) -> torch.Tensor:
        fb = self.feedback[layer]
        B, K = target.shape[0], fb.shape[0]
        tv = F.one_hot(target.long(), K).to(fb.dtype) if self.loss == "ce" else target.to(fb.dtype)
        return tv @ fb * (scale / B)
