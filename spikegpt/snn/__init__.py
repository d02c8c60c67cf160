"""Spiking-neural-network primitives: neurons, surrogate gradients, spike codes, losses, learning rules, QAT.

    import spikegpt.snn as snn
    lif = snn.Leaky(beta=0.9, spike_grad=snn.surrogate.fast_sigmoid(slope=25))
    spk, mem = lif(x)            # mem optional on the first call; state is per call / per instance

Submodules: ``neurons`` (Leaky, Lapicque, Synaptic, RLeaky, LIF and their pure step functions),
``surrogate`` (spike functions), ``spikegen`` (rate / latency / delta codes), ``functional`` (losses and
metrics), ``bptt`` (truncated BPTT), ``eprop`` (online learning with eligibility traces), ``stdp``,
``qat`` (fake quantisation), ``plot`` (raster and firing-rate plots; needs matplotlib). Every neuron is a
spike site of :mod:`spikegpt.recording`, re-exported here: ``with snn.record_spikes(net) as rec: net(x)``,
then ``rec.rates()`` (spikes per neuron-step of each neuron module, by ``named_modules()`` path).
"""

from spikegpt.recording import SpikeRecorder, record_spikes, spike_sites

from . import bptt, eprop, functional, neurons, plot, qat, spikegen, stdp, surrogate
from .bptt import detach_state, truncated_bptt
from .eprop import RSNN, EProp
from .neurons import (
    LIF,
    Lapicque,
    Leaky,
    RLeaky,
    SpikingNeuron,
    Synaptic,
    detach,
    lapicque_step,
    leaky_step,
    lif_step,
    reset,
    rleaky_step,
    synaptic_step,
)
from .qat import FakeQuantize, QuantLinear, fake_quantize, quantize_model_
from .stdp import STDP, stdp_step

__all__ = [
    "LIF",
    "RSNN",
    "STDP",
    "EProp",
    "FakeQuantize",
    "Lapicque",
    "Leaky",
    "QuantLinear",
    "RLeaky",
    "SpikeRecorder",
    "SpikingNeuron",
    "Synaptic",
    "bptt",
    "detach",
    "detach_state",
    "eprop",
    "fake_quantize",
    "functional",
    "lapicque_step",
    "leaky_step",
    "lif_step",
    "neurons",
    "plot",
    "qat",
    "quantize_model_",
    "record_spikes",
    "reset",
    "rleaky_step",
    "spike_sites",
    "spikegen",
    "stdp",
    "stdp_step",
    "surrogate",
    "synaptic_step",
    "truncated_bptt",
]
