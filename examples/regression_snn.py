"""Membrane-potential regression (snnTorch's regression tutorials): a spiking network tracks a continuous signal.

Each sample is a sum of two sines with random amplitudes, frequencies and phases, ``u(t)``, fed as an input
current; the target is its rectified envelope ``y(t) = |u(t)|``, a nonlinear function of the input that the
network must produce at every step. The network: Linear(1, H) -> ``Leaky`` (spiking, reset by subtraction)
-> Linear(H, 1) -> ``Leaky(beta, reset_mechanism="none", learn_beta=True)``, a non-spiking leaky integrator
whose membrane is the prediction. The hidden neurons leak fast (beta 0.5: a memory of a few steps, short
against the signal's periods of 40-160 steps), so their rates follow the input. Trained by BPTT on
``mse_regression_loss`` (squared error at every step after a short burn-in), it prints the test MSE against
the trivial baseline that predicts the training mean.

    python examples/regression_snn.py [--iters 160] [--steps 80] [--hidden 128] [--seed 0]

``train_regression(args, gen) -> dict`` is the whole experiment (``args`` may be ``parse_args([])``).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn import functional as SF

DEFAULTS = dict(iters=160, steps=80, hidden=128, batch=64, lr=1e-2, burn_in=5, n_test=256, seed=0, threads=1)


def make_signals(n: int, steps: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples of u(t) = sum_k a_k sin(w_k t + p_k), k = 1, 2: inputs (n, steps, 1) and targets |u| (n, steps, 1)."""
    t = torch.arange(steps, dtype=torch.float32).view(1, steps, 1)
    a = 0.3 + 0.7 * torch.rand(n, 1, 2, generator=gen)
    w = 0.04 + 0.12 * torch.rand(n, 1, 2, generator=gen)
    p = 2 * math.pi * torch.rand(n, 1, 2, generator=gen)
    u = (a * torch.sin(w * t + p)).sum(-1, keepdim=True)
    return u, u.abs()


class RegressionSNN(nn.Module):
    """x (B, T, 1) current -> membrane of the leaky readout (B, T, 1), and the hidden spikes (B, T, H)."""

    def __init__(self, hidden: int = 128, beta: float = 0.5, beta_out: float = 0.8):
        super().__init__()
        grad = snn.surrogate.fast_sigmoid(slope=10)
        self.fc1 = nn.Linear(1, hidden)
        self.lif = snn.Leaky(beta=beta, spike_grad=grad, step_mode="multi")
        self.fc2 = nn.Linear(hidden, 1)
        self.readout = snn.Leaky(beta=beta_out, reset_mechanism="none", learn_beta=True, step_mode="multi")
        with torch.no_grad():
            self.fc1.weight.mul_(3.0)  # drive the hidden layer into firing from the start

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spk, _ = self.lif(self.fc1(x))
        _, mem = self.readout(self.fc2(spk))
        return mem, spk


def train_regression(args, gen: torch.Generator) -> dict:
    """Train on fresh signals each iteration; returns ``{"mse", "baseline_mse", "train_loss", "rate",
    "beta_out", "seconds"}`` on ``args.n_test`` held-out signals (steps after ``burn_in``)."""
    args = argparse.Namespace(**{**DEFAULTS, **vars(args)})
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    net = RegressionSNN(args.hidden)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    seen = []
    for _ in range(args.iters):
        x, y = make_signals(args.batch, args.steps, gen)
        seen.append(y[:, args.burn_in:].mean())
        mem, _ = net(x)
        loss = SF.mse_regression_loss(mem, y, burn_in=args.burn_in)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = make_signals(args.n_test, args.steps, gen)
    with torch.no_grad():
        mem, spk = net(x)
        mse = SF.mse_regression_loss(mem, y, burn_in=args.burn_in).item()
        mean = torch.stack(seen).mean()  # the baseline predicts the training targets' mean at every step
        baseline = SF.mse_regression_loss(torch.full_like(y, mean.item()), y, burn_in=args.burn_in).item()
    return {"mse": mse, "baseline_mse": baseline, "train_loss": loss.item(), "rate": spk.mean().item(),
            "beta_out": float(net.readout.beta.detach().clamp(0, 1)), "seconds": time.perf_counter() - t0}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, v in DEFAULTS.items():
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(v), default=v)
    return ap.parse_args(argv)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    r = train_regression(args, torch.Generator().manual_seed(args.seed))
    print(f"target |u(t)| of a random two-sine signal, T={args.steps}, {args.iters} iterations x {args.batch} signals")
    print(f"test MSE (membrane readout)   {r['mse']:.4f}")
    print(f"baseline MSE (predict mean)   {r['baseline_mse']:.4f}   ratio {r['mse'] / r['baseline_mse']:.3f}")
    print(f"hidden firing rate {r['rate']:.3f}, learned readout beta {r['beta_out']:.3f}, {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
