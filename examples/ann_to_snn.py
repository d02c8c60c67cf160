"""ANN-to-SNN conversion on scikit-learn's bundled 8x8 digits (no download): accuracy against time steps.

Trains two ordinary ReLU networks with backprop, then converts each to an integrate-and-fire network
(``spikegpt.snn.conversion.convert_to_snn``) with max-norm and percentile-norm threshold balancing,
calibrated on training images:

- an MLP: Linear(64, 128) -> ReLU -> Dropout -> Linear(128, 64) -> ReLU -> Linear(64, 10);
- a CNN: Conv2d(1, 16, 3) -> BatchNorm2d -> ReLU -> AvgPool2d(2) -> Conv2d(16, 32, 3) -> BatchNorm2d -> ReLU
  -> MaxPool2d(2) -> Flatten -> Linear(128, 10) (BatchNorm is folded, max pooling pools spike counts).

It prints the ANN's test accuracy and the SNN's at T in {4, 8, ..., 128} steps: classified by the output
membrane readout (accumulated output current, the usual choice) and by output spike counts. One run of
the largest T holds every shorter run (the SNN is causal). Pixels enter as constant currents
(``--encoding analog``) or Bernoulli spikes (``--encoding rate``).

    python examples/ann_to_snn.py [--epochs 40] [--encoding analog] [--percentile 99.9] [--seed 0]

``train_ann_to_snn(Xtr, ytr, Xte, yte, args, gen)`` is the whole experiment for other scripts; ``args``
may be ``parse_args([])`` with fields changed (missing fields take the defaults).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from spikegpt.snn.conversion import convert_to_snn
from spikegpt.snn.datasets import digits

STEPS = (4, 8, 16, 32, 64, 128)
DEFAULTS = dict(epochs=40, batch=64, lr=2e-3, seed=0, steps=STEPS, percentile=99.9, calib=512,
                encoding="analog", eval_batch=150, threads=1)


def load(seed: int):
    """The digits split every example uses (:func:`spikegpt.snn.datasets.digits`)."""
    return digits(seed)


def make_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def make_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


def train_ann(net: nn.Sequential, X: torch.Tensor, y: torch.Tensor, args, gen: torch.Generator) -> nn.Sequential:
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    net.train()
    for _ in range(args.epochs):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), args.batch):
            idx = perm[i:i + args.batch]
            loss = nn.functional.cross_entropy(net(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def snn_accuracy(snn, X: torch.Tensor, y: torch.Tensor, args, gen: torch.Generator) -> tuple[dict, dict]:
    """Test accuracy at every T of ``args.steps``: (by membrane readout, by spike count), each {T: acc}."""
    T = max(args.steps)
    right_mem = dict.fromkeys(args.steps, 0)
    right_spk = dict.fromkeys(args.steps, 0)
    with torch.no_grad():
        for i in range(0, len(X), args.eval_batch):
            xb, yb = X[i:i + args.eval_batch], y[i:i + args.eval_batch]
            out = snn(xb, T, encoding=args.encoding, generator=gen)
            mem, cnt = out.current.cumsum(1), out.spikes.cumsum(1)
            for t in args.steps:
                right_mem[t] += int((mem[:, t - 1].argmax(1) == yb).sum())
                right_spk[t] += int((cnt[:, t - 1].argmax(1) == yb).sum())
    return {t: right_mem[t] / len(X) for t in args.steps}, {t: right_spk[t] / len(X) for t in args.steps}


def train_ann_to_snn(Xtr, ytr, Xte, yte, args, gen: torch.Generator) -> dict:
    """Train the MLP and the CNN on (Xtr (N, 64) in [0, 1], ytr (N,)), convert, test on (Xte, yte).

    Returns ``{"steps": [...], "mlp": r, "cnn": r, "seconds": s}`` with, for each network,
    ``r = {"ann": acc, "snn": {norm: {T: acc}}, "snn_spikes": {norm: {T: acc}}, "scales": {norm: [...]}}``
    for ``norm`` in ``"max"`` / ``"percentile"`` ("snn": classified by the membrane readout, "snn_spikes":
    by output spike counts). Training is seeded by ``args.seed`` alone; ``gen`` draws the calibration images
    and, with ``encoding="rate"``, the input spikes.
    """
    args = argparse.Namespace(**{**DEFAULTS, **vars(args)})
    t0 = time.perf_counter()
    result: dict = {"steps": list(args.steps)}
    for name, make, shape in (("mlp", make_mlp, (64,)), ("cnn", make_cnn, (1, 8, 8))):
        torch.manual_seed(args.seed)
        xtr, xte = Xtr.reshape(-1, *shape), Xte.reshape(-1, *shape)
        net = train_ann(make(), xtr, ytr, args, torch.Generator().manual_seed(args.seed))
        with torch.no_grad():
            ann_acc = float((net(xte).argmax(1) == yte).float().mean())
        r = {"ann": ann_acc, "snn": {}, "snn_spikes": {}, "scales": {}}
        calib = xtr[torch.randperm(len(xtr), generator=gen)[:args.calib]]
        for norm in ("max", "percentile"):
            snn = convert_to_snn(net, calib, norm=norm, percentile=args.percentile)
            r["snn"][norm], r["snn_spikes"][norm] = snn_accuracy(snn, xte, yte, args, gen)
            r["scales"][norm] = [*snn.scales, snn.output_scale]
        result[name] = r
    result["seconds"] = time.perf_counter() - t0
    return result


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    ap.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="time steps to report")
    ap.add_argument("--percentile", type=float, default=DEFAULTS["percentile"])
    ap.add_argument("--calib", type=int, default=DEFAULTS["calib"], help="calibration images (training set)")
    ap.add_argument("--encoding", choices=("analog", "rate"), default=DEFAULTS["encoding"])
    ap.add_argument("--eval-batch", dest="eval_batch", type=int, default=DEFAULTS["eval_batch"])
    ap.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="torch threads")
    return ap.parse_args(argv)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    Xtr, Xte, ytr, yte = load(args.seed)
    print(f"digits: {len(Xtr)} train / {len(Xte)} test, {args.epochs} epochs, encoding={args.encoding}, "
          f"calibration on {args.calib} training images")
    r = train_ann_to_snn(Xtr, ytr, Xte, yte, args, torch.Generator().manual_seed(args.seed))
    head = "".join(f"{'T=' + str(t):>7s}" for t in r["steps"])
    for name in ("mlp", "cnn"):
        print(f"\n{name.upper()}: ANN test accuracy {r[name]['ann']:.3f}")
        print(f"{'SNN readout':28s}{head}")
        for key, what in (("snn", "membrane"), ("snn_spikes", "spike count")):
            for norm in ("max", "percentile"):
                label = f"{what}, {norm}" + (f" {args.percentile:g}" if norm == "percentile" else "")
                print(f"{label:28s}" + "".join(f"{r[name][key][norm][t]:7.3f}" for t in r["steps"]))
    print(f"\ntotal {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
