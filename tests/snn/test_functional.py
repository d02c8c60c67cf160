"""Losses and metrics: against torch's cross-entropy / squared error written out per step, weight= and
reduction= semantics, and snnTorch's functional losses (batch-first vs its time-first layout)."""

import pytest
import torch
import torch.nn.functional as F

from spikegpt.snn import functional as SF

torch.manual_seed(0)
B, T, K = 5, 7, 4
SPK = (torch.rand(B, T, K) < 0.4).float()
MEM = torch.randn(B, T, K)
Y = torch.tensor([0, 3, 1, 1, 2])
W = torch.tensor([1.0, 2.0, 0.5, 3.0])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, W])
def test_ce_rate_and_count_follow_torch_cross_entropy(weight, reduction):
    # rate: cross-entropy at each step with torch's own weighting, averaged over the steps
    per_step = torch.stack([F.cross_entropy(SPK[:, t], Y, weight=weight, reduction=reduction) for t in range(T)])
    torch.testing.assert_close(SF.ce_rate_loss(SPK, Y, weight=weight, reduction=reduction), per_step.mean(0))
    ref = F.cross_entropy(SPK.sum(1), Y, weight=weight, reduction=reduction)
    torch.testing.assert_close(SF.ce_count_loss(SPK, Y, weight=weight, reduction=reduction), ref)


def test_mse_losses_closed_form():
    counts = SPK.sum(1)
    target = torch.full((B, K), 0.2 * T)
    target[torch.arange(B), Y] = 0.8 * T
    per = ((counts - target) ** 2).mean(1) / T
    out = SF.mse_count_loss(SPK, Y, correct_rate=0.8, incorrect_rate=0.2, reduction="none")
    torch.testing.assert_close(out, per)
    w = W[Y]
    torch.testing.assert_close(SF.mse_count_loss(SPK, Y, correct_rate=0.8, incorrect_rate=0.2, weight=W),
                               (w * per).sum() / w.sum())
    mt = torch.full((B, 1, K), -0.5)
    mt[torch.arange(B), 0, Y] = 2.0
    torch.testing.assert_close(SF.mse_membrane_loss(MEM, Y, on_target=2.0, off_target=-0.5, reduction="sum"),
                               ((MEM - mt) ** 2).mean((1, 2)).sum())


def test_accuracy_and_sparsity():
    spk = torch.zeros(3, 4, 3)
    spk[0, :, 1] = 1
    spk[1, :2, 2] = 1
    spk[2, :, 0] = 1
    assert SF.accuracy_rate(spk, torch.tensor([1, 2, 1])) == pytest.approx(2 / 3)
    assert SF.l1_rate_sparsity(spk, weight=0.1).item() == pytest.approx(0.1 * 10)
    assert SF.l1_rate_sparsity(spk, weight=0.1, reduction="mean").item() == pytest.approx(0.1 * 10 / 36)


def test_gradients_flow():
    spk = SPK.clone().requires_grad_(True)
    SF.ce_rate_loss(spk, Y).backward()
    assert spk.grad is not None and spk.grad.abs().sum() > 0


def test_bad_input():
    with pytest.raises(ValueError, match="reduction"):
        SF.ce_rate_loss(SPK, Y, reduction="max")
    with pytest.raises(ValueError, match=r"\(B, T, K\)"):
        SF.ce_count_loss(SPK[:, 0], Y)
    with pytest.raises(ValueError, match="weight"):
        SF.ce_count_loss(SPK, Y, weight=torch.ones(3))
    with pytest.raises(ValueError, match="integer"):
        SF.mse_count_loss(SPK, Y.float())


def test_matches_snntorch_unweighted():
    import snntorch.functional as snf

    tf = SPK.transpose(0, 1).contiguous()  # snnTorch is time-first
    torch.testing.assert_close(SF.ce_rate_loss(SPK, Y), snf.ce_rate_loss()(tf, Y).squeeze())
    torch.testing.assert_close(SF.ce_count_loss(SPK, Y), snf.ce_count_loss()(tf, Y))
    torch.testing.assert_close(SF.mse_count_loss(SPK, Y, correct_rate=1.0, incorrect_rate=0.0),
                               snf.mse_count_loss(correct_rate=1.0, incorrect_rate=0.0)(tf, Y))
    torch.testing.assert_close(SF.mse_membrane_loss(MEM, Y),
                               snf.mse_membrane_loss()(MEM.transpose(0, 1).contiguous(), Y).squeeze())
    assert SF.accuracy_rate(SPK, Y) == pytest.approx(float(snf.accuracy_rate(tf, Y)))
    torch.testing.assert_close(SF.l1_rate_sparsity(SPK, 1e-3), snf.l1_rate_sparsity(1e-3)(tf))


# --- population codes: C classes x P neurons per class, contiguous groups (snnTorch's layout) ---------------
C, P, TP = 4, 5, 10
SPK_POP = (torch.rand(B, TP, C * P, generator=torch.Generator().manual_seed(1)) < 0.3).float()


def _pooled_by_loop(spk):
    return torch.stack([spk[:, :, c * P:(c + 1) * P].sum(-1) for c in range(C)], -1)


def test_population_pool_sums_each_class_group():
    torch.testing.assert_close(SF.population_pool(SPK_POP, C), _pooled_by_loop(SPK_POP))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, W])
def test_population_code_losses_follow_their_formulas(weight, reduction):
    pooled = _pooled_by_loop(SPK_POP)  # (B, T, C)
    per_step = torch.stack([F.cross_entropy(pooled[:, t], Y, weight=weight, reduction=reduction) for t in range(TP)])
    got = SF.ce_rate_loss(SPK_POP, Y, weight=weight, reduction=reduction, population_code=True, num_classes=C)
    torch.testing.assert_close(got, per_step.mean(0))
    ref = F.cross_entropy(pooled.sum(1), Y, weight=weight, reduction=reduction)
    torch.testing.assert_close(SF.ce_count_loss(SPK_POP, Y, weight=weight, reduction=reduction,
                                                population_code=True, num_classes=C), ref)
    target = torch.full((B, C), 0.1 * TP * P)
    target[torch.arange(B), Y] = 0.7 * TP * P
    per = ((pooled.sum(1) - target) ** 2).mean(1) / TP
    out = SF.mse_count_loss(SPK_POP, Y, correct_rate=0.7, incorrect_rate=0.1, population_code=True,
                            num_classes=C, reduction="none")
    torch.testing.assert_close(out, per)


def test_population_code_with_one_neuron_per_class_is_the_plain_code():
    for fn in (SF.ce_rate_loss, SF.ce_count_loss, SF.mse_count_loss):
        torch.testing.assert_close(fn(SPK, Y, population_code=True, num_classes=K), fn(SPK, Y))
    assert SF.accuracy_rate(SPK, Y, population_code=True, num_classes=K) == SF.accuracy_rate(SPK, Y)


def test_population_code_matches_snntorch():
    import snntorch.functional as snf

    tf = SPK_POP.transpose(0, 1).contiguous()  # snnTorch is time-first
    kw = dict(population_code=True, num_classes=C)
    torch.testing.assert_close(SF.ce_count_loss(SPK_POP, Y, **kw), snf.ce_count_loss(**kw)(tf, Y))
    # snnTorch truncates the target counts T P rate to ints: 10 * 5 * 0.8 = 40 and 10 * 5 * 0.2 = 10 are whole
    torch.testing.assert_close(SF.mse_count_loss(SPK_POP, Y, correct_rate=0.8, incorrect_rate=0.2, **kw),
                               snf.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2, **kw)(tf, Y))
    for seed in range(5):
        spk = (torch.rand(B, TP, C * P, generator=torch.Generator().manual_seed(10 + seed)) < 0.3).float()
        assert SF.accuracy_rate(spk, Y, **kw) == pytest.approx(
            float(snf.accuracy_rate(spk.transpose(0, 1), Y, **kw)))


def test_population_code_errors():
    with pytest.raises(ValueError, match="K=20 is not divisible by num_classes=3"):
        SF.ce_count_loss(SPK_POP, Y, population_code=True, num_classes=3)
    with pytest.raises(ValueError, match="accuracy_rate: .*not divisible"):
        SF.accuracy_rate(SPK_POP, Y, population_code=True, num_classes=6)
    with pytest.raises(ValueError, match="needs num_classes"):
        SF.ce_rate_loss(SPK_POP, Y, population_code=True)
    with pytest.raises(ValueError, match="only used with population_code"):
        SF.mse_count_loss(SPK_POP, Y, num_classes=C)
    with pytest.raises(ValueError, match="positive int"):
        SF.population_pool(SPK_POP, 0)
    with pytest.raises(ValueError, match=r"weight must have shape \(K,\) = \(4,\)"):
        SF.ce_count_loss(SPK_POP, Y, population_code=True, num_classes=C, weight=torch.ones(20))


# --- regression: a non-spiking leaky readout and the squared error of its membrane over time ----------------
def test_mse_regression_loss_formula():
    mem = torch.randn(3, 8, 2, dtype=torch.float64)
    traj = torch.randn(3, 8, 2, dtype=torch.float64)
    const = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(SF.mse_regression_loss(mem, traj), torch.nn.MSELoss()(mem, traj))
    torch.testing.assert_close(SF.mse_regression_loss(mem, traj, burn_in=3),
                               torch.nn.MSELoss()(mem[:, 3:], traj[:, 3:]))
    per = torch.tensor([sum(float((mem[b, t, k] - const[b, k]) ** 2) for t in range(2, 8) for k in range(2)) / 12
                        for b in range(3)], dtype=torch.float64)
    torch.testing.assert_close(SF.mse_regression_loss(mem, const, burn_in=2, reduction="none"), per)
    torch.testing.assert_close(SF.mse_regression_loss(mem, const, burn_in=2, reduction="sum"), per.sum())
    for bad, kw, msg in [(torch.randn(3, 7, 2), {}, "target must be"), (traj, {"burn_in": 8}, "burn_in"),
                         (traj, {"reduction": "max"}, "reduction"), (traj, {"burn_in": -1}, "burn_in")]:
        with pytest.raises(ValueError, match=msg):
            SF.mse_regression_loss(mem, bad.to(mem.dtype), **kw)
    with pytest.raises(ValueError, match="floating"):
        SF.mse_regression_loss(torch.ones(3, 8, dtype=torch.int64), traj)


def test_non_resetting_leaky_readout_is_a_leaky_integrator():
    from spikegpt.snn.neurons import Leaky

    x = torch.randn(2, 12, 3, dtype=torch.float64, requires_grad=True)
    readout = Leaky(beta=0.8, threshold=0.1, reset_mechanism="none", step_mode="multi").double()
    _, mem = readout(x)
    u, ref = torch.zeros(2, 3, dtype=torch.float64), []
    for t in range(12):  # U[t] = beta U[t-1] + I[t], whatever it "spikes"
        u = 0.8 * u + x[:, t]
        ref.append(u)
    torch.testing.assert_close(mem, torch.stack(ref, 1))
    loss = SF.mse_regression_loss(mem, torch.zeros(2, 12, 3, dtype=torch.float64))
    (g,) = torch.autograd.grad(loss, x)
    (g_ref,) = torch.autograd.grad((torch.stack(ref, 1) ** 2).mean(), x)
    torch.testing.assert_close(g, g_ref)
