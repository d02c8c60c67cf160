"""Long-context prefill on CPU: tokens per second and peak RSS against the prompt length, with chunked prefill
(``prefill_chunk_size``, default 1024) and, as the named baseline, without it (``prefill_chunk_size=0``).

Each (length, setting) runs in a fresh subprocess, so its peak RSS (the kernel's ``ru_maxrss`` of that child,
from ``os.wait4``) is that run's alone. The call is generate()'s prefill: ``model(ids, logits_to_keep=1,
use_cache=True)`` under ``torch.no_grad()``, batch 1, fp32, random weights. Defaults: the 216M shape (18 x 768,
vocab 50277) at 1k, 16k and 64k tokens, the baseline up to 16k (above it the one-call prefill needs several GB
and as long again as the chunked run), and 1M tokens with a 4 x 256 model (vocab 50277), which takes ~3 minutes
on one core. The whole default run takes ~10 minutes on a free 2-core machine.

    python benchmarks/long_context.py
    python benchmarks/long_context.py --layers 2 --lengths 1024,16384 --long 0     # quick
    python benchmarks/long_context.py --baseline-max 65536                         # baseline at 64k too

Goals: with chunking, tokens/s at 64k within 10% of 1k, peak RSS at 64k within 10% of 1k, and 1M completes.

``--threads`` defaults to 1: on a machine shared with other jobs, intra-op threads wait for cores that other
processes hold (a 2-thread run of the 216M shape measured 4-10x slower than a 1-thread run there), which
measures the neighbours rather than the model. Pass ``--threads 2`` on a machine of your own.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from spikegpt.configuration_spikegpt import DEFAULT_PREFILL_CHUNK_SIZE


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    """One measurement, in this process: prints a JSON line."""
    import logging

    import torch
    from transformers.utils import logging as hf_logging

    from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = SpikeGPTConfig(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers,
                         prefill_chunk_size=args.chunk)
    model = SpikeGPTForCausalLM(cfg).eval()
    ids = torch.randint(0, args.vocab, (1, args.length), generator=torch.Generator().manual_seed(1))

    def prefill(x):
        with torch.no_grad():
            return model(x, logits_to_keep=1, use_cache=True)

    prefill(ids[:, :256])  # warm-up (one-time allocations, kernels)
    rss_before = _status_mb("VmRSS")
    runs = max(1, min(args.repeat, args.budget_tokens // args.length))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = prefill(ids)
        times.append(time.perf_counter() - t0)
    assert out.logits.shape == (1, 1, args.vocab)
    print(json.dumps({"seconds": statistics.median(times), "runs": runs, "rss_before_mb": rss_before,
                      "vmhwm_mb": _status_mb("VmHWM")}))


def measure(args, length, layers, width, chunk) -> dict:
    """Run one child; its result with ``tokens_per_s`` and ``peak_rss_mb`` (ru_maxrss of that child alone)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--length", str(length), "--layers", str(layers),
           "--width", str(width), "--vocab", str(args.vocab), "--chunk", str(chunk), "--threads", str(args.threads),
           "--repeat", str(args.repeat), "--budget-tokens", str(args.budget_tokens)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {cmd} failed with exit code {proc.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    res.update(length=length, layers=layers, width=width, chunk=chunk, tokens_per_s=length / res["seconds"],
               peak_rss_mb=usage.ru_maxrss / 1024)  # ru_maxrss is in KB on Linux
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1024,16384,65536", help="comma-separated prompt lengths (first = reference)")
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50277)
    ap.add_argument("--chunk", type=int, default=DEFAULT_PREFILL_CHUNK_SIZE,
                    help="prefill_chunk_size of the chunked runs (default: the config's)")
    ap.add_argument("--baseline-max", type=int, default=16384,
                    help="run the unchunked baseline only up to this length (0: never)")
    ap.add_argument("--long", type=int, default=1 << 20, help="length of the long run with the small model (0: skip)")
    ap.add_argument("--long-layers", type=int, default=4)
    ap.add_argument("--long-width", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per child (median), as the budget allows")
    ap.add_argument("--budget-tokens", type=int, default=4096, help="a child times at most this many tokens "
                    "in all (at least one run): 3 runs at 1k, one above 2k")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    lengths = [int(x) for x in args.lengths.split(",")]
    rows, skipped = [], []
    print(f"prefill (logits_to_keep=1, use_cache=True, no grad), batch 1, fp32, random weights, "
          f"{args.threads} thread(s), {os.cpu_count()} CPUs; chunked = prefill_chunk_size {args.chunk}, "
          f"baseline = unchunked (prefill_chunk_size 0)", flush=True)
    for n in lengths:
        rows.append(("chunked", measure(args, n, args.layers, args.width, args.chunk)))
        if n <= args.baseline_max:
            rows.append(("unchunked", measure(args, n, args.layers, args.width, 0)))
        else:
            skipped.append(n)
        print(f"  done {n} tokens", flush=True)
    if args.long:
        rows.append(("chunked", measure(args, args.long, args.long_layers, args.long_width, args.chunk)))

    ref = {mode: r for mode, r in rows if r["length"] == lengths[0] and r["layers"] == args.layers}
    print(f"\n{'shape':>10s} {'tokens':>9s} {'setting':>10s} {'runs':>4s} {'tokens/s':>9s} {'peak RSS MB':>11s} "
          f"{'RSS before':>10s} {'tok/s vs 1st':>12s} {'RSS vs 1st':>10s} {'tok/s vs base':>13s}")
    base_at = {r["length"]: r for mode, r in rows if mode == "unchunked"}
    summary = []
    for mode, r in rows:
        shape = f"{r['layers']}x{r['width']}"
        same_shape = r["layers"] == args.layers and r["width"] == args.width
        first = ref.get(mode) if same_shape else None
        vs_first = f"{r['tokens_per_s'] / first['tokens_per_s']:.2f}x" if first else "-"
        rss_first = f"{r['peak_rss_mb'] / first['peak_rss_mb']:.2f}x" if first else "-"
        base = base_at.get(r["length"]) if same_shape and mode == "chunked" else None
        vs_base = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        print(f"{shape:>10s} {r['length']:>9d} {mode:>10s} {r['runs']:>4d} {r['tokens_per_s']:>9.1f} "
              f"{r['peak_rss_mb']:>11.0f} {r['rss_before_mb']:>10.0f} {vs_first:>12s} {rss_first:>10s} {vs_base:>13s}")
        summary.append({"setting": mode, **{k: r[k] for k in ("layers", "width", "length", "chunk", "runs",
                                                              "tokens_per_s", "peak_rss_mb", "rss_before_mb")}})
    for n in skipped:
        print(f"unchunked baseline skipped at {n} tokens (above --baseline-max {args.baseline_max}): one call over "
              f"the whole prompt needs memory growing with it (several GB at 64k for 18 x 768)")
    chunked = {r["length"]: r for mode, r in rows if mode == "chunked" and r["layers"] == args.layers}
    goals = {}
    for n in lengths[1:]:
        if n in chunked and lengths[0] in chunked:
            a, b = chunked[lengths[0]], chunked[n]
            goals[f"{n}/{lengths[0]}"] = {"tokens_per_s": b["tokens_per_s"] / a["tokens_per_s"],
                                          "peak_rss": b["peak_rss_mb"] / a["peak_rss_mb"]}
            print(f"chunked {n} vs {lengths[0]} tokens: tokens/s {goals[f'{n}/{lengths[0]}']['tokens_per_s']:.2f}x, "
                  f"peak RSS {goals[f'{n}/{lengths[0]}']['peak_rss']:.2f}x (goals: within 10%)")
    print(json.dumps({"rows": summary, "ratios_chunked_vs_first": goals, "baseline_skipped": skipped}))


if __name__ == "__main__":
    main()
