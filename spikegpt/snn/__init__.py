"""Spiking-neural-network primitives: neurons, surrogate gradients, spike codes, losses, learning rules, QAT.

    import spikegpt.snn as snn
    lif = snn.Leaky(beta=0.9, spike_grad=snn.surrogate.fast_sigmoid(slope=25))
    spk, mem = lif(x)            # mem optional on the first call; state is per call / per instance

Submodules: ``neurons`` (Leaky, Lapicque, Synaptic, RLeaky, LIF and their pure step functions),
``surrogate`` (spike functions), ``spikegen`` (rate / latency / delta codes), ``functional`` (losses and
metrics, population codes, membrane regression), ``bptt`` (truncated BPTT), ``eprop`` (online learning with
eligibility traces), ``decolle`` (local per-layer losses), ``ostl`` (OSTL and OSTTP, online spatio-temporal
learning), ``eventprop`` (exact spike-time gradients by the adjoint method), ``stdp``, ``conversion``
(ANN-to-SNN), ``datasets`` (the bundled digits split of the examples), ``qat`` (fake quantisation), ``plot``
(raster and firing-rate plots; needs matplotlib), ``nir_io`` (NIR graphs: ``export_to_nir`` /
``import_from_nir``; needs ``nir``), ``events`` (Tonic event data; needs ``tonic``).
Methods side by side: ``docs/snn_training.md``. Every neuron is a
spike site of :mod:`spikegpt.recording`, re-exported here: ``with snn.record_spikes(net) as rec: net(x)``,
then ``rec.rates()`` (spikes per neuron-step of each neuron module, by ``named_modules()`` path).
"""

from spikegpt.recording import SpikeRecorder, record_spikes, spike_sites

from . import (
    bptt,
    conversion,
    datasets,
    decolle,
    eprop,
    eventprop,
    events,
    functional,
    neurons,
    nir_io,
    ostl,
    plot,
    qat,
    spikegen,
    stdp,
    surrogate,
)
from .bptt import detach_state, truncated_bptt
from .conversion import SpikingNetwork, convert_to_snn, fold_batchnorm
from .decolle import DECOLLE
from .eprop import RSNN, EProp
from .eventprop import EventPropNet, eventprop_lif, first_spike_times, ttfs_loss
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
from .nir_io import NIRNetwork, export_to_nir, import_from_nir
from .ostl import OSTL, OSTTP, LIFStack
from .qat import FakeQuantize, QuantLinear, fake_quantize, quantize_model_
from .stdp import STDP, stdp_step

__all__ = [
    "DECOLLE",
    "LIF",
    "OSTL",
    "OSTTP",
    "RSNN",
    "STDP",
    "EProp",
    "EventPropNet",
    "LIFStack",
    "NIRNetwork",
    "SpikingNetwork",
    "conversion",
    "convert_to_snn",
    "datasets",
    "decolle",
    "eventprop",
    "eventprop_lif",
    "events",
    "export_to_nir",
    "first_spike_times",
    "fold_batchnorm",
    "import_from_nir",
    "nir_io",
    "ostl",
    "ttfs_loss",
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
