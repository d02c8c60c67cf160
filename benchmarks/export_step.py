"""Per-token latency of the one-token step (batch 1, fp32, CPU): PyTorch eager vs the ``torch.export`` program vs
ONNX Runtime (and ONNX Runtime with int8 dynamically quantised weights), at a small shape and at the 216M shape
(18 x 768, vocab 50277), random weights.

    python benchmarks/export_step.py                          # small (2 x 64, vocab 256) and 216M; ~3-4 min on 2 cores
    python benchmarks/export_step.py --shapes small --steps 256
    python benchmarks/export_step.py --shapes 216M --threads 2 --no-int8
    python benchmarks/export_step.py --shapes small --trained runs/tiny    # int8 agreement on a trained model

Each path runs the same token sequence from its own carried state; per token the paths take turns (one step of
each per round, so drift in the machine's speed affects them alike), and the table gives the median seconds per
token, the speed-up over eager (eager time / path time), and the largest |logit - eager logit| over the steps.
The ONNX path is :class:`spikegpt.interop.export.OnnxStep` (numpy in and out, its input checks included).
int8: :func:`spikegpt.interop.export.quantize_onnx` (ONNX Runtime's ``quantize_dynamic`` on the MatMul nodes:
int8 weights, activations quantised per call, the embedding table left fp32). Random weights put many logits near
each other, so their int8 argmax agreement says little: ``--trained DIR`` measures it on a trained model over real
text.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM, SpikeGPTState
from spikegpt.interop.export import OnnxStep, export_onnx, export_step, quantize_onnx, state_to_numpy

SHAPES = {  # name: (layers, width, vocab)
    "small": (2, 64, 256),
    "216M": (18, 768, 50277),
}


def _session_options(threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


def bench(name: str, model: SpikeGPTForCausalLM, ids: torch.Tensor, args, workdir: Path) -> dict:
    """Time the paths on ``model`` over the tokens ``ids`` (warm-up + steps, 1): see the module docstring."""
    cfg = model.config
    stem = re.sub(r"\W+", "_", name).strip("_")
    n_params = sum(p.numel() for p in model.parameters())
    times = {}
    t0 = time.perf_counter()
    program = export_step(model).module()
    times["torch_export_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = export_onnx(model, workdir / f"{stem}.onnx")
    times["onnx_export_s"] = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in workdir.glob(f"{stem}.onnx*"))
    opts = _session_options(args.threads)
    t0 = time.perf_counter()
    onnx = OnnxStep(path, session_options=opts)
    times["ort_session_s"] = time.perf_counter() - t0
    onnx_q = None
    if args.int8:
        t0 = time.perf_counter()
        onnx_q = OnnxStep(quantize_onnx(path, workdir / f"{stem}.int8.onnx"), session_options=opts)
        times["int8_quantize_s"] = time.perf_counter() - t0

    fresh = SpikeGPTState.empty(cfg, 1)
    states = {"eager": fresh, "torch.export": fresh, "onnxruntime": state_to_numpy(fresh)}
    if onnx_q is not None:
        states["onnxruntime int8"] = state_to_numpy(fresh)

    def eager(tok, st):
        out = model(tok, state=st, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.state

    paths = {"eager": eager, "torch.export": program, "onnxruntime": onnx.step}
    if onnx_q is not None:
        paths["onnxruntime int8"] = onnx_q.step
    spent = {k: [] for k in paths}
    diff = dict.fromkeys(paths, 0.0)
    agree = dict.fromkeys(paths, 0)
    with torch.no_grad():
        for t in range(ids.shape[0]):
            tok = ids[t : t + 1]
            logits = {}
            for key, fn in paths.items():
                x = tok.numpy() if key.startswith("onnx") else tok
                t0 = time.perf_counter()
                out, states[key] = fn(x, states[key])
                dt = time.perf_counter() - t0
                logits[key] = out if isinstance(out, torch.Tensor) else torch.from_numpy(out)
                if t >= args.warmup:
                    spent[key].append(dt)
            if t >= args.warmup:
                ref = logits["eager"]
                for key, lg in logits.items():
                    diff[key] = max(diff[key], float((lg - ref).abs().max()))
                    agree[key] += int(torch.equal(lg.argmax(-1), ref.argmax(-1)))
    med = {k: statistics.median(v) for k, v in spent.items()}
    rows = {
        k: {"ms_per_token": med[k] * 1e3, "tokens_per_s": 1.0 / med[k], "speedup_vs_eager": med["eager"] / med[k],
            "max_abs_logit_diff": diff[k], "argmax_agree": agree[k] / args.steps}
        for k in paths
    }
    return {"shape": name, "layers": cfg.num_hidden_layers, "width": cfg.hidden_size, "vocab": cfg.vocab_size,
            "spiking": cfg.spiking, "params": n_params, "onnx_bytes": size, "setup": times, "rows": rows}


def random_model(layers: int, width: int, vocab: int) -> SpikeGPTForCausalLM:
    torch.manual_seed(0)
    return SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers)).eval()


def trained_model_and_text(directory: str, n: int) -> tuple[SpikeGPTForCausalLM, torch.Tensor]:
    """A trained model and ``n`` tokens of real text (CPython's docs, the built-in corpus) as (n, 1) ids."""
    from transformers import AutoTokenizer

    from spikegpt.train.builtin_corpus import builtin_documents

    model = SpikeGPTForCausalLM.from_pretrained(directory).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    ids = tok("\n\n".join(builtin_documents("python-docs")[-20:]), return_tensors="pt").input_ids[0, :n]
    return model, ids[:, None]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--steps", type=int, default=64, help="timed tokens per path")
    ap.add_argument("--warmup", type=int, default=4, help="untimed tokens first")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and of ONNX Runtime")
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                    help="also time ONNX Runtime with int8 dynamically quantised weights")
    ap.add_argument("--trained", help="also a trained model directory, over real text (its int8 argmax agreement "
                                          "means something, unlike that of random weights)")
    ap.add_argument("--keep", help="write the ONNX files here (default: a temporary folder, removed)")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    for noisy in ("transformers", "torch.onnx", "onnxscript", "torch._dynamo", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        n = args.warmup + args.steps
        for name in args.shapes:
            layers, width, vocab = SHAPES[name]
            ids = torch.randint(0, vocab, (n, 1), generator=torch.Generator().manual_seed(1))
            results.append(bench(name, random_model(layers, width, vocab), ids, args, workdir))
        if args.trained:
            model, ids = trained_model_and_text(args.trained, n)
            results.append(bench(f"trained ({args.trained})", model, ids, args, workdir))
    print(f"\none-token step, batch 1, fp32, {args.threads} thread(s), median of {args.steps} tokens "
          f"(+{args.warmup} warm-up); torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    for r in results:
        s = r["setup"]
        print(f"\n{r['shape']}: {r['layers']} x {r['width']}, vocab {r['vocab']}, {r['params'] / 1e6:.1f}M params, "
              f"ONNX {r['onnx_bytes'] / 2**20:.1f} MiB; torch.export {s['torch_export_s']:.1f} s, ONNX export "
              f"{s['onnx_export_s']:.1f} s, session {s['ort_session_s']:.1f} s"
              + (f", int8 quantisation {s['int8_quantize_s']:.1f} s" if "int8_quantize_s" in s else ""))
        print("| path | ms / token | tokens / s | vs eager | max abs logit diff vs eager | argmax = eager |")
        print("|---|---:|---:|---:|---:|---:|")
        for key, row in r["rows"].items():
            print(f"| {key} | {row['ms_per_token']:.3f} | {row['tokens_per_s']:.1f} | {row['speedup_vs_eager']:.2f}x "
                  f"| {row['max_abs_logit_diff']:.2e} | {row['argmax_agree']:.0%} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
