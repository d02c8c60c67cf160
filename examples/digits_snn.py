"""A small spiking classifier on scikit-learn's bundled 8x8 digits (no download), trained two ways.

1. BPTT (autograd through time), snnTorch-tutorial style: rate-coded pixels -> Linear -> Leaky ->
   Linear -> Leaky, cross-entropy on the output spikes at every step (``ce_rate_loss``).
2. Online learning with eligibility traces (e-prop): a recurrent LIF layer with a leaky readout
   (``RSNN``); gradients are computed forward in time by ``EProp`` (memory independent of T).

Both report accuracy on a held-out quarter of the data. Needs scikit-learn.

    python examples/digits_snn.py [--epochs 20] [--steps 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn import functional as SF
from spikegpt.snn import spikegen
from spikegpt.snn.datasets import digits


def load(seed: int):
    """The digits split every example uses (:func:`spikegpt.snn.datasets.digits`)."""
    return digits(seed)


class FeedForwardSNN(nn.Module):
    def __init__(self, n_in=64, n_hidden=128, n_out=10, beta=0.9):
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.lif1 = snn.Leaky(beta=beta, spike_grad=snn.surrogate.fast_sigmoid(slope=25), step_mode="multi")
        self.fc2 = nn.Linear(n_hidden, n_out)
        self.lif2 = snn.Leaky(beta=beta, spike_grad=snn.surrogate.fast_sigmoid(slope=25), step_mode="multi")

    def forward(self, x):  # x: (B, T, 64) spikes
        spk1, _ = self.lif1(self.fc1(x))
        spk2, _ = self.lif2(self.fc2(spk1))
        return spk2  # (B, T, 10)


def batches(n, bs, gen):
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + bs] for i in range(0, n, bs)]


def train_bptt(Xtr, ytr, Xte, yte, args, gen):
    torch.manual_seed(args.seed)
    net = FeedForwardSNN()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(args.epochs):
        for idx in batches(len(Xtr), args.batch, gen):
            spk = net(spikegen.rate(Xtr[idx], args.steps, generator=gen))
            loss = SF.ce_rate_loss(spk, ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return SF.accuracy_rate(net(spikegen.rate(Xte, args.steps, generator=gen)), yte), loss.item()


def train_eprop(Xtr, ytr, Xte, yte, args, gen):
    torch.manual_seed(args.seed)
    net = snn.RSNN(64, 128, 10, beta=0.9, kappa=0.8, spike_grad=snn.surrogate.fast_sigmoid(slope=5))
    with torch.no_grad():
        net.w_in.mul_(2.0)
    learner = snn.EProp(net, loss="ce")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(args.epochs):
        for idx in batches(len(Xtr), args.batch, gen):
            opt.zero_grad()
            loss, _ = learner.accumulate(spikegen.rate(Xtr[idx], args.steps, generator=gen), ytr[idx])
            opt.step()
    with torch.no_grad():
        y, _ = net(spikegen.rate(Xte, args.steps, generator=gen))
        return (y.mean(1).argmax(1) == yte).float().mean().item(), loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20, help="time steps per sample (rate code)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (small ops: 1 is fastest)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    Xtr, Xte, ytr, yte = load(args.seed)
    print(f"digits: {len(Xtr)} train / {len(Xte)} test, T={args.steps} rate-coded steps, {args.epochs} epochs")
    for name, fn in (("BPTT (Leaky, ce_rate_loss)", train_bptt), ("e-prop (RSNN, online)", train_eprop)):
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        acc, loss = fn(Xtr, ytr, Xte, yte, args, gen)
        print(f"{name:28s} test accuracy {acc:.3f}   last train loss {loss:.3f}   {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
