"""A spiking classifier on synthetic event-camera recordings (Tonic's format, generated locally), trained by BPTT.

``SyntheticEvents`` (a bar sweeping right, a bar sweeping down, a line rotating clockwise and one rotating
anticlockwise, which differ in the direction of motion; 16x16 sensor, ON / OFF polarities, noise events) ->
Tonic's ``Denoise`` and ``ToFrame`` (``spikegpt.snn.events``) -> frames (B, T, 2, 16, 16) -> Linear -> Leaky
-> Linear -> Leaky (``--model conv``: a strided Conv2d and Leaky first), cross-entropy on the output spikes at
every step (``ce_rate_loss``); accuracy on a held-out quarter of each class. Nothing is downloaded.

    python examples/tonic_events.py [--epochs 10] [--per-class 40] [--steps 25] [--model linear|conv] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn import functional as SF
from spikegpt.snn.events import SyntheticEvents, collate_frames, frame_transform

SENSOR = (16, 16, 2)
DURATION = 100_000  # time unit of t: microseconds, 0.1 s per recording


def load(args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames (N, T, 2, 16, 16) and labels of a train / test split (every fourth recording of each class is
    held out)."""
    window = DURATION // args.steps
    tf = frame_transform(SENSOR, window, end_time=window * args.steps, denoise_time=2 * window, binary=True)
    ds = SyntheticEvents(n_per_class=args.per_class, sensor_size=SENSOR, n_classes=args.classes,
                         duration=window * args.steps, n_steps=args.steps, seed=args.seed, transform=tf)
    frames, labels = collate_frames([ds[i] for i in range(len(ds))])
    test = (torch.arange(len(ds)) // args.classes) % 4 == 3  # recordings cycle through the classes
    return frames[~test], labels[~test], frames[test], labels[test]


class EventSNN(nn.Module):
    """frames (B, T, 2, H, W) -> output spikes (B, T, n_out); multi-step Leaky neurons."""

    def __init__(self, model: str = "linear", n_hidden: int = 64, n_out: int = 4, beta: float = 0.9):
        super().__init__()
        grad = snn.surrogate.fast_sigmoid(slope=25)
        self.conv = nn.Conv2d(2, 8, 4, stride=4) if model == "conv" else None  # (8, 4, 4) per frame
        n_in = 8 * 4 * 4 if model == "conv" else 2 * 16 * 16
        self.lif0 = snn.Leaky(beta=beta, spike_grad=grad, step_mode="multi") if model == "conv" else None
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.lif1 = snn.Leaky(beta=beta, spike_grad=grad, step_mode="multi")
        self.fc2 = nn.Linear(n_hidden, n_out)
        self.lif2 = snn.Leaky(beta=beta, spike_grad=grad, step_mode="multi")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        if self.conv is not None:  # the conv runs on every frame: (B T, 2, H, W)
            x, _ = self.lif0(self.conv(x.flatten(0, 1)).unflatten(0, (B, T)))
        spk1, _ = self.lif1(self.fc1(x.flatten(2)))
        spk2, _ = self.lif2(self.fc2(spk1))
        return spk2


def fit(net: nn.Module, data, args, gen: torch.Generator) -> tuple[float, float]:
    """Adam + ce_rate_loss for ``args.epochs``; returns (held-out accuracy, last training loss)."""
    xtr, ytr, xte, yte = data
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    loss = torch.tensor(float("nan"))
    for _ in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), args.batch):
            idx = perm[i : i + args.batch]
            snn.reset(net)  # neurons built with init_hidden=True start each batch from rest
            loss = SF.ce_rate_loss(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        snn.reset(net)
        return SF.accuracy_rate(net(xte), yte), loss.item()


def train_events(args, gen: torch.Generator) -> tuple[float, float]:
    """Generate the data, train ``EventSNN(args.model)``; returns (held-out accuracy, last training loss)."""
    torch.manual_seed(args.seed)
    data = load(args)
    return fit(EventSNN(args.model, n_out=args.classes), data, args, gen)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=40, help="recordings per class (a quarter held out)")
    ap.add_argument("--steps", type=int, default=25, help="frames per recording (time bins)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--classes", type=int, choices=(2, 3, 4), default=4,
                    help="4 adds the anticlockwise line (the clockwise one moving the other way)")
    ap.add_argument("--model", choices=("linear", "conv"), default="linear")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (small ops: 1 is fastest)")
    return ap


def main():
    args = parser().parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    acc, loss = train_events(args, torch.Generator().manual_seed(args.seed))
    n = args.classes * args.per_class
    print(f"synthetic events: {n - n // 4} train / {n // 4} test recordings, {args.classes} classes (chance "
          f"{1 / args.classes:.3f}), sensor 16x16x2, T={args.steps} frames, {args.epochs} epochs, model={args.model}")
    print(f"BPTT (Leaky, ce_rate_loss)   test accuracy {acc:.3f}   last train loss {loss:.3f}   "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
