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
