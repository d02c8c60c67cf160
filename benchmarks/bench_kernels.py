"""WKV and LIF kernels: milliseconds and achieved bandwidth, against named baselines in the same run.

    python benchmarks/bench_kernels.py                       # CUDA: bf16, B=8, T in {1024, 4096}, C in {768, 2048}
    python benchmarks/bench_kernels.py --ctx 256 --width 256 # smaller shapes (the CPU default is B=2, T 256/1024,
                                                       # C 256/768, fp32)
    python benchmarks/bench_kernels.py --model               # also the whole-model training step (216M shape)
    python benchmarks/bench_kernels.py --sweep               # CUDA: the Triton WKV under other launch shapes

Rows: for each op, shape and pass (fwd, fwd+bwd), every implementation that can run here: ``triton``
(CUDA only; for WKV also ``tchunk``, the chunk-parallel Triton design of ``spikegpt/kernels/wkv/triton_chunk.py``),
``torch`` (the PyTorch path, every device) and, for WKV, ``fla`` (flash-linear-attention's
``fla.ops.rwkv4.fused_recurrent_rwkv4``, when importable). Columns: median milliseconds, achieved GB/s
over the op's minimal traffic (below), that as a share of this device's measured copy bandwidth
(``dst.copy_(src)``, read + write), and the speed-up over ``torch`` in the same run.

Minimal traffic per element, with ``e`` the input's bytes per element: WKV fwd reads k, v and writes y
(3e); fwd+bwd adds reading k, v, dy and writing dk, dv (8e in all). LIF fwd (training) reads x, writes
spikes and h (2e + 4); fwd+bwd adds reading h, ds and writing dx (4e + 8 in all). LIF inference: 2e.
A ``step`` row is the one-token generation call (T = 1, no gradient) at B = 1 and B = 8.

``--fusion`` times what fusing the FFN's gate into the LIF would save: the separate gate op
``sigmoid(r) * kv`` (fwd+bwd) that a fused kernel would absorb, next to the LIF itself.
``--model`` times a training step (forward, backward, AdamW) of ``SpikeGPTForCausalLM`` at the 216M
shape (18 x 768, vocab 50277, T = 1024, bf16 autocast on CUDA) and reports tokens/s and model FLOPs
utilisation: 6 x (parameters of every matmul, the head included) FLOPs per token against the device's
dense bf16 peak (``--peak-tflops``; known for H100/H200 and A100).
"""
# Named bench_kernels.py, not kernels.py: scripts put their own folder first on sys.path, and transformers 5.x
# imports any top-level module called ``kernels`` it can find: a project module of that name collides with it.


import argparse
import json
import statistics
import time

import torch

from spikegpt.kernels import lif, wkv

GB = 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, repeat: int, warmup: int = 2, budget_s: float = 1.5) -> float:
    """Median wall milliseconds of ``fn()`` over up to ``repeat`` runs (fewer, but at least 3, when a run
    is slow enough that ``repeat`` would exceed ``budget_s``), synchronising the device around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    once = time.perf_counter() - t0
    times = []
    for _ in range(max(3, min(repeat, int(budget_s / max(once, 1e-9))))):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def copy_bandwidth(device: torch.device, repeat: int) -> float:
    """GB/s of ``dst.copy_(src)`` on a buffer far larger than the caches (read + write counted)."""
    n = (1 << 30) if device.type == "cuda" else (1 << 28)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, repeat)
    return 2 * n / (ms / 1e3) / GB


def _fla_wkv():
    try:
        from fla.ops.rwkv4 import fused_recurrent_rwkv4
    except Exception:  # not installed, or fails to import on this device
        return None

    def run(td, tf, k, v):
        B, C = k.shape[0], k.shape[2]
        state = torch.zeros(B, 3, 1, C, device=k.device, dtype=torch.float32)
        state[:, 2] = -1e38
        return fused_recurrent_rwkv4(td, tf, k, v, state)

    return run


def rel_err(got, want) -> float:
    """Largest relative L2 error ||a - b|| / ||b|| over matching tensors (0 when ``want`` is all zero)."""
    worst = 0.0
    for a, b in zip(got, want):
        a, b = a.detach().float(), b.detach().float()
        worst = max(worst, ((a - b).norm() / b.norm().clamp_min(1e-30)).item())
    return worst


class Table:
    """Rows as they are measured: printed at once, compared with the ``torch`` row of the same op, pass and
    shape (speed-up, and the relative error of the outputs and gradients), and written to ``--json`` after
    every row, so a run cut short keeps what it measured."""

    HEAD = ("op", "impl", "pass", "B", "T", "C", "ms", "GB/s", "% copy", "vs torch", "err vs torch")

    def __init__(self, bw: float, meta: dict, json_path: str | None):
        self.bw, self.meta, self.json_path, self.rows = bw, meta, json_path, []
        self.ref: dict[tuple, tuple[float, tuple]] = {}
        print("\n{:<9}{:<8}{:<9}{:>3}{:>6}{:>6}{:>11}{:>9}{:>8}{:>10}{:>14}".format(*self.HEAD), flush=True)

    def add(self, op, impl, pas, B, T, C, nbytes, time_fn, outputs_fn=None):
        """Time ``time_fn`` (median ms) and, when given, compare ``outputs_fn()`` with torch's."""
        key = (op, pas, B, T, C)
        row = dict(op=op, impl=impl, **{"pass": pas}, B=B, T=T, C=C)
        try:
            outs = tuple(outputs_fn()) if outputs_fn is not None else None
            ms = time_fn()
        except Exception as e:  # one failing kernel must not cost the rest of the table
            row["error"] = f"{type(e).__name__}: {e}"[:300]
            print(f"{op:<9}{impl:<8}{pas:<9}{B:>3}{T:>6}{C:>6}   FAILED {row['error']}", flush=True)
            self.save(row)
            return
        gbs = nbytes / (ms / 1e3) / GB
        row.update(ms=ms, gb_s=gbs, copy_share=gbs / self.bw)
        if impl == "torch":
            self.ref[key] = (ms, outs)
        base = self.ref.get(key)
        speed = err = "-"
        if base is not None and impl != "torch":
            row["speedup_vs_torch"] = base[0] / ms
            speed = f"{base[0] / ms:.2f}x"
            if outs is not None and base[1] is not None:
                row["err_vs_torch"] = rel_err(outs, base[1])
                err = f"{row['err_vs_torch']:.1e}"
        print(f"{op:<9}{impl:<8}{pas:<9}{B:>3}{T:>6}{C:>6}{ms:>11.3f}{gbs:>9.1f}{100 * gbs / self.bw:>7.1f}%"
              f"{speed:>10}{err:>14}", flush=True)
        self.save(row)

    def save(self, row):
        self.rows.append(row)
        if self.json_path:
            with open(self.json_path, "w") as f:
                json.dump({**self.meta, "rows": self.rows}, f, indent=1)


def _grads(out, inputs, cot):
    return torch.autograd.grad(out, inputs, cot)


def wkv_rows(table, B, T, C, dtype, device, repeat, impls, fla):
    g = torch.Generator(device="cpu").manual_seed(0)
    td = torch.randn(C, generator=g).to(device).requires_grad_()
    tf = torch.randn(C, generator=g).to(device).requires_grad_()
    k = torch.randn(B, T, C, generator=g).to(device, dtype).requires_grad_()
    v = torch.randn(B, T, C, generator=g).to(device, dtype).requires_grad_()
    gy = torch.randn(B, T, C, generator=g).to(device, dtype)
    e = k.element_size()
    calls = {name: (lambda name=name: wkv(td, tf, k, v, backend=name)[0]) for name in impls}
    if "triton" in impls:  # the chunk-parallel design, measured against the per-channel one
        from spikegpt.kernels.wkv.triton_chunk import wkv_triton_chunked

        calls["tchunk"] = lambda: wkv_triton_chunked(td, tf, k, v)[0]
    if fla is not None:
        calls["fla"] = lambda: fla(td, tf, k, v)[0]
    for name, call in calls.items():
        def fwd(call=call):
            with torch.no_grad():
                return call()

        def fwd_bwd(call=call):
            y = call()
            return (y, *_grads(y, (td, tf, k, v), gy))

        table.add("wkv", name, "fwd", B, T, C, 3 * e * B * T * C,
                  lambda fwd=fwd: median_ms(fwd, device, repeat), lambda fwd=fwd: (fwd(),))
        table.add("wkv", name, "fwd+bwd", B, T, C, 8 * e * B * T * C,
                  lambda f=fwd_bwd: median_ms(f, device, repeat), fwd_bwd)


def wkv_step_rows(table, B, C, dtype, device, repeat, impls):
    g = torch.Generator(device="cpu").manual_seed(0)
    td, tf = (torch.randn(C, generator=g).to(device) for _ in range(2))
    k, v = (torch.randn(B, 1, C, generator=g).to(device, dtype) for _ in range(2))
    state = (torch.randn(B, C, generator=g).to(device), torch.rand(B, C, generator=g).to(device) + 0.1,
             torch.randn(B, C, generator=g).to(device))
    for name in impls:
        def step(name=name):
            with torch.no_grad():
                y, st = wkv(td, tf, k, v, state, backend=name)
            return (y, *st)

        table.add("wkv", name, "step", B, 1, C, 3 * k.element_size() * B * C + 24 * B * C,
                  lambda step=step: median_ms(step, device, repeat * 4), step)


def lif_rows(table, B, T, C, dtype, device, repeat, impls):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(B, T, C, generator=g) * 2).to(device, dtype).requires_grad_()
    gs = torch.randn(B, T, C, generator=g).to(device, dtype)
    e = x.element_size()
    for name in impls:
        def infer(name=name):
            with torch.no_grad():
                return lif(x, backend=name)

        def fwd(name=name):
            return lif(x, backend=name)

        def fwd_bwd(name=name):
            s, v = lif(x, backend=name)
            return (s, v, *_grads(s, (x,), gs))

        table.add("lif", name, "infer", B, T, C, 2 * e * B * T * C, lambda f=infer: median_ms(f, device, repeat), infer)
        table.add("lif", name, "fwd", B, T, C, (2 * e + 4) * B * T * C, lambda f=fwd: median_ms(f, device, repeat),
                  fwd)
        table.add("lif", name, "fwd+bwd", B, T, C, (4 * e + 8) * B * T * C,
                  lambda f=fwd_bwd: median_ms(f, device, repeat), fwd_bwd)


def fusion_rows(table, B, T, C, dtype, device, repeat, impls):
    """The gate op a fused gate+LIF kernel would absorb, and gate then LIF, both fwd+bwd."""
    g = torch.Generator(device="cpu").manual_seed(0)
    r, kv = ((torch.randn(B, T, C, generator=g) * 2).to(device, dtype).requires_grad_() for _ in range(2))
    gx = torch.randn(B, T, C, generator=g).to(device, dtype)
    e = r.element_size()

    def gate():
        x = torch.sigmoid(r) * kv
        return (x, *_grads(x, (r, kv), gx))

    # gate fwd: read r, kv, write x (3e); bwd: read dx, r, kv, write dr, dkv (5e)
    table.add("gate", "torch", "fwd+bwd", B, T, C, 8 * e * B * T * C, lambda: median_ms(gate, device, repeat))
    for name in impls:
        def both(name=name):
            s, _ = lif(torch.sigmoid(r) * kv, backend=name)
            return (s, *_grads(s, (r, kv), gx))

        table.add("gate+lif", name, "fwd+bwd", B, T, C, (8 * e + 4 * e + 8) * B * T * C,
                  lambda f=both: median_ms(f, device, repeat), both)


def goals(rows: list[dict]) -> list[str]:
    """The issue's targets, checked against the rows of this run (for every shape measured):
    Triton WKV fwd+bwd at least fla's speed and >= 60% of copy bandwidth, Triton LIF fwd+bwd >= 70%,
    the T = 1 step not slower than the PyTorch step, whole-model training >= 35% MFU; and the largest
    disagreement between an implementation and the PyTorch path."""
    ok = [r for r in rows if "ms" in r and r.get("op") != "model"]
    lines = []

    def verdict(name, values, target, fmt):
        if not values:
            return
        worst = min(values)
        lines.append(f"{name}: worst {fmt(worst)} (target {fmt(target)}): {'met' if worst >= target else 'NOT met'}")

    def sel(op, impl, pas):
        return [r for r in ok if (r["op"], r["impl"], r["pass"]) == (op, impl, pas)]

    def shape(r):
        return r["B"], r["T"], r["C"]

    pct, times = "{:.0%}".format, "{:.2f}x".format
    fla = {shape(r): r["ms"] for r in sel("wkv", "fla", "fwd+bwd")}
    for impl, design in (("triton", "per-channel"), ("tchunk", "chunk-parallel")):
        rows_fb = sel("wkv", impl, "fwd+bwd")
        verdict(f"Triton WKV ({design}) fwd+bwd, share of copy bandwidth", [r["copy_share"] for r in rows_fb],
                0.60, pct)
        verdict(f"Triton WKV ({design}) fwd+bwd, speed relative to fla",
                [fla[shape(r)] / r["ms"] for r in rows_fb if shape(r) in fla], 1.0, times)
    verdict("Triton LIF fwd+bwd, share of copy bandwidth", [r["copy_share"] for r in sel("lif", "triton", "fwd+bwd")],
            0.70, pct)
    verdict("Triton WKV T=1 step, speed relative to the PyTorch step",
            [r["speedup_vs_torch"] for r in sel("wkv", "triton", "step") if "speedup_vs_torch" in r], 1.0, times)
    models = [r for r in rows if r.get("op") == "model" and r.get("mfu")]
    for backend in sorted({str(r.get("backend")) for r in models}):
        verdict(f"model training ({backend}), MFU", [r["mfu"] for r in models if str(r.get("backend")) == backend],
                0.35, pct)
    errs = [(r["err_vs_torch"], r) for r in ok if "err_vs_torch" in r]
    if errs:
        e, r = max(errs, key=lambda x: x[0])
        lines.append(f"largest relative error against the PyTorch path: {e:.1e} ({r['op']} {r['impl']} {r['pass']} "
                     f"B={r['B']} T={r['T']} C={r['C']})")
    failed = [r for r in rows if "error" in r]
    lines.append(f"rows that failed: {len(failed)}")
    return lines


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0}


def model_rows(device, repeat, batch, ctx, layers, width, vocab, peak_tflops, compile_model, backend=None):
    try:
        from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
    except ImportError as e:  # the model is optional for this script
        print(f"model: skipped ({e})")
        return {"op": "model", "error": f"skipped: {e}"}
    cfg = SpikeGPTConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, context_length=ctx,
                         kernel_backend=backend)
    model = SpikeGPTForCausalLM(cfg).to(device)
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(0, vocab, (batch, ctx), device=device)
    fwd = torch.compile(model) if compile_model else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = fwd(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = median_ms(step, device, repeat, warmup=3 if compile_model else 2)
    tok_s = batch * ctx / (ms / 1e3)
    if peak_tflops is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    mfu = 6 * matmul_params * tok_s / (peak_tflops * 1e12) if peak_tflops else None
    print(f"\nmodel {layers} x {width}, vocab {vocab}, B={batch}, T={ctx}, {matmul_params / 1e6:.1f}M matmul params"
          f", kernels {backend or 'automatic'}{' (compiled)' if compile_model else ''}: {ms:.1f} ms/step, "
          f"{tok_s:,.0f} tokens/s, MFU "
          + (f"{100 * mfu:.1f}% of {peak_tflops:.0f} TFLOPS" if mfu is not None else "n/a (pass --peak-tflops)"),
          flush=True)
    return {"op": "model", "ms": ms, "tokens_per_s": tok_s, "mfu": mfu, "batch": batch, "ctx": ctx,
            "layers": layers, "width": width, "vocab": vocab, "matmul_params": matmul_params}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                    help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--batch", type=int, default=None, help="default: 8 on CUDA, 2 on CPU")
    ap.add_argument("--ctx", type=int, nargs="+", default=None, help="T values (default: 1024 4096 / CPU 256 1024)")
    ap.add_argument("--width", type=int, nargs="+", default=None, help="C values (default: 768 2048 / CPU 256 768)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per row (default: 20 CUDA, 3 CPU)")
    ap.add_argument("--ops", nargs="+", default=["wkv", "lif", "step"], choices=["wkv", "lif", "step"])
    ap.add_argument("--fusion", action="store_true", help="time the gate op a fused gate+LIF would remove")
    ap.add_argument("--sweep", action="store_true", help="CUDA: Triton WKV at other unroll / group settings")
    ap.add_argument("--model", action="store_true", help="whole-model training step")
    ap.add_argument("--model-shape", type=int, nargs=5, default=[8, 1024, 18, 768, 50277],
                    metavar=("B", "T", "LAYERS", "WIDTH", "VOCAB"))
    ap.add_argument("--compile", action="store_true", help="torch.compile the model for --model")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU")
    ap.add_argument("--impls", nargs="+", default=None, choices=["triton", "torch"],
                    help="implementations to time (default: triton and torch on CUDA, torch elsewhere; triton on CPU "
                    "needs TRITON_INTERPRET=1 and only checks that this script runs)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dtype = dtypes[args.dtype or ("bf16" if cuda else "fp32")]
    B = args.batch or (8 if cuda else 2)
    Ts = args.ctx or ([1024, 4096] if cuda else [256, 1024])
    Cs = args.width or ([768, 2048] if cuda else [256, 768])
    repeat = args.repeat or (20 if cuda else 3)
    impls = args.impls or (["triton", "torch"] if cuda else ["torch"])
    impls = sorted(impls, key=lambda n: n != "torch")  # torch first: every other row is compared with it
    fla = _fla_wkv() if cuda else None

    bw = copy_bandwidth(device, repeat)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device: {name}; torch {torch.__version__}; dtype {dtype}; copy bandwidth {bw:.0f} GB/s; "
          f"fla {'found' if fla else 'not importable'}", flush=True)
    table = Table(bw, {"device": name, "torch": torch.__version__, "dtype": str(dtype), "copy_gb_s": bw}, args.json)
    for T in Ts:
        for C in Cs:
            if "wkv" in args.ops:
                wkv_rows(table, B, T, C, dtype, device, repeat, impls, fla)
            if "lif" in args.ops:
                lif_rows(table, B, T, C, dtype, device, repeat, impls)
            if args.fusion:
                fusion_rows(table, B, T, C, dtype, device, repeat, impls)
    if "step" in args.ops:
        for Bs in (1, 8):
            for C in Cs:
                wkv_step_rows(table, Bs, C, dtype, device, repeat, impls)

    if args.sweep and "triton" in impls:
        from spikegpt.kernels.wkv.triton_recurrent import wkv_triton

        print("\nTriton WKV launch shapes (impl tL x R: L unrolled tokens, a checkpoint every R loops):", flush=True)
        T, C = Ts[-1], Cs[-1]
        g = torch.Generator(device="cpu").manual_seed(0)
        td, tf = (torch.randn(C, generator=g).to(device).requires_grad_() for _ in range(2))
        k, v = (torch.randn(B, T, C, generator=g).to(device, dtype).requires_grad_() for _ in range(2))
        gy = torch.randn(B, T, C, generator=g).to(device, dtype)
        for unroll, groups in ((8, 8), (16, 4), (16, 8), (32, 2)):
            def fb(unroll=unroll, groups=groups):
                y = wkv_triton(td, tf, k, v, unroll=unroll, groups=groups)[0]
                return (y, *_grads(y, (td, tf, k, v), gy))

            table.add("wkv", f"t{unroll}x{groups}", "fwd+bwd", B, T, C, 8 * k.element_size() * B * T * C,
                      lambda f=fb: median_ms(f, device, repeat), fb)
        from spikegpt.kernels.wkv.triton_chunk import wkv_triton_chunked

        for chunk in (16, 64):  # the chunk-parallel design at other chunk lengths (default 32)
            def fbc(chunk=chunk):
                y = wkv_triton_chunked(td, tf, k, v, chunk=chunk)[0]
                return (y, *_grads(y, (td, tf, k, v), gy))

            table.add("wkv", f"tc{chunk}", "fwd+bwd", B, T, C, 8 * k.element_size() * B * T * C,
                      lambda f=fbc: median_ms(f, device, repeat), fbc)

    if args.model:
        b, t, layers, width, vocab = args.model_shape
        if not cuda and args.model_shape == ap.get_default("model_shape"):
            b, t, layers, width, vocab = 2, 128, 4, 256, 4096  # a shape a CPU finishes
        # on CUDA, the step with each Triton WKV design; elsewhere the automatic choice (the PyTorch path)
        for backend in (["triton", "triton_chunked"] if "triton" in impls else [None]):
            try:
                row = model_rows(device, max(3, repeat // 4), b, t, layers, width, vocab, args.peak_tflops,
                                 args.compile, backend)
            except Exception as e:  # e.g. out of memory: keep the kernel table
                row = {"op": "model", "error": f"{type(e).__name__}: {e}"[:300]}
                print(f"\nmodel ({backend}): FAILED {row['error']}", flush=True)
            table.save({**row, "backend": backend})

    where = table.meta["device"] + ("" if cuda else "; Triton rows here are the interpreter: timings mean nothing")
    print(f"\ngoals ({where}):", flush=True)
    for line in goals(table.rows):
        print("  " + line, flush=True)


if __name__ == "__main__":
    main()
