"""Train a spikegpt SNN, write it to a .nir file, run it in snnTorch and Norse, and compare the spikes.

The network classifies the synthetic event recordings of ``tonic_events.py``: frames (B, T, 512) -> Linear ->
LIF -> Linear -> LIF, with SpikeGPT's own ``LIF`` neuron (the fused op's equations: a NIR LIF with r = 1,
v_leak = v_reset = 0, so it means the same in both readers). After BPTT it is exported with
``spikegpt.snn.nir_io.export_to_nir`` at dt = 1e-4 (the step snnTorch's importer hard-codes), written with
``nir.write``, read back with ``nir.read``, and simulated by

* spikegpt (``import_from_nir``),
* snnTorch (``snntorch.import_nir.import_from_nir``, stepping its GraphModule),
* Norse (``norse.torch.from_nir(graph, dt=1e-4)``),

on the held-out recordings; the table counts output spikes that differ from the trained network's and gives
each simulation's accuracy. Needs snntorch and norse (either may be skipped with --only).

    python examples/nir_roundtrip.py [--epochs 10] [--out net.nir] [--only spikegpt,snntorch,norse]
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn import functional as SF
from spikegpt.snn.nir_io import export_to_nir, import_from_nir

DT = 1e-4


def _tonic_events():
    spec = importlib.util.spec_from_file_location("tonic_events", Path(__file__).resolve().parent / "tonic_events.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class LIFNet(nn.Module):
    """frames (B, T, 2, 16, 16) -> output spikes (B, T, n_out); SpikeGPT's LIF (multi-step, fused op)."""

    def __init__(self, n_in: int = 512, n_hidden: int = 64, n_out: int = 4, tau: float = 2.0, threshold: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, n_hidden), snn.LIF(tau=tau, threshold=threshold, init_hidden=True),
                                 nn.Linear(n_hidden, n_out), snn.LIF(tau=tau, threshold=threshold, init_hidden=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(2))


def _step_through(module, x: torch.Tensor) -> torch.Tensor:
    """A nirtorch module (snnTorch's or Norse's import): ``y, state = module(x_t, state)`` per step."""
    state, ys = None, []
    for t in range(x.shape[1]):
        y, state = module(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1)


def simulate(path: str, x: torch.Tensor, only: set[str]) -> dict[str, torch.Tensor]:
    """Read the .nir file and run it in each library: {library: output spikes (B, T, n_out)}."""
    import nir

    out = {}
    if "spikegpt" in only:
        out["spikegpt"], _ = import_from_nir(nir.read(path), dt=DT)(x)
    if "snntorch" in only:
        import snntorch.utils
        from snntorch.import_nir import import_from_nir as snntorch_import

        with contextlib.redirect_stdout(io.StringIO()):  # snnTorch's importer prints its threshold rescaling
            m = snntorch_import(nir.read(path))
        snntorch.utils.reset(m)
        out["snntorch"] = _step_through(m, x)
    if "norse" in only:
        import norse.torch as norse

        out["norse"] = _step_through(norse.from_nir(nir.read(path), dt=DT), x)
    return out


def run(args, gen: torch.Generator) -> dict[str, tuple[int, int, float]]:
    """Train, export, simulate: {"trained" | library: (output spikes, how many of the (B, T, n_out) entries differ
    from the trained net's, accuracy)}, and "_path": the .nir file."""
    import nir

    te = _tonic_events()
    torch.manual_seed(args.seed)
    data = te.load(args)
    net = LIFNet(n_out=args.classes)
    te.fit(net, data, args, gen)
    xte, yte = data[2], data[3]
    x = xte.flatten(2)
    with torch.no_grad():
        snn.reset(net)
        ref = net(xte)
        graph = export_to_nir(net.net, x, dt=DT)
    path = args.out or str(Path(tempfile.mkdtemp()) / "spikegpt_events.nir")
    nir.write(path, graph)
    results = {"trained": (int(ref.sum()), 0, SF.accuracy_rate(ref, yte))}
    with torch.no_grad():
        for lib, spk in simulate(path, x, args.only).items():
            results[lib] = (int(spk.sum()), int((spk != ref).sum()), SF.accuracy_rate(spk, yte))
    results["_path"] = path
    return results


def main():
    te = _tonic_events()
    ap = te.parser()
    ap.description = __doc__.splitlines()[0]
    ap.add_argument("--out", default=None, help="where to write the .nir file (default: a temporary directory)")
    ap.add_argument("--only", default="spikegpt,snntorch,norse", help="comma-separated readers to run")
    args = ap.parse_args()
    args.only = set(args.only.split(","))
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # Norse warns about parameters it ignores (none here)
    warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch's deprecated loaders, used by Norse
    t0 = time.perf_counter()
    results = run(args, torch.Generator().manual_seed(args.seed))
    path = results.pop("_path")
    n_test = args.classes * args.per_class // 4
    print(f"trained LIF net -> {path} (dt={DT}); {n_test} held-out recordings x T={args.steps} x {args.classes} "
          "output neurons")
    print(f"{'simulation':12s} {'output spikes':>14s} {'entries differing':>18s} {'accuracy':>9s}")
    for lib, (n, diff, acc) in results.items():
        print(f"{lib:12s} {n:14d} {diff:18d} {acc:9.3f}")
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
