"""Multi-step LIF, forward + backward: the ``lif`` op's PyTorch path vs a straightforward per-step loop.

Baselines measured in the same run: the per-step PyTorch loop with autograd through every step
(``spikegpt.kernels.lif.naive``, what one writes by hand), and snnTorch's ``Leaky`` in a Python loop
when snntorch is installed.

    python benchmarks/lif_cpu.py                  # T=1024, B=4, C=512
"""

import argparse
import json

import torch
from _timing import median_time

from spikegpt.kernels import lif
from spikegpt.kernels.lif.naive import lif_naive


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--C", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    x = (torch.randn(args.B, args.T, args.C) * 2).requires_grad_()
    gs = torch.randn(args.B, args.T, args.C)

    def run(fn):
        def go():
            s, v = fn(x)
            (s * gs).sum().backward()
            x.grad = None

        return go

    rows = {
        "spikegpt.kernels.lif (torch)": median_time(run(lambda x: lif(x, backend="torch")), args.repeat),
        "per-step loop + autograd": median_time(run(lif_naive), args.repeat),
    }
    try:
        import snntorch as snn

        leaky = snn.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero")

        def snn_loop(x):
            mem = torch.zeros(args.B, args.C)
            out = []
            for t in range(args.T):
                s, mem = leaky(x[:, t] * 0.5, mem)  # same charge as tau = 2
                out.append(s)
            return torch.stack(out, 1), mem

        rows["snntorch.Leaky loop"] = median_time(run(snn_loop), args.repeat)
    except ImportError:
        pass
    print(f"LIF fwd+bwd, T={args.T}, B={args.B}, C={args.C}, {torch.get_num_threads()} threads, median ms")
    for name, t in rows.items():
        print(f"{name:32s} {t * 1e3:9.1f} ms")
    ours = rows["spikegpt.kernels.lif (torch)"]
    ratio = rows["per-step loop + autograd"] / ours
    print(f"speedup vs per-step loop: {ratio:.1f}x (goal >= 4x)")
    print(json.dumps({"speedup_vs_loop": ratio, "ms": {k: v * 1e3 for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
