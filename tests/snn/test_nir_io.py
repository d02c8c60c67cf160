"""NIR export / import: spikegpt round trips, .nir files, and spike-for-spike checks against snnTorch's and Norse's
own NIR readers, writers and simulations (every direction that works; see docs/neuromorphic.md)."""

import contextlib
import io
import logging
import warnings

import nir
import numpy as np
import pytest
import torch
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn.neurons import LeakyState, SynapticState
from spikegpt.snn.nir_io import NIRNetwork, NIRState, export_to_nir, import_from_nir

T = 25


@pytest.fixture(autouse=True)
def _quiet():
    """snnTorch's importer prints, nirtorch warns (deprecations), Norse logs parameter warnings."""
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _linear(n_in, n_out, gen, gain=1.0):
    """A Linear with positive-ish weights, so random inputs make the neurons fire often (but not always)."""
    fc = nn.Linear(n_in, n_out)
    with torch.no_grad():
        fc.weight.copy_((torch.rand(n_out, n_in, generator=gen) - 0.2) * gain)
        fc.bias.copy_(torch.rand(n_out, generator=gen) * 0.1)
    return fc


def _run_single(net, x):
    """A single-step init_hidden spikegpt / snnTorch network over x (B, T, *): spikes (B, T, *)."""
    snn.reset(net)
    return torch.stack([net(x[:, t]) for t in range(x.shape[1])], 1)


def _run_stateful(m, x):
    """A nirtorch module (snnTorch's / Norse's import, Norse's SequentialState): ``y, s = m(x_t, s)`` per step."""
    s, ys = None, []
    for t in range(x.shape[1]):
        y, s = m(x[:, t], s)
        ys.append(y)
    return torch.stack(ys, 1)


def _fires(spk):
    """Spikes and silences both occur (a comparison of spike trains that says something)."""
    return 0.02 < spk.float().mean() < 0.98


def _zero(beta=0.9, **kw):
    return snn.Leaky(beta=beta, reset_mechanism="zero", init_hidden=True, **kw)


def _syn(alpha=0.6, beta=0.8, **kw):
    return snn.Synaptic(alpha=alpha, beta=beta, reset_mechanism="zero", init_hidden=True, **kw)


def _mlp(gen, reset_delay=True):
    """Linear -> Leaky -> Linear -> Synaptic -> Linear -> Lapicque -> Linear -> IF (Leaky beta=1)."""
    rd = dict(reset_delay=reset_delay)
    return nn.Sequential(
        _linear(5, 7, gen, 1.5), _zero(torch.linspace(0.5, 0.95, 7), threshold=torch.linspace(0.8, 1.2, 7), **rd),
        _linear(7, 6, gen, 0.25), _syn(**rd),
        _linear(6, 5, gen), snn.Lapicque(R=2.0, beta=0.8, reset_mechanism="zero", init_hidden=True, **rd),
        _linear(5, 4, gen), _zero(beta=1.0, threshold=1.5, **rd))


def _hidden_spikes(net, x):
    """Spikes of every neuron module of a single-step init_hidden Sequential, by index: {str(i): (B, T, *)}."""
    snn.reset(net)
    keep = {}
    for t in range(x.shape[1]):
        h = x[:, t]
        for i, m in enumerate(net):
            h = m(h)
            if isinstance(m, snn.SpikingNeuron):
                keep.setdefault(str(i), []).append(h)
    return {k: torch.stack(v, 1) for k, v in keep.items()}


# ------------------------------------------------------------------------------------------- inside spikegpt


@pytest.mark.parametrize("dt", [1.0, 1e-3])
@pytest.mark.parametrize("reset_delay", [True, False])
def test_round_trip_gives_the_same_spikes_in_every_layer(dt, reset_delay):
    gen = _gen(1)
    net = _mlp(gen, reset_delay)
    x = torch.rand(3, T, 5, generator=gen)
    graph = export_to_nir(net, x[:, 0], dt=dt)
    kinds = [type(graph.nodes[str(i)]).__name__ for i in range(8)]
    assert kinds == ["Affine", "LIF", "Affine", "CubaLIF", "Affine", "LIF", "Affine", "IF"]
    imported = import_from_nir(graph, dt=dt)
    assert isinstance(imported, NIRNetwork)
    ref = _hidden_spikes(net, x)
    outs, state = imported.trace(x)
    for k, spk in ref.items():
        assert _fires(spk), k  # the layers do fire, and not always
        assert torch.equal(outs[k], spk), k
    y, _ = imported(x)
    assert torch.equal(y, ref["7"])
    assert isinstance(state, NIRState) and isinstance(state.neurons["3"], SynapticState)


def test_imported_membranes_are_nir_voltages_and_the_step_is_resumable():
    """With reset_delay=False spikegpt's membrane is NIR's v (reset in the step that fires): equal after each step;
    running T steps at once equals two halves with the state carried over."""
    gen = _gen(2)
    net = _mlp(gen, reset_delay=False)
    x = torch.rand(2, T, 5, generator=gen)
    imported = import_from_nir(export_to_nir(net, x[:, 0], dt=0.5), dt=0.5)
    snn.reset(net)
    state = None
    for t in range(T):
        net(x[:, t])
        _, state = imported.step(x[:, t], state)
        assert torch.allclose(state.neurons["1"].mem, net[1].state.mem, atol=1e-5)
        assert torch.allclose(state.neurons["3"].syn, net[3].state.syn, atol=1e-5)
        assert torch.allclose(state.neurons["3"].mem, net[3].state.mem, atol=1e-5)
        assert torch.allclose(state.neurons["7"].mem, net[7].state.mem, atol=1e-5)
    y_all, s_all = imported(x)
    y1, s1 = imported(x[:, :10])
    y2, s2 = imported(x[:, 10:], s1)
    assert torch.equal(torch.cat([y1, y2], 1), y_all)
    assert torch.allclose(s2.neurons["5"].mem, s_all.neurons["5"].mem)


def test_export_matches_snntorchs_parameter_conventions():
    """tau = dt / (1 - beta), r = tau / dt, w_in = tau_syn / dt, v_leak = v_reset = 0: equal to what snnTorch's own
    exporter writes for the same neurons (per-neuron parameters, the workaround for its type check)."""
    import snntorch
    from snntorch.export_nir import export_to_nir as snn_export

    gen = _gen(3)
    beta, alpha, thr = torch.linspace(0.5, 0.95, 4), torch.linspace(0.3, 0.9, 4), torch.linspace(0.7, 1.3, 4)
    fc1, fc2 = _linear(3, 4, gen), _linear(4, 4, gen)
    ours = nn.Sequential(fc1, _zero(beta, threshold=thr), fc2, _syn(alpha, beta, threshold=thr))
    theirs = nn.Sequential(fc1, snntorch.Leaky(beta=beta, threshold=thr, init_hidden=True), fc2,
                           snntorch.Synaptic(alpha=alpha, beta=beta, threshold=thr, init_hidden=True))
    g = export_to_nir(ours, torch.zeros(1, 3), dt=1e-4)
    h = snn_export(theirs, torch.zeros(1, 3), ignore_dims=[0])
    for name, fields in (("1", ("tau", "r", "v_leak", "v_threshold", "v_reset")),
                         ("3", ("tau_syn", "tau_mem", "r", "w_in", "v_leak", "v_threshold", "v_reset"))):
        assert type(g.nodes[name]) is type(h.nodes[name])
        for f in fields:
            np.testing.assert_allclose(getattr(g.nodes[name], f), getattr(h.nodes[name], f), rtol=2e-5, err_msg=f)
    np.testing.assert_allclose(g.nodes["0"].weight, h.nodes["0"].weight)
    np.testing.assert_allclose(g.nodes["2"].bias, h.nodes["2"].bias)
    np.testing.assert_allclose(g.nodes["1"].tau, 1e-4 / (1 - beta.numpy()), rtol=1e-5)  # and by hand


def test_conv_pool_flatten_round_trip():
    gen = _gen(4)
    conv1 = nn.Conv2d(2, 3, 3, padding=1)
    conv1d, conv3 = nn.Conv1d(3, 4, 3, stride=2, bias=False), nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv1.weight.uniform_(0, 0.4, generator=gen)
        conv1d.weight.uniform_(0, 0.6, generator=gen)
        conv3.weight.uniform_(0, 0.1, generator=gen)
    # (B, 2, 16, 16) -> conv -> (3, 16, 16) -> avg 2 -> (3, 8, 8) -> 1x1 conv -> sum 2 -> (3, 4, 4) -> LP(1) 2 ->
    # (3, 2, 2) -> Flatten(2) -> (3, 4) -> conv1d -> (4, 1) -> Flatten -> (4,) -> Linear -> (3,)
    net = nn.Sequential(conv1, _zero(0.8), nn.AvgPool2d(2), _zero(0.5, threshold=0.5),
                        conv3, _syn(), nn.AvgPool2d(2, divisor_override=1), nn.LPPool2d(1, 2),
                        nn.Flatten(2), conv1d, _zero(), nn.Flatten(), _linear(4, 3, gen, 0.5), _zero(0.8))
    x = (torch.rand(2, T, 2, 16, 16, generator=gen) < 0.4).float()
    g = export_to_nir(net, x[:, 0])
    kinds = {k: type(v).__name__ for k, v in g.nodes.items()}
    assert [kinds[str(i)] for i in (0, 2, 6, 7, 8, 9, 11)] == ["Conv2d", "AvgPool2d", "SumPool2d", "SumPool2d",
                                                               "Flatten", "Conv1d", "Flatten"]
    assert g.nodes["8"].start_dim == 1 and g.nodes["11"].start_dim == 0  # NIR counts dims without the batch axis
    ref = _hidden_spikes(net, x)
    outs, _ = import_from_nir(g).trace(x)
    for k in ("1", "3", "5", "10", "13"):
        assert _fires(ref[k]), k
        assert torch.equal(outs[k], ref[k]), k


class _Skip(nn.Module):
    """A branch and a skip connection: NIR sums the two edges into ``lif2``."""

    def __init__(self, gen):
        super().__init__()
        self.fc1, self.fc2, self.skip = _linear(4, 6, gen, 1.5), _linear(6, 5, gen), _linear(4, 5, gen)
        self.lif1, self.lif2 = snn.Leaky(beta=0.8, reset_mechanism="zero"), _zero(0.7)

    def forward(self, x):
        spk, _ = self.lif1(self.fc1(x))
        return self.lif2(self.fc2(spk) + self.skip(x))


def test_general_graph_with_a_skip_connection():
    gen = _gen(5)
    net = _Skip(gen)
    x = torch.rand(2, T, 4, generator=gen)
    g = export_to_nir(net, x[:, 0])
    assert {("fc2", "lif2"), ("skip", "lif2"), ("input", "skip"), ("input", "fc1")} <= set(g.edges)
    snn.reset(net)
    mem, ys = None, []
    for t in range(T):
        spk, mem = net.lif1(net.fc1(x[:, t]), mem)
        ys.append(net.lif2(net.fc2(spk) + net.skip(x[:, t])))
    y, _ = import_from_nir(g)(x)
    assert torch.stack(ys, 1).sum() > 0 and torch.equal(y, torch.stack(ys, 1))


def test_multi_step_networks_and_spikegpts_lif_export():
    """(B, T, *) sample data for step_mode="multi" nets; SpikeGPT's LIF (fused op) is a NIR LIF with r = 1,
    v_leak = v_reset."""
    gen = _gen(6)
    net = nn.Sequential(_linear(4, 6, gen, 3.0), snn.LIF(tau=2.0, v_reset=0.0, init_hidden=True),
                        _linear(6, 5, gen, 2.0), snn.LIF(tau=3.0, threshold=0.7, v_reset=-0.2, init_hidden=True),
                        _linear(5, 3, gen, 2.0), _zero(0.9, step_mode="multi"))
    x = torch.rand(2, T, 4, generator=gen)
    g = export_to_nir(net, x, dt=2.0)
    lif = g.nodes["3"]
    assert isinstance(lif, nir.LIF)
    np.testing.assert_allclose(lif.tau, 6.0)
    np.testing.assert_allclose(lif.r, 1.0)
    np.testing.assert_allclose(lif.v_leak, -0.2)
    np.testing.assert_allclose(lif.v_reset, -0.2)
    snn.reset(net)
    with torch.no_grad():
        s1 = net[1](net[0](x))
        s3 = net[3](net[2](s1))
        s5 = net[5](net[4](s3))
    outs, _ = import_from_nir(g, dt=2.0).trace(x)
    for k, ref in (("1", s1), ("3", s3), ("5", s5)):
        assert ref.sum() > 0 and torch.equal(outs[k], ref), k


@pytest.mark.parametrize("all_to_all", [True, False])
def test_rleaky_exports_as_a_cycle_and_comes_back(all_to_all):
    gen = _gen(7)
    kw = dict(linear_features=5) if all_to_all else dict(V=torch.linspace(-0.5, 0.5, 5), all_to_all=False)
    rl = snn.RLeaky(beta=0.85, reset_mechanism="zero", init_hidden=True, **kw)
    if all_to_all:
        with torch.no_grad():
            rl.recurrent.weight.copy_(torch.randn(5, 5, generator=gen) * 0.5)
    net = nn.Sequential(_linear(3, 5, gen, 1.5), rl, _linear(5, 2, gen), _zero())
    x = torch.rand(2, T, 3, generator=gen)
    g = export_to_nir(net, x[:, 0])
    assert {("1.lif", "1.w_rec"), ("1.w_rec", "1.lif"), ("0", "1.lif"), ("1.lif", "2")} <= set(g.edges)
    assert isinstance(g.nodes["1.w_rec"], nir.Affine if all_to_all else nir.Linear)
    ref = _run_single(net[:2], x)
    outs, state = import_from_nir(g).trace(x)
    assert _fires(ref) and torch.equal(outs["1.lif"], ref)
    assert set(state.previous) == {"1.w_rec"}


def test_nir_file_round_trip(tmp_path):
    gen = _gen(8)
    net = _mlp(gen)
    x = torch.rand(2, T, 5, generator=gen)
    g = export_to_nir(net, x[:, 0], dt=0.25)
    path = tmp_path / "net.nir"
    nir.write(path, g)
    g2 = nir.read(path)
    assert set(g2.nodes) == set(g.nodes) and set(map(tuple, g2.edges)) == set(g.edges)
    np.testing.assert_array_equal(g2.nodes["3"].tau_syn, g.nodes["3"].tau_syn)
    assert float(g2.metadata["dt"]) == 0.25
    y, _ = import_from_nir(path, dt=0.25)(x)
    assert torch.equal(y, _run_single(net, x))


def test_imported_network_records_spikes_and_trains():
    gen = _gen(9)
    net = _mlp(gen)
    x = torch.rand(2, T, 5, generator=gen)
    imported = import_from_nir(export_to_nir(net, x[:, 0]), spike_grad="fast_sigmoid")
    with snn.record_spikes(imported) as rec:
        y, _ = imported(x)
    rates = rec.rates()
    assert set(rates) == {"nodes.1.neuron", "nodes.3.neuron", "nodes.5.neuron", "nodes.7.neuron"}
    assert rates["nodes.7.neuron"] == pytest.approx(y.mean().item())
    y.sum().backward()
    assert imported.nodes["0"].weight.grad is not None and imported.nodes["0"].weight.grad.abs().sum() > 0


def test_export_refuses_what_nir_cannot_express():
    x = torch.rand(2, 4)
    sub = nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, init_hidden=True))
    with pytest.raises(ValueError, match="subtraction"):
        export_to_nir(sub, x)
    with pytest.raises(ValueError, match="reset_mechanism='none'"):
        export_to_nir(nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, reset_mechanism="none", init_hidden=True)), x)
    with pytest.raises(ValueError, match="graded_spikes_factor"):
        export_to_nir(nn.Sequential(nn.Linear(4, 3), _zero(graded_spikes_factor=2.0)), x)
    with pytest.raises(ValueError, match="soft reset"):
        export_to_nir(nn.Sequential(nn.Linear(4, 3), snn.LIF(v_reset=None, init_hidden=True)), x[:, None])
    with pytest.raises(ValueError, match="ReLU"):
        export_to_nir(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), x)
    with pytest.raises(ValueError, match="index it"):
        export_to_nir(nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, reset_mechanism="zero"), nn.Linear(3, 2)), x)
    with pytest.raises(ValueError, match="sample_data"):
        export_to_nir(nn.Sequential(nn.Linear(4, 3), _zero(step_mode="multi")), x)
    with pytest.raises(ValueError, match="dt"):
        export_to_nir(nn.Sequential(nn.Linear(4, 3), _zero()), x, dt=0.0)

    class Method(nn.Module):
        def __init__(self):
            super().__init__()
            self.lif = _zero()

        def forward(self, x):
            return self.lif(x.flatten(1))

    with pytest.raises(ValueError, match="flatten"):
        export_to_nir(Method(), x)
    g = export_to_nir(sub, x, subtract_as_zero=True)  # the explicit opt-in
    assert isinstance(g.nodes["1"], nir.LIF)


def test_import_refuses_what_it_cannot_run():
    li = nir.NIRGraph.from_list(nir.Affine(np.ones((2, 3), np.float32), np.zeros(2, np.float32)),
                                nir.LI(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2)))
    with pytest.raises(ValueError, match="nir.LI"):
        import_from_nir(li)
    lif = nir.NIRGraph.from_list(nir.LIF(tau=np.full(2, 1e-3), r=np.ones(2), v_leak=np.zeros(2),
                                         v_threshold=np.ones(2)))
    with pytest.raises(ValueError, match="tau < dt"):
        import_from_nir(lif, dt=1.0)
    with pytest.raises(ValueError, match="NIRGraph"):
        import_from_nir(nir.Affine(np.ones((2, 3)), np.zeros(2)))
    two = nir.NIRGraph(nodes={"a": nir.Input(np.array([2])), "b": nir.Input(np.array([2])),
                              "o": nir.Output(np.array([2]))}, edges=[("a", "o"), ("b", "o")], type_check=False)
    with pytest.raises(ValueError, match="exactly one Input"):
        import_from_nir(two)
    with pytest.raises(ValueError, match=r"\(B, T"):
        import_from_nir(lif, dt=1e-3)(torch.zeros(3))


# ------------------------------------------------------------------------------------- against snnTorch (1.0.0)


def test_spikegpt_to_snntorch_same_spikes_and_membranes():
    """(a) spikegpt export (dt=1e-4, the step snnTorch's importer hard-codes) -> snnTorch's import_from_nir ->
    snnTorch's simulation: the same spikes as spikegpt's net; snnTorch's membranes equal the imported NIRNetwork's."""
    import snntorch.utils
    from snntorch.import_nir import import_from_nir as snn_import

    gen = _gen(10)
    net = nn.Sequential(_linear(5, 7, gen, 1.5), _zero(torch.linspace(0.5, 0.95, 7)), _linear(7, 6, gen, 0.25),
                        _syn(), _linear(6, 4, gen, 0.5), _zero(0.8))
    x = torch.rand(3, T, 5, generator=gen)
    g = export_to_nir(net, x[:, 0], dt=1e-4)
    theirs = snn_import(g)
    ours = import_from_nir(g, dt=1e-4)
    snntorch.utils.reset(theirs)
    ref = _run_single(net, x)
    state, s, ys = None, None, []
    for t in range(T):
        y, s = theirs(x[:, t], s)
        ys.append(y)
        _, state = ours.step(x[:, t], state)
        assert torch.allclose(getattr(theirs, "1").mem, state.neurons["1"].mem, atol=1e-5)
        assert torch.allclose(getattr(theirs, "3").syn, state.neurons["3"].syn, atol=1e-5)
        assert torch.allclose(getattr(theirs, "5").mem, state.neurons["5"].mem, atol=1e-5)
    assert _fires(ref) and torch.equal(torch.stack(ys, 1), ref)


def test_spikegpt_conv_and_rleaky_to_snntorch():
    import snntorch.utils
    from snntorch.import_nir import import_from_nir as snn_import

    gen = _gen(11)
    conv, conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3)
    with torch.no_grad():
        conv.weight.uniform_(0, 0.5, generator=gen)
        conv2.weight.uniform_(0, 0.03, generator=gen)
    net = nn.Sequential(conv, _zero(0.8), nn.AvgPool2d(2), conv2, _syn(), nn.AvgPool2d(2, divisor_override=1))
    x = (torch.rand(2, T, 2, 8, 8, generator=gen) < 0.5).float()
    theirs = snn_import(export_to_nir(net, x[:, 0], dt=1e-4))
    snntorch.utils.reset(theirs)
    ref = _run_single(net, x)  # spike counts of 2x2 windows (SumPool2d, nirtorch's LPPool2d(1) in snnTorch)
    assert ref.max() > 1 and _fires(_run_single(net[:5], x)) and _fires(_run_single(net[:2], x))
    assert torch.equal(_run_stateful(theirs, x), ref)

    # Lapicque (r = R) and SpikeGPT's LIF (r = 1): snnTorch rescales their thresholds, the spikes stay
    x = torch.rand(3, T, 5, generator=gen)
    for neuron in (snn.Lapicque(R=3.0, beta=0.8, threshold=1.5, reset_mechanism="zero", init_hidden=True),
                   snn.LIF(tau=2.5, init_hidden=True, step_mode="single")):
        net = nn.Sequential(_linear(5, 4, gen, 1.5), neuron)
        with contextlib.redirect_stdout(io.StringIO()):
            theirs = snn_import(export_to_nir(net, x[:, 0], dt=1e-4))
        snntorch.utils.reset(theirs)
        ref = _run_single(net, x)
        assert _fires(ref) and torch.equal(_run_stateful(theirs, x), ref), type(neuron).__name__

    rl = snn.RLeaky(beta=0.85, linear_features=4, reset_mechanism="zero", reset_delay=False, init_hidden=True)
    with torch.no_grad():
        rl.recurrent.weight.copy_(torch.randn(4, 4, generator=gen) * 0.5)
    net = nn.Sequential(_linear(3, 4, gen, 1.5), rl)
    x = torch.rand(2, T, 3, generator=gen)
    theirs = snn_import(export_to_nir(net, x[:, 0], dt=1e-4))
    snntorch.utils.reset(theirs)
    ref = _run_single(net, x)
    # snnTorch 1.0.0 cannot run a recurrent graph: its importer's RLeaky branch is unreachable with nirtorch 2.6,
    # whose generic recurrence differs (even its own RLeaky export does not round-trip); spikegpt reads it instead
    assert _fires(ref) and not torch.equal(_run_stateful(theirs, x), ref)
    y, _ = import_from_nir(export_to_nir(net, x[:, 0], dt=1e-4), dt=1e-4)(x)
    assert torch.equal(y, ref)


def test_snntorch_flatten_import_drops_the_batch_axis():
    """snnTorch's (and Norse's) importer builds torch Flatten(start_dim, end_dim) from NIR's dims, which count from
    the first per-sample axis, so Flatten flattens the batch too: batch 1 works (the output loses its batch axis)."""
    import snntorch.utils
    from snntorch.import_nir import import_from_nir as snn_import

    gen = _gen(12)
    conv = nn.Conv2d(1, 2, 3)
    with torch.no_grad():
        conv.weight.uniform_(0, 0.5, generator=gen)
    net = nn.Sequential(conv, _zero(0.8), nn.Flatten(), _linear(18, 3, gen, 0.3), _zero(0.8))
    x = (torch.rand(1, T, 1, 5, 5, generator=gen) < 0.5).float()
    theirs = snn_import(export_to_nir(net, x[:, 0], dt=1e-4))
    snntorch.utils.reset(theirs)
    ref = _run_single(net, x)
    s, ys = None, []
    for t in range(T):
        y, s = theirs(x[:, t], s)
        ys.append(y)
    assert tuple(ys[0].shape) == (3,)  # no batch axis left
    assert _fires(ref) and torch.equal(torch.stack(ys)[None], ref)
    with pytest.raises(RuntimeError):
        _run_stateful(theirs, x.expand(2, -1, -1, -1, -1))


def test_snntorch_export_fails_type_inference_and_the_workaround():
    """(b) snnTorch 1.0.0's export_to_nir of a plain Linear-Leaky net fails NIR 1.0.8's type inference (the batch
    axis of the sample data, then the 0-d beta / threshold); with ignore_dims=[0] and per-neuron tensors it works, and
    spikegpt's import (dt=1e-4) gives snnTorch's spikes. Leaky: either reset_delay; Synaptic and RLeaky: only
    reset_delay=False (their delayed zero reset also drops the next step's input, which NIR's CubaLIF does not)."""
    import snntorch
    import snntorch.utils
    from snntorch.export_nir import export_to_nir as snn_export

    plain = nn.Sequential(nn.Linear(4, 3), snntorch.Leaky(beta=0.9, init_hidden=True))
    with pytest.raises(ValueError, match="type mismatch"):
        snn_export(plain, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="type mismatch"):
        snn_export(plain, torch.zeros(1, 4), ignore_dims=[0])

    gen = _gen(13)
    x = torch.rand(3, T, 4, generator=gen)
    N = 5

    def per(v):
        return torch.full((N,), v)

    for neuron, same in [
        (snntorch.Leaky(beta=per(0.9), threshold=per(1.0), reset_mechanism="zero", init_hidden=True), True),
        (snntorch.Leaky(beta=per(0.8), threshold=per(0.7), reset_mechanism="zero", reset_delay=False,
                        init_hidden=True), True),
        (snntorch.Synaptic(alpha=per(0.6), beta=per(0.8), threshold=per(1.0), reset_mechanism="zero",
                           reset_delay=False, init_hidden=True), True),
        (snntorch.RLeaky(beta=per(0.85), threshold=per(1.0), linear_features=N, reset_mechanism="zero",
                         reset_delay=False, init_hidden=True), True),
        (snntorch.Synaptic(alpha=per(0.6), beta=per(0.8), threshold=per(1.0), reset_mechanism="zero",
                           init_hidden=True), False),
    ]:
        net = nn.Sequential(_linear(4, N, gen, 1.5), neuron)
        g = snn_export(net, torch.zeros(1, 4), ignore_dims=[0])
        snntorch.utils.reset(net)
        ref = torch.stack([net(x[:, t]) for t in range(T)], 1)
        y, _ = import_from_nir(g, dt=1e-4)(x)
        assert _fires(ref)
        assert torch.equal(y, ref) == same, type(neuron).__name__


# ---------------------------------------------------------------------------------------- against Norse (1.1.0)


def test_spikegpt_to_norse_same_spikes():
    """(a) spikegpt export -> norse.torch.from_nir -> Norse's simulation. Norse's LIF ignores NIR's r (it warns),
    so a Leaky (r = 1 / (1 - beta)) cannot go there; SpikeGPT's LIF and Lapicque(R=1) (r = 1), Synaptic (CubaLIF:
    Norse honours r and w_in there) and IF (beta = 1, dt = 1) can. Norse's from_nir has no AvgPool2d: sum pools."""
    import norse.torch as norse

    gen = _gen(14)
    x = torch.rand(3, T, 5, generator=gen)
    for neuron in (snn.LIF(tau=2.5, init_hidden=True, step_mode="single"), _syn(),
                   snn.Lapicque(R=1.0, beta=0.8, threshold=0.4, reset_mechanism="zero", init_hidden=True),
                   _zero(beta=1.0, threshold=2.0)):
        net = nn.Sequential(_linear(5, 4, gen, 1.5), neuron)
        ref = _run_single(net, x)
        ys = _run_stateful(norse.from_nir(export_to_nir(net, x[:, 0], dt=1.0), dt=1.0), x)
        assert _fires(ref) and torch.equal(ys, ref), type(neuron).__name__
    net = nn.Sequential(_linear(5, 4, gen, 1.5), _zero(0.9))
    ys = _run_stateful(norse.from_nir(export_to_nir(net, x[:, 0], dt=1.0), dt=1.0), x)
    assert not torch.equal(ys, _run_single(net, x))  # the documented limitation

    conv = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.uniform_(0, 0.5, generator=gen)
    conv2 = nn.Conv2d(3, 2, 3)
    with torch.no_grad():
        conv.weight.uniform_(0, 0.2, generator=gen)
        conv2.weight.uniform_(0, 0.03, generator=gen)
    net = nn.Sequential(conv, _syn(), nn.AvgPool2d(2, divisor_override=1), conv2, _syn())
    x = (torch.rand(2, T, 2, 8, 8, generator=gen) < 0.5).float()
    ref = _run_single(net, x)
    ys = _run_stateful(norse.from_nir(export_to_nir(net, x[:, 0], dt=1.0), dt=1.0), x)
    assert _fires(ref) and _fires(_run_single(net[:2], x)) and torch.equal(ys, ref)


def test_norse_to_spikegpt_same_spikes_and_membranes():
    """(b) norse.torch.to_nir -> spikegpt import -> the spikes of Norse's own simulation of its network (LIFBoxCell:
    NIR LIF with r = 1; IAFCell: IF), and Norse's membranes. Norse 1.1.0 writes tau = dt / tau_mem_inv (dt * tau,
    not tau), so graphs it writes at dt = 1 mean what they say, and one written at dt must be read with dt**2."""
    import norse.torch as norse

    gen = _gen(15)
    x = torch.rand(3, T, 5, generator=gen)
    N = 4
    box = norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=torch.linspace(0.05, 0.5, N), v_th=torch.ones(N),
                                                  v_leak=torch.zeros(N)), dt=1.0)
    seq = norse.SequentialState(_linear(5, N, gen, 3.0), box, _linear(N, 3, gen, 2.0),
                                norse.IAFCell(norse.IAFParameters(v_th=torch.full((3,), 1.5))))
    g = norse.to_nir(seq, torch.zeros(1, 5), dt=1.0)
    assert isinstance(g.nodes["1"], nir.LIF) and isinstance(g.nodes["3"], nir.IF)
    ours = import_from_nir(g, dt=1.0)
    s, state, ys = None, None, []
    hidden = []
    for t in range(T):
        y, s = seq(x[:, t], s)
        ys.append(y)
        _, state = ours.step(x[:, t], state)
        hidden.append(state)
        assert torch.allclose(s[1].v, state.neurons["1"].mem, atol=1e-5)
        assert torch.allclose(s[3].v, state.neurons["3"].mem, atol=1e-5)
    ref = torch.stack(ys, 1)
    y, _ = ours(x)
    assert _fires(ref) and torch.equal(y, ref)

    seq = norse.SequentialState(_linear(5, N, gen, 8.0),
                                norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=torch.full((N,), 100.0),
                                                                        v_th=torch.ones(N), v_leak=torch.zeros(N)),
                                                 dt=1e-3))
    g = norse.to_nir(seq, torch.zeros(1, 5), dt=1e-3)
    np.testing.assert_allclose(g.nodes["1"].tau, 1e-5, rtol=1e-5)  # dt / tau_mem_inv, not 1 / tau_mem_inv
    ref = _run_stateful(seq, x)
    y, _ = import_from_nir(g, dt=1e-6)(x)
    assert _fires(ref) and torch.equal(y, ref)


def test_state_types():
    g = export_to_nir(nn.Sequential(nn.Linear(2, 2), _zero()), torch.zeros(1, 2))
    _, state = import_from_nir(g).step(torch.zeros(1, 2))
    assert isinstance(state.neurons["1"], LeakyState) and state.previous == {}


def test_nested_subgraphs_are_inlined():
    """A subgraph node (Input -> Affine -> LIF -> Output inside) behaves as its inlined nodes; float64 on request."""
    gen = _gen(16)
    net = nn.Sequential(_linear(3, 4, gen, 1.5), _zero(0.8), _linear(4, 2, gen), _zero(0.7))
    x = torch.rand(2, T, 3, generator=gen)
    flat = export_to_nir(net, x[:, 0])
    inner = nir.NIRGraph(nodes={"in": nir.Input(np.array([4])), "fc": flat.nodes["2"], "lif": flat.nodes["3"],
                                "out": nir.Output(np.array([2]))},
                         edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")])
    nested = nir.NIRGraph(nodes={"input": flat.nodes["input"], "0": flat.nodes["0"], "1": flat.nodes["1"],
                                 "block": inner, "output": flat.nodes["output"]},
                          edges=[("input", "0"), ("0", "1"), ("1", "block"), ("block", "output")])
    m = import_from_nir(nested, dtype=torch.float64)
    assert m.nodes["block_fc"].weight.dtype == torch.float64
    outs, _ = m.trace(x.double())
    assert set(outs) >= {"block.fc", "block.lif"}
    ref = _run_single(net, x)
    assert _fires(ref) and torch.equal(outs["output"].float(), ref)


def test_norse_cubalif_graph_reads_the_same_in_spikegpt_and_norse():
    """Norse's LIFCell exports as a CubaLIF (r = 1, w_in = 1); spikegpt's import equals Norse's own from_nir of that
    graph spike for spike. (Norse's LIFCell itself integrates differently, current jump after the voltage update,
    so it does not match its own export; see docs/neuromorphic.md.)"""
    import norse.torch as norse

    gen = _gen(17)
    N = 4
    x = torch.rand(2, T, 5, generator=gen)
    p = norse.LIFParameters(tau_mem_inv=torch.full((N,), 0.2), tau_syn_inv=torch.full((N,), 0.5), v_th=torch.ones(N),
                            v_leak=torch.zeros(N), v_reset=torch.zeros(N))
    seq = norse.SequentialState(_linear(5, N, gen, 3.0), norse.LIFCell(p, dt=1.0))
    g = norse.to_nir(seq, torch.zeros(1, 5), dt=1.0)
    assert isinstance(g.nodes["1"], nir.CubaLIF)
    ref = _run_stateful(norse.from_nir(g, dt=1.0), x)
    y, _ = import_from_nir(g, dt=1.0)(x)
    assert _fires(ref) and torch.equal(y, ref)
    assert not torch.equal(_run_stateful(seq, x), ref)
