"""NIR (Neuromorphic Intermediate Representation) export and import for ``spikegpt.snn`` networks.

    graph = export_to_nir(net, x[:1], dt=1.0)     # nir.NIRGraph; nir.write("net.nir", graph)
    net2 = import_from_nir(graph, dt=1.0)          # NIRNetwork: y, state = net2(x)  (x (B, T, *))

NIR describes neurons in continuous time; a network means one thing in every library only when both sides
discretise with the same step ``dt`` (forward Euler, as snnTorch and Norse do). The parameter conventions
follow snnTorch's ``export_nir``: a ``Leaky(beta)`` is ``nir.LIF(tau=dt / (1 - beta), r=tau / dt, v_leak=0,
v_threshold, v_reset=0)``, i.e. the Euler step ``v <- v + dt / tau (v_leak - v + r x)`` gives back
``v <- beta v + x``. NIR's LIF resets to ``v_reset`` in the step that fires, which is ``Leaky``'s
``reset_mechanism="zero"`` (same spikes for either ``reset_delay``); reset by subtraction has no NIR form and
is refused unless ``subtract_as_zero=True``. Export traces the network with ``torch.fx`` (``nn.Sequential``
or any module whose forward adds branches: NIR sums the edges into a node). Import builds an
:class:`NIRNetwork`, a graph executor over spikegpt's own ``Leaky`` / ``Synaptic`` neurons with explicit
state; a cycle (recurrence) is cut at its back edge, which carries the previous step's output.
The full mapping, what NIR cannot express, and which directions work with snnTorch and Norse:
``docs/neuromorphic.md``. ``nir`` is imported lazily: ``import spikegpt.snn`` does not need it.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .neurons import LIF, Lapicque, Leaky, LeakyState, RLeaky, SpikingNeuron, Synaptic, SynapticState

if TYPE_CHECKING:
    import nir

__all__ = ["NIRNetwork", "NIRNeuron", "NIRState", "export_to_nir", "import_from_nir"]

logger = logging.getLogger(__name__)

_NEURONS = (Leaky, Lapicque, Synaptic, RLeaky, LIF)
_PASS_THROUGH = (nn.Identity, nn.Dropout)


# ----------------------------------------------------------------------------------------------------- export


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps spikegpt's neurons as leaves (their forward has control flow)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SpikingNeuron) or super().is_leaf_module(m, qualname)


def _returns_tuple(m: nn.Module) -> bool:
    """Whether a neuron module's call returns ``(spk, *state)`` rather than the spikes alone."""
    return not (m.init_hidden and not m.output)


class _ShapeInterpreter(fx.Interpreter):
    """Runs the traced graph on the sample data for its shapes; neurons are not run (their state is left
    untouched): they answer zeros shaped like their input (spikes and state have the input's shape)."""

    def call_module(self, target, args, kwargs):
        m = self.fetch_attr(target)
        if isinstance(m, SpikingNeuron):
            x = args[0]
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"export_to_nir: neuron {target!r} gets a {type(x).__name__}, not a tensor (the "
                                 "neuron before it returns (spk, mem)? build that one with init_hidden=True or "
                                 "index its output [0])")
            if not _returns_tuple(m):
                return torch.zeros_like(x)
            n = 3 if isinstance(m, Synaptic) else 2
            return tuple(torch.zeros_like(x) for _ in range(n))
        if args and isinstance(args[0], tuple):
            raise ValueError(f"export_to_nir: module {target!r} gets a tuple (a neuron's (spk, mem)?); build the "
                             "neuron with init_hidden=True or index its output [0]")
        return super().call_module(target, args, kwargs)


def _np(value: Any, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """``value`` (float or tensor broadcastable to ``shape``) as a float64 array of exactly ``shape``."""
    a = value.detach().cpu().double().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, np.float64)
    try:
        return np.broadcast_to(a, shape).astype(dtype).copy()
    except ValueError:
        raise ValueError(f"parameter of shape {a.shape} does not broadcast to the neuron shape {shape}") from None


def _check_neuron_exportable(name: str, m: nn.Module, subtract_as_zero: bool) -> None:
    """NIR's LIF / CubaLIF / IF reset to v_reset in the step that fires and emit 0/1 spikes."""
    kind = type(m).__name__
    if m.reset_mechanism == "none":
        raise ValueError(f"export_to_nir: {name!r} ({kind}) has reset_mechanism='none'; NIR's spiking neurons "
                         "always reset (to v_reset)")
    if m.reset_mechanism == "subtract":
        if not subtract_as_zero:
            raise ValueError(f"export_to_nir: {name!r} ({kind}) resets by subtraction, which NIR cannot express "
                             "(its neurons reset to v_reset); build it with reset_mechanism='zero' (and retrain), "
                             "or pass subtract_as_zero=True to export it as a reset-to-zero neuron (different "
                             "spikes)")
        logger.warning("export_to_nir: %r (%s) resets by subtraction; exported as reset to zero (the NIR network "
                       "spikes differently)", name, kind)
    if not torch.all(torch.as_tensor(m.graded_spikes_factor) == 1):
        raise ValueError(f"export_to_nir: {name!r} ({kind}) has graded_spikes_factor != 1; NIR spikes are 0/1")
    if m.state_quant is not None:
        raise ValueError(f"export_to_nir: {name!r} ({kind}) quantises its state (state_quant); NIR cannot express it")


def _lif_node(tau, r, v_leak, v_threshold, v_reset):
    import nir

    return nir.LIF(tau=tau.astype(np.float32), r=r.astype(np.float32), v_leak=v_leak.astype(np.float32),
                   v_threshold=v_threshold.astype(np.float32), v_reset=v_reset.astype(np.float32))


def _neuron_to_nir(name: str, m: nn.Module, shape: tuple[int, ...], dt: float, subtract_as_zero: bool):
    """One spikegpt neuron module (its per-step input shaped ``shape``, batch dropped) as a NIR node."""
    import nir

    zeros = np.zeros(shape)
    if isinstance(m, LIF):
        if m.v_reset is None:
            raise ValueError(f"export_to_nir: {name!r} (LIF) has a soft reset (v_reset=None), which NIR cannot "
                             "express; use v_reset=0.0")
        if m.tau < 1:
            raise ValueError(f"export_to_nir: {name!r} (LIF) has tau={m.tau} < 1 (a decay 1 - 1/tau < 0); NIR's "
                             "Euler-discretised LIF needs tau >= 1 step")
        vr = np.full(shape, float(m.v_reset))
        return _lif_node(np.full(shape, m.tau * dt), np.ones(shape), vr, np.full(shape, m.threshold), vr)
    _check_neuron_exportable(name, m, subtract_as_zero)
    thr = _np(m.threshold, shape)
    if isinstance(m, Synaptic):
        alpha = np.clip(_np(m.alpha, shape), 0, 1)
        beta = np.clip(_np(m.beta, shape), 0, 1)
        if np.any(alpha >= 1) or np.any(beta >= 1):
            raise ValueError(f"export_to_nir: {name!r} (Synaptic) has alpha or beta = 1 (no decay): NIR's CubaLIF "
                             "needs finite time constants")
        tau_syn, tau_mem = dt / (1 - alpha), dt / (1 - beta)
        return nir.CubaLIF(tau_syn=tau_syn.astype(np.float32), tau_mem=tau_mem.astype(np.float32),
                           r=(tau_mem / dt).astype(np.float32), v_leak=zeros.astype(np.float32),
                           v_threshold=thr.astype(np.float32), v_reset=zeros.astype(np.float32),
                           w_in=(tau_syn / dt).astype(np.float32))
    beta = np.clip(_np(m.beta, shape), 0, 1)
    if isinstance(m, RLeaky) and np.any(beta >= 1):
        raise ValueError(f"export_to_nir: RLeaky {name!r} has beta = 1; recurrent IF neurons are not exported")
    r = np.full(shape, float(m.R)) if isinstance(m, Lapicque) else None
    if np.all(beta == 1):  # a perfect integrator (Leaky only: Lapicque's beta < 1): nir.IF, v <- v + dt r x, r = 1/dt
        return nir.IF(r=np.full(shape, 1 / dt, np.float32), v_threshold=thr.astype(np.float32),
                      v_reset=zeros.astype(np.float32))
    if np.any(beta == 1):
        raise ValueError(f"export_to_nir: {name!r} mixes beta = 1 (IF) and beta < 1 (LIF) neurons in one layer")
    tau = dt / (1 - beta)
    return _lif_node(tau, tau / dt if r is None else r, zeros, thr, zeros)


def _rleaky_to_nir(name: str, m: RLeaky, shape: tuple[int, ...], dt: float, subtract_as_zero: bool):
    """An RLeaky as the cycle snnTorch writes: ``(LIF, w_rec)`` with edges lif -> w_rec -> lif; ``w_rec`` is the
    dense ``recurrent`` (Affine) or ``Linear(diag(V))`` for one-to-one feedback."""
    import nir

    if len(shape) != 1:
        raise ValueError(f"export_to_nir: RLeaky {name!r} gets per-sample input of shape {shape}; NIR's recurrent "
                         "weights act on vectors")
    lif = _neuron_to_nir(name, m, shape, dt, subtract_as_zero)
    rec = m.recurrent
    if isinstance(rec, nn.Linear):
        w = rec.weight.detach().cpu().numpy()
        wrec = nir.Affine(weight=w, bias=rec.bias.detach().cpu().numpy()) if rec.bias is not None else \
            nir.Linear(weight=w)
    else:
        wrec = nir.Linear(weight=np.diag(_np(rec.V, shape)).astype(np.float32))
    return lif, wrec


def _as_int(v, what: str) -> int:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if len(set(v)) != 1:
        raise ValueError(f"export_to_nir: Conv1d {what} {v} is not a single int")
    return int(v[0])


def _module_to_nir(name: str, m: nn.Module, in_shape: tuple, dt: float, subtract_as_zero: bool):
    """A leaf module as a NIR node; ``in_shape`` is its per-step input's shape without batch (and time)."""
    import nir

    if isinstance(m, SpikingNeuron):
        if not isinstance(m, _NEURONS):
            raise ValueError(f"export_to_nir: neuron {name!r} ({type(m).__name__}) has no NIR mapping")
        return _neuron_to_nir(name, m, in_shape, dt, subtract_as_zero)
    if isinstance(m, nn.Linear):
        if len(in_shape) != 1:
            raise ValueError(f"export_to_nir: Linear {name!r} gets per-sample input of shape {in_shape}; NIR's "
                             "Affine / Linear take vectors (flatten first)")
        w = m.weight.detach().cpu().numpy()
        if m.bias is None:
            return nir.Linear(weight=w)
        return nir.Affine(weight=w, bias=m.bias.detach().cpu().numpy())
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.padding_mode != "zeros":
            raise ValueError(f"export_to_nir: conv {name!r} has padding_mode={m.padding_mode!r}; NIR pads with zeros")
        w = m.weight.detach().cpu().numpy()
        b = m.bias.detach().cpu().numpy() if m.bias is not None else np.zeros(w.shape[0], w.dtype)
        if isinstance(m, nn.Conv1d):
            pad = m.padding if isinstance(m.padding, str) else _as_int(m.padding, "padding")
            return nir.Conv1d(input_shape=int(in_shape[1]), weight=w, stride=_as_int(m.stride, "stride"), padding=pad,
                              dilation=_as_int(m.dilation, "dilation"), groups=m.groups, bias=b)
        pad = m.padding if isinstance(m.padding, str) else tuple(int(p) for p in m.padding)
        return nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[1:]), weight=w, stride=tuple(m.stride),
                          padding=pad, dilation=tuple(m.dilation), groups=m.groups, bias=b)
    if isinstance(m, (nn.AvgPool2d, nn.LPPool2d)):
        return _pool_to_nir(name, m)
    raise ValueError(f"export_to_nir: {name!r} is a {type(m).__name__}, which has no NIR mapping (supported: Linear, "
                     "Conv1d, Conv2d, Flatten, AvgPool2d, LPPool2d(norm_type=1), Leaky, Lapicque, Synaptic, LIF)")


def _pair(v) -> np.ndarray:
    return np.array(v if isinstance(v, (tuple, list)) else (v, v), dtype=np.int64)


def _pool_to_nir(name: str, m: nn.Module):
    import nir

    if m.ceil_mode:
        raise ValueError(f"export_to_nir: pool {name!r} has ceil_mode=True; NIR pools floor")
    kernel = _pair(m.kernel_size)
    stride = kernel if m.stride is None else _pair(m.stride)
    if isinstance(m, nn.LPPool2d):  # norm_type 1 is a sum over the window (sign included)
        if float(m.norm_type) != 1.0:
            raise ValueError(f"export_to_nir: LPPool2d {name!r} has norm_type={m.norm_type}; only 1 (sum) maps")
        return nir.SumPool2d(kernel_size=kernel, stride=stride, padding=np.zeros(2, np.int64))
    padding = _pair(m.padding)
    if np.any(padding != 0) and not m.count_include_pad:
        raise ValueError(f"export_to_nir: AvgPool2d {name!r} pads with count_include_pad=False; NIR cannot say so")
    if m.divisor_override == 1:
        return nir.SumPool2d(kernel_size=kernel, stride=stride, padding=padding)
    if m.divisor_override is not None:
        raise ValueError(f"export_to_nir: AvgPool2d {name!r} has divisor_override={m.divisor_override}")
    return nir.AvgPool2d(kernel_size=kernel, stride=stride, padding=padding)


def _flatten_to_nir(name: str, m: nn.Flatten, in_shape: tuple, lead: int):
    """torch's Flatten dims count the batch (and time) axes; NIR's count from the first per-sample axis."""
    import nir

    dims = []
    for d in (m.start_dim, m.end_dim):
        nd = d - lead if d >= 0 else d
        if d >= 0 and nd < 0 or d < 0 and d < -len(in_shape):
            raise ValueError(f"export_to_nir: Flatten {name!r} (start_dim={m.start_dim}, end_dim={m.end_dim}) "
                             "flattens the batch or time axis")
        dims.append(nd)
    return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=dims[0], end_dim=dims[1])


def _step_axes(net: nn.Module) -> int:
    """How many leading axes the sample data has that NIR's types drop: 1 (B) or 2 (B, T) for multi-step nets."""
    modes = {m.step_mode for m in net.modules() if isinstance(m, SpikingNeuron)}
    if len(modes) > 1:
        raise ValueError("export_to_nir: the network mixes step_mode='single' and 'multi' neurons")
    return 2 if modes == {"multi"} else 1


def export_to_nir(net: nn.Module, sample_data: torch.Tensor, *, dt: float = 1.0,
                  subtract_as_zero: bool = False) -> nir.NIRGraph:
    """Export a spikegpt.snn network as a ``nir.NIRGraph`` (snnTorch's name and parameter conventions).

    Args:
        net: ``nn.Sequential`` or any module traceable by ``torch.fx`` whose forward chains supported modules
            and adds branches (``a + b``; NIR sums a node's incoming edges); a neuron that returns
            ``(spk, mem)`` must be indexed ``[0]`` / unpacked, and its state must not feed anything. Supported:
            ``nn.Linear`` (Affine / Linear), ``nn.Conv1d`` / ``nn.Conv2d``, ``nn.Flatten``, ``nn.AvgPool2d``
            (AvgPool2d; ``divisor_override=1``: SumPool2d), ``nn.LPPool2d(1)`` (SumPool2d), ``Leaky`` (LIF;
            beta = 1: IF), ``Lapicque`` (LIF with r = R), ``Synaptic`` (CubaLIF), ``RLeaky`` (a cycle
            LIF -> Affine -> LIF in snnTorch's layout: nodes ``<name>.lif``, ``<name>.w_rec``), SpikeGPT's ``LIF``
            (LIF with r = 1, v_leak = v_reset); ``nn.Identity`` / ``nn.Dropout`` pass through.
        sample_data: one input, (B, *) for single-step networks or (B, T, *) when the neurons run
            ``step_mode="multi"``; only its shape is used (batch and time are not part of NIR's types).
        dt: the time step the graph is written for (``tau = dt / (1 - beta)``); the reader must simulate with the
            same dt (snnTorch's import assumes 1e-4, Norse's ``from_nir`` takes ``dt``, default 1e-3).
        subtract_as_zero: export reset-by-subtraction neurons as reset-to-zero ones (logged; not equivalent).

    Returns:
        A type-checked ``nir.NIRGraph`` (node names are the modules' paths, plus ``input`` and ``output``);
        ``metadata`` holds ``{"source": "spikegpt", "dt": dt}``.

    Raises:
        ValueError: a module or operation NIR cannot express (named), a neuron that NIR cannot represent
            (subtract / no reset, graded spikes, quantised state, soft-reset LIF), bad ``dt`` or data.
    """
    import nir

    if not isinstance(net, nn.Module):
        raise ValueError(f"export_to_nir: net must be an nn.Module, got {type(net).__name__}")
    if not isinstance(sample_data, torch.Tensor) or not sample_data.is_floating_point():
        raise ValueError("export_to_nir: sample_data must be a floating-point tensor")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"export_to_nir: dt must be a positive float, got {dt!r}")
    lead = _step_axes(net)
    if sample_data.dim() <= lead:
        raise ValueError(f"export_to_nir: sample_data must be {'(B, T, *)' if lead == 2 else '(B, *)'}, got shape "
                         f"{tuple(sample_data.shape)}")
    root = nn.Sequential(net) if isinstance(net, (SpikingNeuron, nn.Linear, nn.Conv1d, nn.Conv2d,
                                                  nn.Flatten, nn.AvgPool2d, nn.LPPool2d)) else net
    try:
        graph = _Tracer().trace(root)
    except Exception as e:  # fx raises TraceError, TypeError, ... on data-dependent control flow
        raise ValueError(f"export_to_nir: torch.fx cannot trace {type(net).__name__}: {e}") from e
    gm = fx.GraphModule(root, graph)
    interp = _ShapeInterpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        interp.run(sample_data)
    env = interp.env

    def per_sample(t) -> tuple[int, ...]:
        return tuple(int(s) for s in t.shape[lead:])

    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    signal: dict[fx.Node, list[str]] = {}  # fx node -> the NIR nodes whose summed outputs it carries
    neuron_call: dict[fx.Node, str] = {}  # fx node of a neuron call returning (spk, *state) -> NIR node
    used: set[str] = {"input", "output"}

    def sources(arg, where: str) -> list[str]:
        if isinstance(arg, fx.Node) and arg in signal:
            return signal[arg]
        if isinstance(arg, fx.Node) and arg in neuron_call:
            raise ValueError(f"export_to_nir: {where} gets the (spk, mem) tuple of {neuron_call[arg]!r}; index it [0]")
        raise ValueError(f"export_to_nir: {where} gets {arg!r}, which is not a signal of the network (constants, "
                         "neuron state and extra arguments have no NIR form)")

    n_inputs = 0
    for node in graph.nodes:
        if node.op == "placeholder":
            n_inputs += 1
            if n_inputs > 1:
                if node.args and node.args[0] is None:
                    continue  # an optional argument left at None (e.g. a state); using it raises in ``sources``
                raise ValueError(f"export_to_nir: the network takes a second argument {node.target!r}; NIR graphs "
                                 "here have one input")
            nodes["input"] = nir.Input(input_type={"input": np.array(per_sample(sample_data))})
            signal[node] = ["input"]
        elif node.op == "call_module":
            m = gm.get_submodule(node.target)
            srcs = sources(node.args[0] if node.args else None, f"module {node.target!r}")
            if len(node.args) > 1 or node.kwargs:
                raise ValueError(f"export_to_nir: module {node.target!r} is called with extra arguments (state?); "
                                 "NIR nodes take one input")
            if isinstance(m, _PASS_THROUGH):
                signal[node] = list(srcs)
                continue
            name = node.target if node.target not in used else node.name
            used.add(name)
            x_in = env[node.args[0]]
            out = env[node]
            y = out[0] if isinstance(out, tuple) else out
            if isinstance(m, RLeaky):
                lif, wrec = _rleaky_to_nir(name, m, per_sample(x_in), dt, subtract_as_zero)
                nodes[f"{name}.lif"], nodes[f"{name}.w_rec"] = lif, wrec
                edges += [(s, f"{name}.lif") for s in srcs]
                edges += [(f"{name}.lif", f"{name}.w_rec"), (f"{name}.w_rec", f"{name}.lif")]
                if isinstance(env[node], tuple):
                    neuron_call[node] = f"{name}.lif"
                else:
                    signal[node] = [f"{name}.lif"]
                continue
            if isinstance(m, nn.Flatten):
                nodes[name] = _flatten_to_nir(name, m, per_sample(x_in), lead)
            else:
                nodes[name] = _module_to_nir(name, m, per_sample(x_in), dt, subtract_as_zero)
            if nodes[name].input_type.get("input") is None:
                nodes[name].input_type = {"input": np.array(per_sample(x_in))}
            if nodes[name].output_type.get("output") is None:
                nodes[name].output_type = {"output": np.array(per_sample(y))}
            edges += [(s, name) for s in srcs]
            if isinstance(out, tuple):
                neuron_call[node] = name
            else:
                signal[node] = [name]
        elif node.op == "call_function" and node.target is operator.getitem and node.args[0] in neuron_call:
            if node.args[1] == 0:
                signal[node] = [neuron_call[node.args[0]]]
            # other entries are state: left out of ``signal``, so any use of them raises in ``sources``
        elif (node.op == "call_function" and node.target in (operator.add, torch.add)) or (
                node.op == "call_method" and node.target == "add"):
            if len(node.args) != 2 or node.kwargs:
                raise ValueError(f"export_to_nir: {node.name} is an add with alpha / out; only a + b maps")
            a, b = (sources(arg, f"the sum {node.name}") for arg in node.args)
            if set(a) & set(b):
                raise ValueError(f"export_to_nir: the sum {node.name} adds the output of {sorted(set(a) & set(b))} "
                                 "twice; NIR edges cannot carry a weight (put a Linear on one branch)")
            signal[node] = a + b
        elif node.op == "output":
            arg = node.args[0]
            if isinstance(arg, fx.Node) and arg in neuron_call:
                srcs = [neuron_call[arg]]  # a neuron returning (spk, mem) ends the network: its spikes are the output
            elif isinstance(arg, (tuple, list)):
                raise ValueError("export_to_nir: the network returns several tensors; NIR graphs here have one "
                                 "output (return the spikes only)")
            else:
                srcs = sources(arg, "the network's output")
            shape = per_sample(env[arg][0] if isinstance(env[arg], tuple) else env[arg])
            nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
            edges += [(s, "output") for s in srcs]
        else:
            what = getattr(node.target, "__name__", node.target)
            raise ValueError(f"export_to_nir: operation {node.op} {what!r} ({node.name}) has no NIR form; use "
                             "modules (nn.Flatten, not x.flatten()) and + between branches")
    if len(nodes) <= 2:
        raise ValueError("export_to_nir: the network has no module NIR can express")
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"source": "spikegpt", "dt": float(dt)}, type_check=True)


# ----------------------------------------------------------------------------------------------------- import


class NIRState(NamedTuple):
    """State of an :class:`NIRNetwork`: ``neurons`` maps each neuron node to its ``LeakyState(mem)`` /
    ``SynapticState(syn, mem)`` (NIR's units: ``mem`` is v, ``syn`` the synaptic current I), and ``previous``
    maps each node whose output feeds a recurrent (back) edge to its output of the last step."""

    neurons: dict[str, NamedTuple]
    previous: dict[str, torch.Tensor]


def _arr(node, field: str, dtype) -> torch.Tensor:
    v = getattr(node, field)
    return torch.as_tensor(np.asarray(v, dtype=np.float64)).to(dtype)


class NIRNeuron(nn.Module):
    """A NIR LIF / CubaLIF / IF node on spikegpt's ``Leaky`` / ``Synaptic`` (zero reset in the step that fires).

    With NIR's Euler step of length ``dt`` (``beta = 1 - dt / tau``, ``alpha = 1 - dt / tau_syn``)::

        LIF:      v <- beta v + (1 - beta) v_leak + (dt r / tau) x
        IF:       v <- v + dt r x
        CubaLIF:  I <- alpha I + (dt w_in / tau_syn) x;   v <- beta v + (1 - beta) v_leak + (dt r / tau_mem) I
        spike z = H(v - v_threshold), then v <- v_reset where z = 1

    run as ``Leaky`` / ``Synaptic`` on ``u = v - v_reset`` (threshold ``v_threshold - v_reset``; CubaLIF's
    current is carried scaled by ``dt r / tau_mem``). ``forward(x, state=None) -> (spk, state)``: x (B, *)
    (the node's shape), spikes (B, *) in x's dtype, state ``LeakyState(mem=v)`` (LIF, IF) or
    ``SynapticState(syn=I, mem=v)`` (CubaLIF) in NIR's units. ``state=None`` starts at v = 0, I = 0, as
    spikegpt's and snnTorch's neurons do (Norse starts at v_leak). The wrapped neuron is ``self.neuron`` (a spike
    site for ``record_spikes``).
    """

    def __init__(self, kind: str, neuron: Leaky | Synaptic, gain: torch.Tensor, offset: torch.Tensor,
                 v_reset: torch.Tensor, syn_scale: torch.Tensor | None = None):
        super().__init__()
        self.kind = kind
        self.neuron = neuron
        self.register_buffer("gain", gain)
        self.register_buffer("offset", offset)
        self.register_buffer("v_reset", v_reset)
        self.register_buffer("syn_scale", syn_scale if syn_scale is not None else torch.ones(()))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    def init_state(self, x: torch.Tensor) -> LeakyState | SynapticState:
        """The zero state shaped like x (B, *)."""
        v = torch.zeros_like(x)
        return SynapticState(torch.zeros_like(x), v) if self.kind == "CubaLIF" else LeakyState(v)

    def forward(self, x: torch.Tensor, state: LeakyState | SynapticState | None = None):
        if state is None:
            state = self.init_state(x)
        if self.kind == "CubaLIF":
            spk, syn, mem = self.neuron(x * self.gain, state.syn * self.syn_scale, state.mem - self.v_reset)
            return spk, SynapticState(syn / self.syn_scale, mem + self.v_reset)
        spk, mem = self.neuron(x * self.gain + self.offset, state.mem - self.v_reset)
        return spk, LeakyState(mem + self.v_reset)


def _decay(tau: torch.Tensor, dt: float, name: str, field: str) -> torch.Tensor:
    if not torch.all(torch.isfinite(tau) & (tau > 0)):
        raise ValueError(f"import_from_nir: node {name!r} has a non-positive or non-finite {field}")
    if torch.any(tau < dt * (1 - 1e-6)):
        raise ValueError(f"import_from_nir: node {name!r} has {field} < dt={dt} (Euler decay 1 - dt/tau < 0); pass "
                         "the dt the graph was written for")
    return (1 - dt / tau).clamp(0, 1)


def _neuron_from_nir(name: str, node, dt: float, spike_grad, dtype) -> NIRNeuron:
    import nir

    kind = type(node).__name__
    thr = _arr(node, "v_threshold", dtype)
    v_reset = _arr(node, "v_reset", dtype) if getattr(node, "v_reset", None) is not None else torch.zeros_like(thr)
    r = _arr(node, "r", dtype)
    common = dict(threshold=thr - v_reset, spike_grad=spike_grad, reset_mechanism="zero", reset_delay=False)
    if isinstance(node, nir.IF):
        neuron = Leaky(beta=torch.ones_like(thr), **common)
        return NIRNeuron(kind, neuron, dt * r, torch.zeros_like(thr), v_reset)
    v_leak = _arr(node, "v_leak", dtype)
    if isinstance(node, nir.LIF):
        tau = _arr(node, "tau", dtype)
        beta = _decay(tau, dt, name, "tau")
        neuron = Leaky(beta=beta, **common)
        return NIRNeuron(kind, neuron, dt * r / tau, (1 - beta) * (v_leak - v_reset), v_reset)
    # CubaLIF
    if not torch.allclose(v_leak, v_reset):
        raise ValueError(f"import_from_nir: CubaLIF {name!r} has v_leak != v_reset, not supported (spikegpt's "
                         "Synaptic has no constant drive)")
    tau_syn, tau_mem = _arr(node, "tau_syn", dtype), _arr(node, "tau_mem", dtype)
    alpha, beta = _decay(tau_syn, dt, name, "tau_syn"), _decay(tau_mem, dt, name, "tau_mem")
    scale = dt * r / tau_mem
    if torch.any(scale == 0):
        raise ValueError(f"import_from_nir: CubaLIF {name!r} has r = 0 (no input reaches the membrane)")
    w_in = _arr(node, "w_in", dtype)
    neuron = Synaptic(alpha=alpha, beta=beta, **common)
    return NIRNeuron(kind, neuron, dt * w_in / tau_syn * scale, torch.zeros_like(thr), v_reset, scale)


def _tup(v, n: int) -> tuple[int, ...] | str:
    if isinstance(v, (str, bytes)):
        return v.decode() if isinstance(v, bytes) else v
    a = np.atleast_1d(np.asarray(v)).astype(np.int64)
    return tuple(int(x) for x in (np.broadcast_to(a, (n,)) if a.size == 1 else a))


class _Scale(nn.Module):
    """nir.Scale: elementwise ``x * scale``."""

    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _Identity(nn.Identity):
    """An Input / Output node."""


def _module_from_nir(name: str, node, dt: float, spike_grad, dtype) -> nn.Module:
    import nir

    def t(a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a)).to(dtype)

    if isinstance(node, (nir.Input, nir.Output)):
        return _Identity()
    if isinstance(node, (nir.LIF, nir.CubaLIF, nir.IF)):
        return _neuron_from_nir(name, node, dt, spike_grad, dtype)
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = np.asarray(node.weight)
        if w.ndim != 2:
            raise ValueError(f"import_from_nir: {type(node).__name__} {name!r} has a weight of shape {w.shape}; "
                             "only 2-D weights are supported")
        affine = isinstance(node, nir.Affine) and node.bias is not None
        m = nn.Linear(w.shape[1], w.shape[0], bias=affine, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(t(w))
            if affine:
                m.bias.copy_(t(node.bias))
        return m
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        w = np.asarray(node.weight)
        n = 1 if isinstance(node, nir.Conv1d) else 2
        conv = nn.Conv1d if n == 1 else nn.Conv2d
        groups = int(node.groups)
        m = conv(w.shape[1] * groups, w.shape[0], w.shape[2:], stride=_tup(node.stride, n),
                 padding=_tup(node.padding, n), dilation=_tup(node.dilation, n), groups=groups, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(t(w))
            m.bias.copy_(t(node.bias) if node.bias is not None else torch.zeros(w.shape[0]))
        return m
    if isinstance(node, nir.Flatten):  # NIR's dims count from the first per-sample axis; torch's from the batch
        return nn.Flatten(int(node.start_dim) + (node.start_dim >= 0), int(node.end_dim) + (node.end_dim >= 0))
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        return nn.AvgPool2d(_tup(node.kernel_size, 2), stride=_tup(node.stride, 2), padding=_tup(node.padding, 2),
                            divisor_override=1 if isinstance(node, nir.SumPool2d) else None)
    if isinstance(node, nir.Scale):
        return _Scale(t(node.scale))
    raise ValueError(f"import_from_nir: node {name!r} is a nir.{type(node).__name__}, which spikegpt does not import "
                     "(supported: Input, Output, Affine, Linear, Scale, Conv1d, Conv2d, Flatten, AvgPool2d, SumPool2d, "
                     "LIF, CubaLIF, IF, and subgraphs of these)")


def _flatten_graph(graph, prefix: str = "") -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Inline nested NIRGraph nodes: their inner nodes get the prefix ``"sub."``; edges into / out of a subgraph
    are rerouted through its Input / Output nodes (which are dropped)."""
    import nir

    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    entry: dict[str, list[str]] = {}  # subgraph name -> inner nodes fed by its Input nodes
    exit_: dict[str, list[str]] = {}  # subgraph name -> inner nodes feeding its Output nodes
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            inner, inner_edges = _flatten_graph(node, f"{prefix}{name}.")
            ins = {k for k, v in node.nodes.items() if isinstance(v, nir.Input)}
            outs = {k for k, v in node.nodes.items() if isinstance(v, nir.Output)}
            p = f"{prefix}{name}."
            entry[name] = [b for a, b in inner_edges if a[len(p):] in ins]
            exit_[name] = [a for a, b in inner_edges if b[len(p):] in outs]
            nodes.update({k: v for k, v in inner.items() if k[len(p):] not in ins | outs})
            edges += [(a, b) for a, b in inner_edges if a[len(p):] not in ins and b[len(p):] not in outs]
        else:
            nodes[prefix + name] = node
    for a, b in graph.edges:
        srcs = exit_.get(a, [prefix + a])
        dsts = entry.get(b, [prefix + b])
        edges += [(s, d) for s in srcs for d in dsts]
    return nodes, edges


def _key(name: str, taken: set[str]) -> str:
    k = re.sub(r"\W", "_", name) or "_"
    while k in taken:
        k += "_"
    taken.add(k)
    return k


class NIRNetwork(nn.Module):
    """A NIR graph as a spikegpt module with explicit state (built by :func:`import_from_nir`).

    ``step(x, state=None) -> (y, state)``: one time step, x (B, *in) -> the output node's value y (B, *out);
    ``forward(x, state=None) -> (y, state)``: x (B, T, *in) -> y (B, T, *out) and the state after the last
    step; ``trace(x, state=None) -> (outputs, state)``: as forward, with every node's output (B, T, *) by
    node name. ``state`` is a :class:`NIRState` (None: every neuron at v = 0). A node's input is the sum of its
    incoming edges; an edge that closes a cycle (found by depth-first search from the input) carries the
    source's output of the previous step (at the first step: its response to zero input, i.e. an Affine's
    bias, or no spikes). ``nodes`` (``nn.ModuleDict``, keys are the names with non-word characters replaced
    by ``_``) holds nn.Linear / nn.Conv* / nn.Flatten / nn.AvgPool2d modules and :class:`NIRNeuron` s.
    """

    def __init__(self, nodes: dict[str, nn.Module], edges: list[tuple[str, str]], input_name: str,
                 output_name: str):
        super().__init__()
        taken: set[str] = set()
        self.node_keys = {name: _key(name, taken) for name in nodes}
        self.nodes = nn.ModuleDict({self.node_keys[n]: m for n, m in nodes.items()})
        self.input_name, self.output_name = input_name, output_name
        succ: dict[str, list[str]] = {n: [] for n in nodes}
        for a, b in edges:
            succ[a].append(b)
        # depth-first search from the input: back edges (to a node on the stack) are delayed by one step
        order, state, delayed = [], {}, set()
        stack = [(input_name, iter(succ[input_name]))]
        state[input_name] = "open"
        while stack:
            n, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[n] = "done"
                order.append(n)
            elif state.get(nxt) == "open":
                delayed.add((n, nxt))
            elif nxt not in state:
                state[nxt] = "open"
                stack.append((nxt, iter(succ[nxt])))
        unreachable = sorted(set(nodes) - set(state))
        if unreachable:
            raise ValueError(f"import_from_nir: nodes {unreachable} are not reachable from the input {input_name!r}")
        self.order = order[::-1]
        self.inputs_of = {n: [] for n in nodes}
        for a, b in edges:
            self.inputs_of[b].append((a, (a, b) in delayed))
        self.delayed_sources = sorted({a for a, _ in delayed})

    def _rest_output(self, name: str):
        """A back-edge source's output before the first step: its response to zero input."""
        m = self.nodes[self.node_keys[name]]
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.bias is not None:
            return m.bias.view(-1, *([1] * (m.weight.dim() - 2)))
        return 0.0

    def step(self, x: torch.Tensor, state: NIRState | None = None, *, _keep: dict | None = None):
        """One time step: x (B, *in) -> (y (B, *out), NIRState)."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError("NIRNetwork.step: x must be a tensor (B, *in)")
        neurons = dict(state.neurons) if state is not None else {}
        previous = state.previous if state is not None else {}
        out: dict[str, torch.Tensor] = {}
        for name in self.order:
            m = self.nodes[self.node_keys[name]]
            if name == self.input_name:
                out[name] = m(x)
                continue
            total = None
            for src, delayed in self.inputs_of[name]:
                v = (previous[src] if src in previous else self._rest_output(src)) if delayed else out[src]
                total = v if total is None else total + v
            if isinstance(m, NIRNeuron):
                out[name], neurons[name] = m(total, neurons.get(name))
            else:
                out[name] = m(total)
        if _keep is not None:
            for k, v in out.items():
                _keep.setdefault(k, []).append(v)
        return out[self.output_name], NIRState(neurons, {s: out[s] for s in self.delayed_sources})

    def trace(self, x: torch.Tensor, state: NIRState | None = None):
        """x (B, T, *in) -> ({node name: output (B, T, *)}, NIRState after the last step)."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"NIRNetwork: x must be (B, T, *in), got {getattr(x, 'shape', type(x).__name__)}")
        keep: dict[str, list[torch.Tensor]] = {}
        for t in range(x.shape[1]):
            _, state = self.step(x[:, t], state, _keep=keep)
        return {k: torch.stack(v, 1) for k, v in keep.items()}, state

    def forward(self, x: torch.Tensor, state: NIRState | None = None):
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"NIRNetwork: x must be (B, T, *in), got {getattr(x, 'shape', type(x).__name__)}")
        ys = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, 1), state


def import_from_nir(graph: nir.NIRGraph | str | os.PathLike, *, dt: float = 1.0,
                    spike_grad: Callable | str | None = None, dtype: torch.dtype | None = None) -> NIRNetwork:
    """Build a spikegpt :class:`NIRNetwork` from a NIR graph (snnTorch's name; inverse of :func:`export_to_nir`).

    Args:
        graph: a ``nir.NIRGraph`` (nested subgraphs are inlined) or the path of a ``.nir`` file (str / Path).
        dt: the simulation step, which must be the one the graph was written for (spikegpt's and Norse's
            exporters take it as an argument; snnTorch writes for 1e-4, Norse's ``to_nir`` default is 1e-3).
        spike_grad: surrogate of the imported neurons (default ``atan``), so the network can be trained further.
        dtype: of weights and parameters (default ``torch.get_default_dtype()``).

    Returns:
        An ``NIRNetwork``; see its docstring for the call signatures, and :class:`NIRNeuron` for the equations.

    Raises:
        ValueError: a node type spikegpt does not import (named), a time constant below ``dt``, a graph without
            exactly one Input and one Output, or nodes not reachable from the input.
    """
    import nir

    if isinstance(graph, (str, os.PathLike)):
        graph = nir.read(graph)
    if not isinstance(graph, nir.NIRGraph):
        raise ValueError(f"import_from_nir: expected a nir.NIRGraph or a path, got {type(graph).__name__}")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"import_from_nir: dt must be a positive float, got {dt!r}")
    dtype = dtype or torch.get_default_dtype()
    nodes, edges = _flatten_graph(graph)
    for a, b in edges:
        for n in (a, b):
            if n not in nodes:
                raise ValueError(f"import_from_nir: edge ({a!r}, {b!r}) names a node {n!r} that does not exist")
    ins = [n for n, v in nodes.items() if isinstance(v, nir.Input)]
    outs = [n for n, v in nodes.items() if isinstance(v, nir.Output)]
    if len(ins) != 1 or len(outs) != 1:
        raise ValueError(f"import_from_nir: the graph needs exactly one Input and one Output node, has inputs {ins} "
                         f"and outputs {outs}")
    modules = {name: _module_from_nir(name, node, dt, spike_grad, dtype) for name, node in nodes.items()}
    return NIRNetwork(modules, sorted(set(edges), key=edges.index), ins[0], outs[0])
