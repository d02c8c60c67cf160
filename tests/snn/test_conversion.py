"""ANN-to-SNN conversion: the per-step error bound of the module docstring (rates within D_l / T of the ANN,
so the error shrinks as O(1/T)), a hand-computed IF case (floor(c t) spikes), the max / percentile scales
against activations computed here (torch.quantile, numpy.percentile), BatchNorm folding against the unfolded
ANN, exact max pooling of counts, and clear errors."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from spikegpt.recording import record_spikes
from spikegpt.snn.conversion import CumulativeMaxPool, activation_scale, convert_to_snn, fold_batchnorm

DT = torch.float64


def _acts(ann: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """Output of every child of ann, computed module by module here."""
    out, h = [], x
    with torch.no_grad():
        for m in ann:
            h = m(h)
            out.append(h)
    return out


def _inf_norm(w: torch.Tensor) -> float:
    """Largest absolute row sum of a Linear weight (out, in) or a Conv2d kernel (out, in, kh, kw)."""
    return float(w.abs().flatten(1).sum(1).max())


def _mlp(final_relu: bool) -> nn.Sequential:
    torch.manual_seed(1)
    layers = [nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)]
    if final_relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(DT).eval()


def _cnn() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 3),
    ).to(DT).eval()


def _cnn_pool_before_relu() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 3),
    ).to(DT).eval()


def _bounds(ann: nn.Sequential, x: torch.Tensor):
    """Scales, and the deviation bounds D_l of each ReLU layer plus the readout's, computed from the ANN:
    lambda_l = max activation at ReLU l, W'_l = W_l lambda_{l-1} / lambda_l, D_l = 1 + ||W'_l|| D_{l-1}."""
    acts = _acts(ann, x)
    lam_in, d, lams, ds = 1.0, 0.0, [], []
    weights = [m for m in ann if isinstance(m, (nn.Linear, nn.Conv2d))]
    relus = [i for i, m in enumerate(ann) if isinstance(m, nn.ReLU)]
    for k, w in enumerate(weights):
        last = k == len(weights) - 1
        lam_out = float(acts[relus[k]].max()) if k < len(relus) else float(acts[-1].max())
        wn = _inf_norm(w.weight.detach()) * lam_in / lam_out
        readout_dev = wn * d  # deviation of the accumulated input current of this layer
        d = 1 + readout_dev
        lams.append(lam_out)
        ds.append(d)
        lam_in = lam_out
        if last:
            return lams, ds, readout_dev, acts


@pytest.mark.parametrize("make", [lambda: _mlp(True), lambda: _mlp(False), _cnn, _cnn_pool_before_relu],
                         ids=["mlp_relu", "mlp", "cnn", "cnn_maxpool_before_relu"])
def test_counts_and_readout_stay_within_the_derived_bound_at_every_step(make):
    ann = make()
    torch.manual_seed(3)
    x = torch.rand(40, 5, dtype=DT) if isinstance(ann[0], nn.Linear) else torch.rand(40, 1, 8, 8, dtype=DT)
    snn = convert_to_snn(ann, x)  # calibration set = evaluation set: max norm leaves nothing clipped
    lams, ds, readout_dev, acts = _bounds(ann, x)
    final_relu = isinstance(ann[-1], nn.ReLU)
    T = 600
    out = snn(x, num_steps=T)
    t = torch.arange(1, T + 1, dtype=DT).view(1, T, *([1] * (out.spikes.dim() - 2)))
    lam = lams[-1]
    assert snn.output_scale == pytest.approx(lam, rel=1e-12)
    target = acts[-1] / lam  # the normalised ANN output (pre-ReLU output for final_relu: acts[-2])
    pre = (acts[-2] if final_relu else acts[-1]) / lam
    n = out.spikes.cumsum(1)
    # counts: |n(t) - t clip(a / lambda, 0, 1)| <= D_L at every step (binary spikes, at most one per step)
    assert set(out.spikes.unique().tolist()) <= {0.0, 1.0}
    assert (n - t * target.clamp(0, 1).unsqueeze(1)).abs().max() <= ds[-1] + 1e-9
    # readout: the accumulated current deviates from t * (normalised last pre-activation) by <= ||W'_L|| D_{L-1}
    assert (out.current.cumsum(1) - t * pre.unsqueeze(1)).abs().max() <= readout_dev + 1e-9
    # so the error in ANN units falls as 1/T: strictly decreasing over T and below the bound at each T
    errs = []
    for steps in (8, 32, 128, 512):
        est = (out.spikes[:, :steps].mean(1) if final_relu else out.current[:, :steps].mean(1)) * lam
        err = (est - acts[-1]).abs()
        bound = (ds[-1] if final_relu else readout_dev) * lam / steps
        assert err.max() <= bound + 1e-9
        errs.append(float(err.mean()))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < errs[0] / 16


def test_if_neuron_gives_floor_ct_spikes_hand_computed():
    # two IF neurons, identity weights; max norm on [[2, 0.5]] gives lambda = 2, so inputs 0.75, 1.5 become
    # constant currents c = 0.375, 0.75 per step (exact in binary): spikes by step t = floor(c t)
    ann = nn.Sequential(nn.Linear(2, 2), nn.ReLU()).to(DT)
    with torch.no_grad():
        ann[0].weight.copy_(torch.eye(2))
        ann[0].bias.zero_()
    snn = convert_to_snn(ann, torch.tensor([[2.0, 0.5]], dtype=DT))
    assert snn.scales == [2.0] and snn.output_scale == 2.0
    T = 24
    out = snn(torch.tensor([[0.75, 1.5], [-1.0, 4.0]], dtype=DT), num_steps=T)
    steps = np.arange(1, T + 1)
    want = np.stack([np.floor(0.375 * steps), np.floor(0.75 * steps)], 1)
    np.testing.assert_array_equal(out.spikes[0].cumsum(0).numpy(), want)
    # a negative input never fires; an input above lambda saturates at one spike per step
    np.testing.assert_array_equal(out.spikes[1].sum(0).numpy(), [0, T])
    # the first spikes: c = 0.75 fires at steps 2, 3, 4 (U = 0.75, 1.5, 1.25, 1.0 ...), c = 0.375 at step 3
    assert out.spikes[0, :4, 1].tolist() == [0, 1, 1, 1]
    assert out.spikes[0, :4, 0].tolist() == [0, 0, 1, 0]


def test_first_layer_counts_are_exactly_floor_of_t_times_normalised_activation():
    ann = _mlp(False)
    x = torch.rand(30, 5, dtype=DT, generator=torch.Generator().manual_seed(11))
    x[20:] *= 2  # calibrate on the first 20: the others drive some neurons above lambda (saturation)
    snn = convert_to_snn(ann, x[:20])
    z = (torch.relu(ann[0](x)) / torch.relu(ann[0](x[:20])).max()).detach()
    assert (z > 1).any()
    with record_spikes(snn, keep="outputs", sites=["layers.1"]) as rec:
        snn(x, 50)
    counts = torch.stack(rec.tensors["layers.1"], 1).cumsum(1)  # (B, T, 16)
    t = torch.arange(1, 51, dtype=DT).view(1, 50, 1)
    torch.testing.assert_close(counts, torch.minimum(torch.floor(t * z.unsqueeze(1)), t.expand_as(counts)),
                               rtol=0, atol=0)


def test_rate_coded_input_converges_statistically():
    ann = _mlp(False)
    x = torch.rand(64, 5, dtype=DT, generator=torch.Generator().manual_seed(0))
    snn = convert_to_snn(ann, x)
    y = ann(x).detach()
    gen = torch.Generator().manual_seed(1)
    out = snn(x, num_steps=2000, encoding="rate", generator=gen)
    err = [float((out.current[:, :T].mean(1) * snn.output_scale - y).abs().mean()) for T in (20, 2000)]
    assert err[1] < err[0] / 3  # sampling noise ~ 1/sqrt(T): a factor 10 expected
    # a ready spike train gives the same as encoding="rate" with the same draws
    spikes = torch.bernoulli(x.unsqueeze(1).expand(64, 50, 5), generator=torch.Generator().manual_seed(5))
    via_rate = snn(x, 50, encoding="rate", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(snn(spikes, encoding="spikes").current, via_rate.current)


def test_max_scales_and_normalised_weights_match_activations_computed_here():
    ann = _cnn()
    x = torch.rand(30, 1, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(4))
    acts = _acts(ann, x)
    snn = convert_to_snn(ann, x, norm="max")
    lam1, lam2, lam_out = float(acts[1].max()), float(acts[4].max()), float(acts[-1].max())
    assert snn.scales == pytest.approx([lam1, lam2], rel=1e-12)
    assert snn.output_scale == pytest.approx(lam_out, rel=1e-12)
    convs = [m for m in snn.layers if isinstance(m, (nn.Conv2d, nn.Linear))]
    torch.testing.assert_close(convs[0].weight, ann[0].weight / lam1)
    torch.testing.assert_close(convs[1].weight, ann[3].weight * lam1 / lam2)
    torch.testing.assert_close(convs[1].bias, ann[3].bias / lam2)
    torch.testing.assert_close(convs[2].weight, ann[7].weight * lam2 / lam_out)
    # an iterable of (x, y) batches gives the same scales as one tensor
    chunks = [(x[i:i + 7], None) for i in range(0, 30, 7)]
    assert convert_to_snn(ann, chunks).scales == snn.scales
    assert isinstance(snn.layers[2], CumulativeMaxPool)


@pytest.mark.parametrize("p", [99.9, 90.0, 50.0])
def test_percentile_scales_match_torch_quantile_and_numpy(p):
    ann = _mlp(False)
    x = torch.randn(200, 5, dtype=DT, generator=torch.Generator().manual_seed(6))
    acts = _acts(ann, x)
    snn = convert_to_snn(ann, x, norm="percentile", percentile=p)
    for got, a in zip([*snn.scales, snn.output_scale], [acts[1], acts[4], acts[-1]]):
        pos = a[a > 0]
        assert got == pytest.approx(float(torch.quantile(pos, p / 100)), rel=1e-12)
        assert got == pytest.approx(float(np.percentile(pos.numpy(), p)), rel=1e-12)
    # percentile 100 is the max norm
    assert convert_to_snn(ann, x, norm="percentile", percentile=100).scales == convert_to_snn(ann, x).scales
    assert activation_scale(torch.tensor([-1.0, 0.0]), "max") == 0.0


def test_percentile_norm_clips_the_top_activations_but_still_converges():
    ann = _mlp(True)
    x = torch.randn(100, 5, dtype=DT, generator=torch.Generator().manual_seed(7))
    snn = convert_to_snn(ann, x, norm="percentile", percentile=90.0)
    lam = snn.output_scale
    out = snn(x, 400)
    # the output converges to the ANN clipped at lambda (the rest of the bound argument is unchanged)
    err = (out.rates * lam - ann(x).detach().clamp(max=lam)).abs().mean()
    assert float(err) < 0.05 * lam


def _bn_nets():
    torch.manual_seed(8)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3),
                        nn.BatchNorm1d(3, affine=False))
    cnn = nn.Sequential(nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4)), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    for net in (mlp, cnn):
        net.to(DT)
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 3)
                if m.affine:
                    m.weight.data.uniform_(0.5, 2)
                    m.bias.data.uniform_(-1, 1)
    return [(mlp, torch.randn(20, 5, dtype=DT)), (cnn, torch.randn(20, 2, 6, 6, dtype=DT))]


@pytest.mark.parametrize("i", [0, 1], ids=["linear_bn1d", "conv_bn2d"])
def test_batchnorm_folding_equals_the_unfolded_ann(i):
    ann, x = _bn_nets()[i]
    before = {k: v.clone() for k, v in ann.state_dict().items()}
    assert ann.training
    folded = fold_batchnorm(ann)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules())
    ann.eval()
    torch.testing.assert_close(folded(x), ann(x))
    for k, v in ann.state_dict().items():  # the original is untouched
        torch.testing.assert_close(v, before[k])
    # and the converted BN network converges to the BN network's eval output
    snn = convert_to_snn(ann, x)
    est = snn(x, 1000).readout * snn.output_scale
    assert float((est - ann(x).detach()).abs().max()) < 0.05 * snn.output_scale


def test_cumulative_max_pool_counts_are_the_max_of_input_counts():
    gen = torch.Generator().manual_seed(9)
    spikes = torch.bernoulli(torch.rand(3, 1, 2, 4, 4, generator=gen).expand(3, 30, 2, 4, 4), generator=gen)
    out = CumulativeMaxPool(nn.MaxPool2d(2))(spikes)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    counts = spikes.cumsum(1)
    for t in range(30):  # the window max of the counts, written out
        want = counts[:, t].unfold(2, 2, 2).unfold(3, 2, 2).amax((-1, -2))
        torch.testing.assert_close(out[:, : t + 1].sum(1), want)


def test_redundant_relu_dropped_spike_recording_and_dead_layer(caplog):
    ann = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.2), nn.ReLU(), nn.Linear(4, 2), nn.ReLU()).to(DT)
    x = torch.rand(10, 3, dtype=DT)
    snn = convert_to_snn(ann, x)
    assert len(snn.scales) == 2 and snn.output_neuron is None  # relu(relu(.)) is one IF layer
    with record_spikes(snn) as rec:
        out = snn(x, 20)
    rates = rec.rates()
    assert len(rates) == 2 and rates["layers.3"] == pytest.approx(float(out.spikes.mean()))
    dead = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(DT)
    with torch.no_grad():
        dead[0].bias.fill_(-100.0)
    with caplog.at_level(logging.WARNING, logger="spikegpt.snn.conversion"):
        snn = convert_to_snn(dead, x)
    assert snn.scales == [1.0] and "no positive activation" in caplog.text
    with record_spikes(snn) as rec:
        snn(x, 10)
    assert rec.counts["layers.1"] == 0


class _Custom(nn.Module):
    def forward(self, x):
        return x


def test_bad_inputs_and_unsupported_layers_error_clearly():
    x = torch.rand(4, 3)
    lin = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    bad = [
        (nn.Sequential(nn.Linear(3, 2), nn.Sigmoid()), x, {}, r"1 \(Sigmoid\)"),
        (nn.Sequential(nn.Sequential(nn.Linear(3, 2), nn.LeakyReLU())), x, {}, r"0\.1 \(LeakyReLU\)"),
        (nn.Sequential(nn.Linear(3, 2), _Custom()), x, {}, r"_Custom"),
        (nn.Linear(3, 2), x, {}, "nn.Sequential"),
        (nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.BatchNorm1d(2)), x, {}, "directly after a Linear"),
        (nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, track_running_stats=False)), x, {}, "running stat"),
        (nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(5)), x, {}, r"BatchNorm1d\(5\)"),
        (nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), x, {}, "no Linear / Conv2d before"),
        (nn.Sequential(nn.Flatten(), nn.ReLU()), x, {}, "no Linear / Conv2d"),
        (nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(2, return_indices=True)), x, {}, "return_indices"),
        (nn.Sequential(nn.Flatten(0), nn.Linear(12, 2)), x, {}, "batch dim"),
        (lin, x, {"norm": "l2"}, "norm must be"),
        (lin, x, {"norm": "percentile", "percentile": 0}, r"percentile must be a number in \(0, 100\]"),
        (lin, x, {"norm": "percentile", "percentile": 100.5}, "percentile"),
        (lin, [], {}, "empty"),
        (lin, torch.ones(4, 3, dtype=torch.int64), {}, "floating-point"),
        (lin, torch.rand(3), {}, r"\(N, \*in\)"),
        (lin, [torch.rand(2, 3), torch.rand(2, 4)], {}, "disagree"),
        (lin, torch.rand(4, 5), {}, r"fails at 0 \(Linear\)"),
        (lin, x.double(), {}, "dtype"),
        (lin, "data", {}, "tensor"),
    ]
    for ann, data, kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            convert_to_snn(ann, data, **kw)
    snn = convert_to_snn(lin, x)
    for args, kw, msg in [
        ((x, 0), {}, "num_steps must be a positive int"),
        ((x, 2.5), {}, "num_steps"),
        ((x, None), {}, "num_steps"),
        ((torch.rand(4, 5), 3), {}, r"input_shape=\(3,\)"),
        ((x, 3), {"encoding": "poisson"}, "encoding must be"),
        ((x * 2, 3), {"encoding": "rate"}, r"in \[0, 1\]"),
        ((x.double(), 3), {}, "dtype"),
        ((torch.ones(4, 3, dtype=torch.int64), 3), {}, "floating-point"),
        ((torch.rand(4, 5, 3), 4), {"encoding": "spikes"}, "T=5"),
        ((x, 3), {"encoding": "spikes"}, r"\(B, T, \*input_shape\)"),
    ]:
        with pytest.raises(ValueError, match=msg):
            snn(*args, **kw)
