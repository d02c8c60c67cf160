"""Three online / local learning rules for spiking networks on scikit-learn's bundled 8x8 digits (no download).

1. DECOLLE (Kaiser et al. 2020): two spiking layers (Linear -> Synaptic LIF), each with a fixed random
   readout and its own local loss at every step; no gradient crosses a layer (``spikegpt.snn.decolle``).
2. OSTL (Bohnstingl et al. 2022): two LIF layers and a linear readout; eligibility traces forward in time,
   the error backpropagated through the layers at the current step only (``spikegpt.snn.ostl``).
3. OSTTP (Ortner et al. 2023): OSTL's traces, but the hidden layers learn from a fixed random projection of
   the target (DRTP): no backward pass through the layers, no weight transport.

Pixels are rate-coded (``spikegen.rate``) as in ``examples/digits_snn.py``; every method reports accuracy on
a held-out quarter of the data and its training time. Needs scikit-learn.

    python examples/online_learning.py [--epochs 15] [--steps 20] [--batch 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn import spikegen
from spikegpt.snn.datasets import digits
from spikegpt.snn.decolle import DECOLLE
from spikegpt.snn.ostl import OSTL, OSTTP, LIFStack


def load(seed: int):
    """The digits split every example uses (:func:`spikegpt.snn.datasets.digits`)."""
    return digits(seed)


def batches(n, bs, gen):
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + bs] for i in range(0, n, bs)]


def train_decolle(Xtr, ytr, Xte, yte, args, gen):
    torch.manual_seed(args.seed)
    net = DECOLLE([nn.Linear(64, 128), nn.Linear(128, 128)], 10, alpha=0.5, beta=0.8, loss="ce",
                  readout_scale=4.0, spike_grad=snn.surrogate.fast_sigmoid(slope=5),
                  generator=torch.Generator().manual_seed(args.seed))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(args.epochs):
        for idx in batches(len(Xtr), args.batch, gen):
            opt.zero_grad()
            losses, _ = net.accumulate(spikegen.rate(Xtr[idx], args.steps, generator=gen), ytr[idx])
            opt.step()
    y, _ = net(spikegen.rate(Xte, args.steps, generator=gen))
    return (y.mean(1).argmax(1) == yte).float().mean().item(), losses[-1]


def _online(rule, lr, Xtr, ytr, Xte, yte, args, gen):
    torch.manual_seed(args.seed)
    net = LIFStack([64, 128, 128, 10], beta=0.9, spike_grad=snn.surrogate.fast_sigmoid(slope=5))
    with torch.no_grad():
        net.fcs[0].weight.mul_(2.0)
    learner = rule(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(args.epochs):
        for idx in batches(len(Xtr), args.batch, gen):
            opt.zero_grad()
            loss, _ = learner.accumulate(spikegen.rate(Xtr[idx], args.steps, generator=gen), ytr[idx])
            opt.step()
    with torch.no_grad():
        y, _ = net(spikegen.rate(Xte, args.steps, generator=gen))
    return (y.mean(1).argmax(1) == yte).float().mean().item(), loss


def train_ostl(Xtr, ytr, Xte, yte, args, gen):
    return _online(OSTL, 2e-3, Xtr, ytr, Xte, yte, args, gen)


def train_osttp(Xtr, ytr, Xte, yte, args, gen):
    # DRTP's hidden signal starts far from the gradient: a larger step gets the readout going sooner
    return _online(lambda net: OSTTP(net, generator=torch.Generator().manual_seed(args.seed)), 5e-3,
                   Xtr, ytr, Xte, yte, args, gen)


METHODS = (("DECOLLE (local losses)", train_decolle), ("OSTL (traces + spatial BP)", train_ostl),
           ("OSTTP (traces + DRTP)", train_osttp))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20, help="time steps per sample (rate code)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (small ops: 1 is fastest)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    Xtr, Xte, ytr, yte = load(args.seed)
    print(f"digits: {len(Xtr)} train / {len(Xte)} test, T={args.steps} rate-coded steps, {args.epochs} epochs")
    for name, fn in METHODS:
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        acc, loss = fn(Xtr, ytr, Xte, yte, args, gen)
        print(f"{name:27s} test accuracy {acc:.3f}   last train loss {loss:.3f}   {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
