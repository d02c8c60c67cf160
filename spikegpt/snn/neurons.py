"""Spiking neurons: pure step functions over explicit state, and thin modules around them.

State is data: each neuron's state is a small ``NamedTuple`` (``LeakyState(mem)``,
``SynapticState(syn, mem)``, ``RLeakyState(spk, mem)``, ``LIFState(v)``) and each step is a pure
function ``step(x, state, **params) -> (spk, state)``. Modules hold only parameters; they keep a state
on the instance only when built with ``init_hidden=True``, and ``reset(net)`` / ``detach(net)`` walk
``net``'s own submodules, so resetting one network never touches another (there is no class-level
registry of live neurons).

Call signatures follow snnTorch: ``spk, mem = lif(x, mem)`` (``mem`` optional on the first call),
``spk, syn, mem = syn_lif(x, syn, mem)``, ``spk, mem = rlif(x, spk, mem)``. Shapes are batch-first:
``step_mode="single"`` takes one step of ``x`` (B, *); ``step_mode="multi"`` runs ``x`` (B, T, *) along
dim 1 and returns the spike train and the state trajectories, each (B, T, *) (the last entry along T
is the state to carry on).

The discrete LIF of the snnTorch tutorial (``Leaky``), with threshold ``U_thr`` and decay ``beta``::

    U[t] = beta U[t-1] + I[t] - R[t] U_thr       R[t] = H(U[t-1] - U_thr)   (reset_delay=True, default)
    S[t] = H(U[t] - U_thr)                                           (fires at equality, like ``lif``)

``reset_mechanism="zero"`` zeroes the previous membrane instead (``U[t] = beta (1 - R[t]) U[t-1] + I[t]``)
and ``"none"`` never resets. With ``reset_delay=False`` the reset also acts in the step that fires, as
in snnTorch: with ``h`` the right-hand side above, ``S[t] = H(h - U_thr)`` and
``U[t] = h - (S[t] - R[t]) U_thr`` (zero: ``h - (S[t] - R[t]) h``). When the post-reset membrane stays
below threshold (``R[t] = 0``, the usual case) this is the fused ``lif`` op's soft / hard
(``v_reset=0``) reset, ``U[t] = h - S[t] U_thr`` / ``h (1 - S[t])``, with ``beta = 1 - 1/tau`` and
``I = x / tau``. ``detach_reset=None`` treats the reset as snnTorch does: a constant for the
delayed reset, differentiated through ``S[t]`` for the immediate one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from spikegpt.kernels import lif as lif_op
from spikegpt.kernels.surrogate import SURROGATES
from spikegpt.recording import SpikeSite

from . import surrogate as _surrogate

__all__ = [
    "LIF",
    "LIFState",
    "Lapicque",
    "Leaky",
    "LeakyState",
    "RLeaky",
    "RLeakyState",
    "SpikingNeuron",
    "Synaptic",
    "SynapticState",
    "detach",
    "lapicque_beta",
    "lapicque_step",
    "leaky_step",
    "lif_step",
    "reset",
    "rleaky_step",
    "synaptic_step",
]

RESET_MECHANISMS = ("subtract", "zero", "none")
Tensorish = torch.Tensor | float


class LeakyState(NamedTuple):
    """State of ``Leaky`` / ``Lapicque``: the membrane potential ``mem``."""

    mem: torch.Tensor


class SynapticState(NamedTuple):
    """State of ``Synaptic``: synaptic current ``syn`` and membrane ``mem``."""

    syn: torch.Tensor
    mem: torch.Tensor


class RLeakyState(NamedTuple):
    """State of ``RLeaky``: last output spikes ``spk`` (fed back) and membrane ``mem``."""

    spk: torch.Tensor
    mem: torch.Tensor


class LIFState(NamedTuple):
    """State of the SpikeGPT ``LIF``: post-reset membrane ``v``."""

    v: torch.Tensor


def _check_reset(reset_mechanism: str) -> None:
    if reset_mechanism not in RESET_MECHANISMS:
        raise ValueError(f"reset_mechanism must be one of {RESET_MECHANISMS}, got {reset_mechanism!r}")


def _integrate_and_fire(
    mem: torch.Tensor,
    drive: torch.Tensor,
    beta: Tensorish,
    threshold: Tensorish,
    spike_fn: Callable,
    reset_mechanism: str,
    graded_spikes_factor: Tensorish,
    reset_delay: bool,
    detach_reset: bool | None,
    state_quant: Callable | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LIF update shared by every snnTorch-style neuron: ``mem`` (previous), ``drive`` (input) -> (spk, mem)."""
    if isinstance(beta, torch.Tensor):
        beta = beta.clamp(0, 1)
    if reset_mechanism == "none":
        new = beta * mem + drive
    else:
        r = spike_fn(mem - threshold)
        if not (reset_delay and detach_reset is False):
            r = r.detach()
        new = beta * mem + drive - r * threshold if reset_mechanism == "subtract" else beta * (1 - r) * mem + drive
    if state_quant is not None:
        new = state_quant(new)
    s = spike_fn(new - threshold)
    if not reset_delay and reset_mechanism != "none":
        sr = s.detach() if detach_reset else s
        new = new - (sr - r) * (threshold if reset_mechanism == "subtract" else new)
    return s * graded_spikes_factor, new


def leaky_step(
    x: torch.Tensor,
    state: LeakyState | None = None,
    *,
    beta: Tensorish,
    threshold: Tensorish = 1.0,
    spike_fn: Callable | None = None,
    reset_mechanism: str = "subtract",
    graded_spikes_factor: Tensorish = 1.0,
    reset_delay: bool = True,
    detach_reset: bool | None = None,
    state_quant: Callable | None = None,
) -> tuple[torch.Tensor, LeakyState]:
    """One step of the first-order LIF (see the module docstring for the equations).

    ``x`` is the input current (B, *); ``state`` None starts from a zero membrane. ``beta`` (scalar or
    broadcastable tensor) is clamped to [0, 1]. Returns spikes (B, *) (0 or ``graded_spikes_factor``)
    and the new ``LeakyState``.
    """
    _check_reset(reset_mechanism)
    mem = torch.zeros_like(x) if state is None else state.mem
    spk, mem = _integrate_and_fire(mem, x, beta, threshold, _surrogate.resolve(spike_fn), reset_mechanism,
                                   graded_spikes_factor, reset_delay, detach_reset, state_quant)
    return spk, LeakyState(mem)


def lapicque_beta(R: Tensorish, C: Tensorish, time_step: Tensorish = 1.0, discretization: str = "exact") -> Tensorish:
    """Decay per step of the RC membrane ``tau dU/dt = -U + R I`` (``tau = R C``).

    ``"exact"`` (zero-order hold of the input over each step): ``beta = exp(-dt / RC)``;
    ``"euler"`` (forward Euler): ``beta = 1 - dt / RC``. Both give the input gain ``R (1 - beta)`` in
    ``U[t] = beta U[t-1] + R (1 - beta) I[t]``, and both tend to the RC solution as ``dt -> 0``.
    """
    ratio = time_step / (R * C)
    if discretization == "exact":
        return torch.exp(-ratio) if isinstance(ratio, torch.Tensor) else math.exp(-ratio)
    if discretization == "euler":
        return 1 - ratio
    raise ValueError(f"discretization must be 'exact' or 'euler', got {discretization!r}")


def lapicque_step(
    x: torch.Tensor,
    state: LeakyState | None = None,
    *,
    R: Tensorish = 1.0,
    C: Tensorish = 1.0,
    time_step: Tensorish = 1.0,
    discretization: str = "exact",
    threshold: Tensorish = 1.0,
    spike_fn: Callable | None = None,
    reset_mechanism: str = "subtract",
    graded_spikes_factor: Tensorish = 1.0,
    reset_delay: bool = True,
    detach_reset: bool | None = None,
    state_quant: Callable | None = None,
) -> tuple[torch.Tensor, LeakyState]:
    """One step of Lapicque's RC neuron: ``U[t] = beta U[t-1] + R (1 - beta) I[t]`` with
    ``beta = lapicque_beta(R, C, time_step, discretization)``, then fire and reset as ``leaky_step``.
    ``x`` is the current I (B, *). Returns spikes (B, *) and the new ``LeakyState``."""
    beta = lapicque_beta(R, C, time_step, discretization)
    return leaky_step(R * (1 - beta) * x, state, beta=beta, threshold=threshold, spike_fn=spike_fn,
                      reset_mechanism=reset_mechanism, graded_spikes_factor=graded_spikes_factor,
                      reset_delay=reset_delay, detach_reset=detach_reset, state_quant=state_quant)


def synaptic_step(
    x: torch.Tensor,
    state: SynapticState | None = None,
    *,
    alpha: Tensorish,
    beta: Tensorish,
    threshold: Tensorish = 1.0,
    spike_fn: Callable | None = None,
    reset_mechanism: str = "subtract",
    graded_spikes_factor: Tensorish = 1.0,
    reset_delay: bool = True,
    detach_reset: bool | None = None,
    state_quant: Callable | None = None,
) -> tuple[torch.Tensor, SynapticState]:
    """One step of the second-order (current-based) LIF: ``syn[t] = alpha syn[t-1] + I[t]`` then the
    membrane integrates ``syn[t]`` as in ``leaky_step``. ``x`` (B, *); returns spikes and ``SynapticState``.

    ``reset_mechanism="zero"`` zeroes only the previous membrane, as in ``Leaky``; snnTorch's
    ``Synaptic`` instead also drops that step's input (membrane exactly 0 after a spike).
    """
    _check_reset(reset_mechanism)
    syn = torch.zeros_like(x) if state is None else state.syn
    mem = torch.zeros_like(x) if state is None else state.mem
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.clamp(0, 1)
    syn = alpha * syn + x
    if state_quant is not None:
        syn = state_quant(syn)
    spk, mem = _integrate_and_fire(mem, syn, beta, threshold, _surrogate.resolve(spike_fn), reset_mechanism,
                                   graded_spikes_factor, reset_delay, detach_reset, state_quant)
    return spk, SynapticState(syn, mem)


def rleaky_step(
    x: torch.Tensor,
    state: RLeakyState | None = None,
    *,
    recurrent: Callable[[torch.Tensor], torch.Tensor],
    beta: Tensorish,
    threshold: Tensorish = 1.0,
    spike_fn: Callable | None = None,
    reset_mechanism: str = "subtract",
    graded_spikes_factor: Tensorish = 1.0,
    reset_delay: bool = True,
    detach_reset: bool | None = None,
    state_quant: Callable | None = None,
) -> tuple[torch.Tensor, RLeakyState]:
    """One step of the recurrent LIF: the drive is ``I[t] + recurrent(S[t-1])`` (e.g. a dense
    ``nn.Linear(N, N)`` or an elementwise ``V * s``), then as ``leaky_step``. ``x`` (B, N); returns
    spikes (B, N) and ``RLeakyState(spk, mem)``. ``"zero"`` reset as in ``Leaky`` (snnTorch's ``RLeaky``
    also drops that step's input)."""
    _check_reset(reset_mechanism)
    spk = torch.zeros_like(x) if state is None else state.spk
    mem = torch.zeros_like(x) if state is None else state.mem
    spk, mem = _integrate_and_fire(mem, x + recurrent(spk), beta, threshold, _surrogate.resolve(spike_fn),
                                   reset_mechanism, graded_spikes_factor, reset_delay, detach_reset, state_quant)
    return spk, RLeakyState(spk, mem)


def lif_step(
    x: torch.Tensor,
    state: LIFState | None = None,
    *,
    tau: float = 2.0,
    threshold: float = 1.0,
    v_reset: float | None = 0.0,
    detach_reset: bool = False,
    spike_fn: Callable | None = None,
) -> tuple[torch.Tensor, LIFState]:
    """One step of SpikeGPT's LIF (the equations of the ``spikegpt.kernels.lif`` op)::

        h = v + (x - (v - v_reset)) / tau;   s = H(h - threshold);   v = h (1 - s) + v_reset s   (or h - s threshold)

    ``x`` (B, *); ``v_reset=None`` is the soft reset. Returns spikes (B, *) and ``LIFState(v)``.
    """
    spike_fn = _surrogate.resolve(spike_fn)
    v = torch.zeros_like(x) if state is None else state.v
    base = 0.0 if v_reset is None else v_reset
    h = v + (x - (v - base)) / tau
    s = spike_fn(h - threshold)
    sr = s.detach() if detach_reset else s
    v = h * (1 - sr) + v_reset * sr if v_reset is not None else h - sr * threshold
    return s, LIFState(v)


def _as_param(module: nn.Module, name: str, value: Any, learn: bool) -> None:
    t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.as_tensor(float(value))
    t = t.to(torch.get_default_dtype()) if not t.is_floating_point() else t
    if learn:
        setattr(module, name, nn.Parameter(t))
    else:
        module.register_buffer(name, t)


class SpikingNeuron(SpikeSite, nn.Module):
    """Base of the neuron modules: state handling, single/multi-step, ``init_hidden``. Subclasses set
    ``state_class`` and implement ``step(x, state) -> (spk, state)`` by calling their pure step function.
    Every neuron is a :class:`spikegpt.recording.SpikeSite`: ``spikegpt.snn.record_spikes(net)`` counts its
    spikes."""

    state_class: type = LeakyState

    def __init__(
        self,
        *,
        threshold: Tensorish = 1.0,
        spike_grad: Callable | str | None = None,
        learn_threshold: bool = False,
        reset_mechanism: str = "subtract",
        graded_spikes_factor: Tensorish = 1.0,
        learn_graded_spikes_factor: bool = False,
        reset_delay: bool = True,
        detach_reset: bool | None = None,
        state_quant: Callable | None = None,
        init_hidden: bool = False,
        output: bool = False,
        step_mode: str = "single",
    ):
        super().__init__()
        _check_reset(reset_mechanism)
        if step_mode not in ("single", "multi"):
            raise ValueError(f"step_mode must be 'single' or 'multi', got {step_mode!r}")
        self.spike_grad = _surrogate.resolve(spike_grad)
        _as_param(self, "threshold", threshold, learn_threshold)
        _as_param(self, "graded_spikes_factor", graded_spikes_factor, learn_graded_spikes_factor)
        self.reset_mechanism = reset_mechanism
        self.reset_delay = reset_delay
        self.detach_reset = detach_reset
        self.state_quant = state_quant
        self.init_hidden = init_hidden
        self.output = output
        self.step_mode = step_mode
        self.state: NamedTuple | None = None

    def _common(self) -> dict:
        return dict(threshold=self.threshold, spike_fn=self.spike_grad, reset_mechanism=self.reset_mechanism,
                    graded_spikes_factor=self.graded_spikes_factor, reset_delay=self.reset_delay,
                    detach_reset=self.detach_reset, state_quant=self.state_quant)

    def step(self, x: torch.Tensor, state: NamedTuple) -> tuple[torch.Tensor, NamedTuple]:
        raise NotImplementedError

    def init_state(self, x: torch.Tensor) -> NamedTuple:
        """Zero state shaped like one step of ``x`` (B, *)."""
        return self.state_class(*(torch.zeros_like(x) for _ in self.state_class._fields))

    def reset_state(self) -> None:
        """Forget the stored state (``init_hidden=True``); the next call starts from zeros."""
        self.state = None

    def detach_state(self) -> None:
        """Cut the stored state from the autograd graph (truncated BPTT with ``init_hidden=True``)."""
        if self.state is not None:
            self.state = self.state_class(*(t.detach() for t in self.state))

    def forward(self, x: torch.Tensor, *state: torch.Tensor | None):
        if self.init_hidden and any(s is not None for s in state):
            raise ValueError(f"{type(self).__name__}: with init_hidden=True the state is kept on the module; "
                             "do not pass it")
        fields = self.state_class._fields
        # the call signature lists the state fields except the spikes, except for RLeaky (spk, mem)
        if len(state) > len(fields):
            raise ValueError(f"{type(self).__name__}: expected at most {len(fields)} state tensors, got {len(state)}")
        if self.step_mode == "multi" and x.dim() < 2:
            raise ValueError(f"{type(self).__name__}: step_mode='multi' needs x of shape (B, T, ...), "
                             f"got {tuple(x.shape)}")
        first = x[:, 0] if self.step_mode == "multi" else x
        st = self.state if self.init_hidden and self.state is not None else self.init_state(first)
        if state:
            st = st._replace(**{f: s for f, s in zip(fields, state) if s is not None})
        if self.step_mode == "single":
            spk, st = self.step(x, st)
            out_state = st
        else:
            spks, traj = [], []
            for t in range(x.shape[1]):
                spk, st = self.step(x[:, t], st)
                spks.append(spk)
                traj.append(st)
            spk = torch.stack(spks, 1)
            out_state = self.state_class(*(torch.stack(f, 1) for f in zip(*traj)))
        if self.init_hidden:
            self.state = st
            if not self.output:
                return spk
        return (spk, *(getattr(out_state, f) for f in fields if f != "spk"))


class Leaky(SpikingNeuron):
    """First-order LIF, snnTorch's ``Leaky``: ``spk, mem = Leaky(beta=0.9)(x, mem)``.

    ``beta`` (float or per-neuron tensor, clamped to [0, 1]), ``threshold``, ``graded_spikes_factor``
    may be learnable (``learn_beta`` etc.). ``spike_grad``: a ``surrogate`` spike function (default
    ``atan(2.0)``), a surrogate name, or any callable. ``reset_mechanism``: "subtract" / "zero" / "none".
    ``state_quant``: optional fake-quantiser applied to the membrane each step (``snn.qat``). Single step:
    x (B, *) -> (spk, mem) each (B, *); ``step_mode="multi"``: x (B, T, *) -> (spk, mem) each (B, T, *).
    Equations: module docstring; they equal snnTorch's for every reset mechanism.
    """

    state_class = LeakyState

    def __init__(self, beta: Tensorish, threshold: Tensorish = 1.0, spike_grad: Callable | str | None = None,
                 *, learn_beta: bool = False, **kwargs):
        super().__init__(threshold=threshold, spike_grad=spike_grad, **kwargs)
        _as_param(self, "beta", beta, learn_beta)

    def step(self, x: torch.Tensor, state: LeakyState) -> tuple[torch.Tensor, LeakyState]:
        return leaky_step(x, state, beta=self.beta, **self._common())


class Lapicque(SpikingNeuron):
    """Lapicque's RC neuron: ``Lapicque(R=5.0, C=1e-3, time_step=1e-3)``; ``U[t] = beta U[t-1] + R (1 - beta) I[t]``.

    ``beta`` comes from ``lapicque_beta(R, C, time_step, discretization)``: ``exp(-dt/RC)`` ("exact",
    default: the RC circuit's solution at the step ends for inputs held over each step) or ``1 - dt/RC``
    ("euler"). Passing ``beta`` instead of ``C`` derives ``C`` from it. Firing and reset as ``Leaky``.
    """

    state_class = LeakyState

    def __init__(self, R: float = 1.0, C: float | None = None, time_step: float = 1.0, *, beta: float | None = None,
                 discretization: str = "exact", threshold: Tensorish = 1.0,
                 spike_grad: Callable | str | None = None, **kwargs):
        super().__init__(threshold=threshold, spike_grad=spike_grad, **kwargs)
        if discretization not in ("exact", "euler"):
            raise ValueError(f"discretization must be 'exact' or 'euler', got {discretization!r}")
        if (C is None) == (beta is None):
            raise ValueError("Lapicque: give exactly one of C and beta")
        if R <= 0 or time_step <= 0:
            raise ValueError(f"Lapicque: R and time_step must be positive, got R={R}, time_step={time_step}")
        if beta is not None:
            if not 0 < beta < 1:
                raise ValueError(f"Lapicque: beta must lie in (0, 1), got {beta}")
            rc = -time_step / math.log(beta) if discretization == "exact" else time_step / (1 - beta)
            C = rc / R
        if C <= 0:
            raise ValueError(f"Lapicque: C must be positive, got {C}")
        self.R, self.C, self.time_step, self.discretization = float(R), float(C), float(time_step), discretization

    @property
    def beta(self) -> float:
        return lapicque_beta(self.R, self.C, self.time_step, self.discretization)

    def step(self, x: torch.Tensor, state: LeakyState) -> tuple[torch.Tensor, LeakyState]:
        return lapicque_step(x, state, R=self.R, C=self.C, time_step=self.time_step,
                             discretization=self.discretization, **self._common())


class Synaptic(SpikingNeuron):
    """Second-order LIF, snnTorch's ``Synaptic``: ``spk, syn, mem = Synaptic(alpha=0.9, beta=0.8)(x, syn, mem)``.

    ``syn[t] = alpha syn[t-1] + I[t]``; the membrane integrates ``syn`` like ``Leaky``. ``alpha``, ``beta``
    learnable with ``learn_alpha`` / ``learn_beta``. Shapes as ``Leaky``.
    """

    state_class = SynapticState

    def __init__(self, alpha: Tensorish, beta: Tensorish, threshold: Tensorish = 1.0,
                 spike_grad: Callable | str | None = None, *, learn_alpha: bool = False, learn_beta: bool = False,
                 **kwargs):
        super().__init__(threshold=threshold, spike_grad=spike_grad, **kwargs)
        _as_param(self, "alpha", alpha, learn_alpha)
        _as_param(self, "beta", beta, learn_beta)

    def step(self, x: torch.Tensor, state: SynapticState) -> tuple[torch.Tensor, SynapticState]:
        return synaptic_step(x, state, alpha=self.alpha, beta=self.beta, **self._common())


class _OneToOne(nn.Module):
    def __init__(self, V: Tensorish, learn: bool):
        super().__init__()
        _as_param(self, "V", V, learn)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return s * self.V


class RLeaky(SpikingNeuron):
    """Recurrent LIF, snnTorch's ``RLeaky``: ``spk, mem = RLeaky(beta=0.9, linear_features=N)(x, spk, mem)``.

    The drive adds ``recurrent(spk[t-1])``: ``all_to_all=True`` (default) uses a dense
    ``nn.Linear(linear_features, linear_features)``; ``all_to_all=False`` an elementwise ``V * spk``
    (``V`` scalar or (N,)). ``learn_recurrent`` makes the recurrent weights trainable (default True).
    """

    state_class = RLeakyState

    def __init__(self, beta: Tensorish, V: Tensorish = 1.0, all_to_all: bool = True,
                 linear_features: int | None = None, threshold: Tensorish = 1.0,
                 spike_grad: Callable | str | None = None, *, learn_beta: bool = False,
                 learn_recurrent: bool = True, **kwargs):
        super().__init__(threshold=threshold, spike_grad=spike_grad, **kwargs)
        _as_param(self, "beta", beta, learn_beta)
        if all_to_all:
            if not linear_features or linear_features <= 0:
                raise ValueError("RLeaky: all_to_all=True needs linear_features (the number of neurons)")
            self.recurrent = nn.Linear(linear_features, linear_features)
            self.recurrent.requires_grad_(learn_recurrent)
        else:
            if linear_features is not None:
                raise ValueError("RLeaky: linear_features is for all_to_all=True; one-to-one uses V")
            self.recurrent = _OneToOne(V, learn_recurrent)

    def step(self, x: torch.Tensor, state: RLeakyState) -> tuple[torch.Tensor, RLeakyState]:
        return rleaky_step(x, state, recurrent=self.recurrent, beta=self.beta, **self._common())


class LIF(SpikingNeuron):
    """SpikeGPT's LIF neuron as a module on the fused ``spikegpt.kernels.lif`` op.

    ``LIF(tau=2.0, threshold=1.0, v_reset=0.0, detach_reset=False, surrogate="atan", alpha=2.0)``;
    ``spikes, v = lif(x, v=None, mask=None)``. Default ``step_mode="multi"``: x (B, T, *) ->
    spikes (B, T, *) and the final membrane v (B, *) (fp32; only the final one is kept, as in the op);
    ``step_mode="single"``: x (B, *) -> spikes, v (B, *). Equations: ``lif_step``. ``surrogate`` is a
    kernel surrogate name or a ``SpikeFunction``; a named one runs the fused op (``backend`` as the op),
    a ``custom`` one a per-step loop of ``lif_step``. ``mask`` (B, T) marks padding (multi-step only).
    """

    state_class = LIFState

    def __init__(self, tau: float = 2.0, threshold: float = 1.0, v_reset: float | None = 0.0,
                 detach_reset: bool = False, surrogate: str | _surrogate.SpikeFunction = "atan",
                 alpha: float = 2.0, *, step_mode: str = "multi", init_hidden: bool = False, output: bool = False,
                 backend: str | None = None):
        if tau <= 0:
            raise ValueError(f"LIF: tau must be positive, got {tau}")
        if isinstance(surrogate, str):
            if surrogate not in SURROGATES:
                raise ValueError(f"LIF: unknown surrogate {surrogate!r}; choose one of {sorted(SURROGATES)}")
            surrogate = _surrogate.SpikeFunction(surrogate, alpha)
        elif not isinstance(surrogate, _surrogate.SpikeFunction):
            raise ValueError("LIF: surrogate must be a name or a spikegpt.snn.surrogate SpikeFunction")
        super().__init__(threshold=threshold, spike_grad=surrogate, init_hidden=init_hidden, output=output,
                         step_mode=step_mode, reset_mechanism="subtract" if v_reset is None else "zero")
        del self.threshold, self.graded_spikes_factor  # plain floats here: the op takes scalars
        self.threshold = float(threshold)
        self.tau, self.v_reset, self.lif_detach_reset, self.backend = float(tau), v_reset, detach_reset, backend

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, threshold={self.threshold}, v_reset={self.v_reset}, "
                f"detach_reset={self.lif_detach_reset}, surrogate={self.spike_grad!r}")

    def step(self, x: torch.Tensor, state: LIFState) -> tuple[torch.Tensor, LIFState]:
        return lif_step(x, state, tau=self.tau, threshold=self.threshold, v_reset=self.v_reset,
                        detach_reset=self.lif_detach_reset, spike_fn=self.spike_grad)

    def forward(self, x: torch.Tensor, v: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        if self.init_hidden and v is not None:
            raise ValueError("LIF: with init_hidden=True the state is kept on the module; do not pass v")
        if self.init_hidden and self.state is not None:
            v = self.state.v
        multi = self.step_mode == "multi"
        if multi and x.dim() < 3:
            raise ValueError(f"LIF: step_mode='multi' needs x of shape (B, T, ...), got {tuple(x.shape)}")
        if not multi and mask is not None:
            raise ValueError("LIF: mask is for step_mode='multi'")
        xs = x if multi else x.unsqueeze(1)
        B, T = xs.shape[:2]
        feat = xs.shape[2:]
        x3 = xs.reshape(B, T, -1)
        v2 = None if v is None else v.reshape(B, -1)
        if v2 is not None and v2.shape[1] != x3.shape[2]:
            raise ValueError(f"LIF: v must be (B, *features) = {(B, *feat)}, got {tuple(v.shape)}")
        fn = self.spike_grad
        if fn.name is not None:
            spk, vf = lif_op(x3, v2, tau=self.tau, threshold=self.threshold, v_reset=self.v_reset,
                             detach_reset=self.lif_detach_reset, surrogate=fn.name, alpha=fn.alpha, mask=mask,
                             backend=self.backend)
        else:
            dt = torch.float64 if x.dtype == torch.float64 else torch.float32
            st = LIFState(x3.new_zeros(B, x3.shape[2], dtype=dt) if v2 is None else v2.to(dt))
            spks = []
            for t in range(T):
                s, new = self.step(x3[:, t].to(dt), st)
                if mask is not None:
                    m = mask[:, t, None].bool()
                    s = torch.where(m, s, torch.zeros_like(s))
                    new = LIFState(torch.where(m, new.v, st.v))
                st = new
                spks.append(s.to(x.dtype))
            spk = torch.stack(spks, 1) if spks else x3.new_zeros(B, 0, x3.shape[2])
            vf = st.v
        spk = spk.reshape(B, T, *feat)
        vf = vf.reshape(B, *feat)
        if not multi:
            spk = spk[:, 0]
        if self.init_hidden:
            self.state = LIFState(vf)
            if not self.output:
                return spk
        return spk, vf


def reset(net: nn.Module) -> nn.Module:
    """Reset the stored state of every neuron inside ``net`` (and only there). Returns ``net``."""
    for m in net.modules():
        if isinstance(m, SpikingNeuron):
            m.reset_state()
    return net


def detach(net: nn.Module) -> nn.Module:
    """Detach the stored state of every neuron inside ``net`` from the graph (truncated BPTT). Returns ``net``."""
    for m in net.modules():
        if isinstance(m, SpikingNeuron):
            m.detach_state()
    return net
