"""CPU generation speed of SpikeGPT in fp32 / bf16 / int8 / int4 against BlinkDL's ``rwkv`` package (ChatRWKV's
runtime, strategies ``cpu fp32`` and ``cpu bf16``) on the same weights; and, with ``--trained``, the perplexity
each scheme gives on the held-out split of trained runs.

    python benchmarks/cpu_inference.py                                  # 216M shape (18 x 768, vocab 50277)
    python benchmarks/cpu_inference.py --layers 6 --width 512 --vocab 8192 --steps 16     # quick
    python benchmarks/cpu_inference.py --speed no --trained runs/q-spiking runs/q-nonspiking   # quality only

Speed: a non-spiking SpikeGPT with random weights (RWKV-4 exactly) is exported with ``to_original`` to a .pth
that the rwkv package loads; first both give the fp32 logits of a few tokens, which must agree (relative 1e-4:
the same fp32 arithmetic in another order, 18 layers deep). Each stream gets a ``--prompt``-token prefill, then
decode steps (one token per stream, greedy) are timed one by one, in interleaved rounds so that a machine whose
load drifts affects every row alike; tokens/s = streams / median step time. The rwkv package runs one sequence
per call (its state is per sequence), so its batch 8 is 8 streams stepped one after another.

Rows: ``fp32`` is ``quantize(model, "fp32")`` (the weights stored transposed for CPU decoding), the baseline of the
SpikeGPT ratios; ``fp32-plain`` the model as loaded. ``--compiled`` schemes (default fp32 and int8-dynamic) are
also timed with compiled steps, the ``torch.compile`` of the model's call that ``generate(compile_config=...)``
uses (compiled in the warm-up round, once per batch size; ~20 s for fp32 and ~70 s for int8-dynamic at the 216M
shape), since the rwkv package's rows run TorchScript (``RWKV_JIT_ON=1``): compiled against compiled.

Quality (``--trained DIR ...``): perplexity of each run's held-out documents (the same split, windows and state
carrying as ``spikegpt eval --split val``) with the model in fp32 and quantised by each scheme; and, for the
``--compiled`` schemes, the perplexity of the first ``--step_tokens`` held-out tokens read one decode step at a
time, eager and compiled (what compiling the step costs).

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import CompileConfig

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.interop.original import to_original
from spikegpt.interop.quantization import quantize

SCHEMES = ("fp32", "fp32-plain", "bf16", "int8", "int4", "int8-dynamic")
# "fp32": quantize(model, "fp32"), the fp32 weights stored transposed for CPU decoding (the baseline of the int8
# ratios); "fp32-plain": the model as loaded, without that layout.
# "int8-fp32": int8 weights with the matmul in fp32 (torchao's own kernel, exact weight-only): not a default
# speed row (slower than fp32 on a CPU), a default quality row (what the bf16 matmul of "int8" costs)
EXTRA = {"int8-fp32": ("int8", {"compute_dtype": None})}


def make(model, scheme):
    """A quantised copy of ``model`` for a benchmark scheme name ("fp32-plain": an unchanged copy)."""
    if scheme == "fp32-plain":
        return copy.deepcopy(model)
    base, kw = EXTRA.get(scheme, (scheme, {}))
    return quantize(copy.deepcopy(model), base, **kw)
AGREE_RTOL = 1e-4
# what `generate(..., compile_config=...)` is given for compiled decoding here (CPU: no CUDA graphs)
COMPILE = CompileConfig(fullgraph=True, mode="default")


def spikegpt_runner(model, prompt, compiled=False):
    """(prefill, step) for a SpikeGPT model and a (B, P) prompt: prefill() starts the streams, step() decodes one
    token per stream; with ``compiled``, through the ``torch.compile`` of the model's call that
    ``generate(compile_config=COMPILE)`` uses for its steps (compiled at the first step, in the warm-up round)."""
    box = {}
    call = model.get_compiled_call(COMPILE) if compiled else model

    def prefill():
        out = model(prompt, use_cache=True, logits_to_keep=1)
        box["state"], box["next"] = out.state, out.logits[:, -1].argmax(-1, keepdim=True)

    def step():
        out = call(input_ids=box["next"], state=box["state"], use_cache=True, return_dict=True)
        box["state"], box["next"] = out.state, out.logits[:, -1].argmax(-1, keepdim=True)

    return prefill, step


def rwkv_runner(model, prompt):
    """The same for the rwkv package: one forward per stream, each with its own state."""
    rows = prompt.tolist()
    box = {}

    def prefill():
        box["streams"] = []
        for row in rows:
            logits, state = model.forward(row, None)
            box["streams"].append([int(logits.argmax()), state])

    def step():
        for s in box["streams"]:
            logits, s[1] = model.forward([s[0]], s[1])
            s[0] = int(logits.argmax())

    return prefill, step


def time_steps(runners: dict, steps: int, rounds: int) -> dict:
    """Median seconds per decode step of each runner: ``rounds`` rounds, each a prefill and ``steps`` timed steps
    of every runner in turn (the first round is a warm-up, not counted)."""
    times = {name: [] for name in runners}
    for r in range(rounds + 1):
        for name, (prefill, step) in runners.items():
            with torch.no_grad():
                prefill()
                for _ in range(steps):
                    t0 = time.perf_counter()
                    step()
                    if r:
                        times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def load_rwkv(path: str, strategy: str):
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ["RWKV_CUDA_ON"] = "0"
    from rwkv.model import RWKV

    return RWKV(model=path.removesuffix(".pth"), strategy=strategy, verbose=False)


def speed(args) -> dict:
    torch.manual_seed(0)
    cfg = SpikeGPTConfig(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers,
                         spiking=args.spiking)
    t0 = time.perf_counter()
    fp32 = SpikeGPTForCausalLM(cfg).eval()
    with torch.no_grad():  # weights of a trained model's size, so that no layer is degenerate (random init
        for p in fp32.parameters():  # leaves the embedding ~1e-4 and the logits near-tied)
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
        fp32.model.emb.weight.normal_(0, 1)
    models = {s: make(fp32, s) for s in dict.fromkeys([*args.schemes, *args.compiled])}
    rwkv = {}
    if args.rwkv and not args.spiking:  # the rwkv package runs RWKV-4: the non-spiking model only
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "rwkv4.pth")
            torch.save(to_original(fp32), path)
            rwkv = {st: load_rwkv(path, st) for st in args.rwkv}
    setup_s = time.perf_counter() - t0

    # fp32 agreement: SpikeGPT's parallel prompt vs the rwkv package token by token
    ids = torch.randint(0, args.vocab, (1, 8), generator=torch.Generator().manual_seed(1))
    agree = {}
    with torch.no_grad():
        ref = fp32(ids).logits[0]
        for st, m in rwkv.items():
            state, rows = None, []
            for t in ids[0].tolist():
                out, state = m.forward([t], state)
                rows.append(out.float())
            diff = (torch.stack(rows) - ref).abs().max().item() / ref.abs().max().item()
            agree[st] = diff
    # compiled steps against eager ones, from the same state (relative L2 difference of the logits; this also compiles
    # the batch-1 graph before the timing)
    compiled_agree = {}
    for s in args.compiled:
        m = models[s]
        with torch.no_grad():
            st = m(ids, use_cache=True).state
            eager = m(ids[:, -1:], state=st, use_cache=True).logits
            comp = m.get_compiled_call(COMPILE)(input_ids=ids[:, -1:], state=st, use_cache=True, return_dict=True)
        compiled_agree[s] = ((comp.logits - eager).norm() / eager.norm()).item()
    if "cpu fp32" in agree and agree["cpu fp32"] > AGREE_RTOL:
        raise SystemExit(f"the rwkv package's fp32 logits differ from SpikeGPT's by {agree['cpu fp32']:.2e} "
                         f"(relative to the largest logit; allowed {AGREE_RTOL})")

    results = {}
    for B in args.batch:
        prompt = torch.randint(0, args.vocab, (B, args.prompt), generator=torch.Generator().manual_seed(2))
        runners = {f"spikegpt {s}": spikegpt_runner(m, prompt) for s, m in models.items()}
        runners.update({f"spikegpt {s} compiled": spikegpt_runner(models[s], prompt, compiled=True)
                        for s in args.compiled})
        runners.update({f"rwkv {st}": rwkv_runner(m, prompt) for st, m in rwkv.items()})
        med = time_steps(runners, args.steps, args.rounds)
        results[B] = {name: B / t for name, t in med.items()}
    return {"setup_s": setup_s, "agree": agree, "compiled_agree": compiled_agree, "tokens_per_s": results}


def step_perplexity(model, call, ids: torch.Tensor) -> float:
    """Perplexity of ids (1, N + 1) read one token per step (the decode path: every step a call of ``call`` on the
    carried state), predicting tokens 1..N."""
    nats = 0.0
    with torch.no_grad():
        out = model(ids[:, :1], use_cache=True)
        for t in range(1, ids.shape[1]):
            nats -= torch.log_softmax(out.logits[0, -1].float(), -1)[ids[0, t]].item()
            if t + 1 < ids.shape[1]:
                out = call(input_ids=ids[:, t:t + 1], state=out.state, use_cache=True, return_dict=True)
    return math.exp(nats / (ids.shape[1] - 1))


def step_quality(args, base, docs, eos) -> dict:
    """What compiling the decode step costs in quality: perplexity of the first ``--step_tokens`` held-out tokens
    (documents joined by end-of-text) read step by step, eager and compiled, for fp32 and each ``--compiled``
    scheme."""
    flat = [t for _, d in docs for t in (*d, eos)][: args.step_tokens + 1]
    ids = torch.tensor(flat)[None]
    row = {}
    for s in dict.fromkeys(["fp32", *args.compiled]):
        model = base if s == "fp32" else make(base, s)
        row[s] = step_perplexity(model, model, ids)
        if s in args.compiled:
            row[f"{s} compiled"] = step_perplexity(model, model.get_compiled_call(COMPILE), ids)
    return {"tokens": ids.shape[1] - 1, **row}


def quality(args) -> dict:
    """Held-out perplexity of each trained run in fp32 and each scheme (spikegpt eval --split val's recipe)."""
    import yaml
    from transformers import AutoTokenizer

    from spikegpt.train.data import TextSource, is_validation
    from spikegpt.train.evaluation import EvalResult, build_streams, stream_nats
    from spikegpt.train.tokenization import encoder

    out = {}
    for run in args.trained:
        run_cfg = yaml.safe_load((Path(run) / "train_config.yaml").read_text())  # data, seed, val_fraction
        data = run_cfg["data"]
        tok = AutoTokenizer.from_pretrained(run)
        encode = encoder(tok)
        docs = [(t, encode(t)) for t in TextSource(data).texts()
                if is_validation(t, run_cfg.get("seed", 0), run_cfg.get("val_fraction", 0.05))]
        streams = build_streams(docs, int(tok.eos_token_id), 8)
        base = SpikeGPTForCausalLM.from_pretrained(run).eval()
        row = {}
        for s in ("fp32",) + tuple(x for x in args.quality_schemes if x != "fp32"):
            model = base if s == "fp32" else make(base, s)
            t0 = time.perf_counter()
            with torch.no_grad():
                nats, count = stream_nats(model, streams.streams, base.config.context_length, 8)
            r = EvalResult(nats=nats, tokens=count, characters=streams.characters, documents=streams.documents)
            row[s] = {**r.as_dict(), "seconds": time.perf_counter() - t0}
        out[run] = {"spiking": base.config.spiking, **row}
        if args.compiled and args.step_tokens:
            out[run]["step"] = step_quality(args, base, docs, int(tok.eos_token_id))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50277)
    ap.add_argument("--prompt", type=int, default=16, help="prefill tokens per stream")
    ap.add_argument("--steps", type=int, default=16, help="timed decode steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES + tuple(EXTRA),
                    help="SpikeGPT rows of the speed table")
    ap.add_argument("--compiled", nargs="*", default=["fp32", "int8-dynamic"], choices=SCHEMES,
                    help="schemes also timed with compiled decode steps (generate's compile_config; none: skip)")
    ap.add_argument("--step_tokens", type=int, default=3000,
                    help="held-out tokens read step by step for the compiled-decoding quality rows (0: skip)")
    ap.add_argument("--quality_schemes", nargs="+", default=["bf16", "int8", "int8-fp32", "int4", "int8-dynamic"],
                    choices=SCHEMES + tuple(EXTRA), help="columns of the perplexity table")
    ap.add_argument("--rwkv", nargs="*", default=["cpu fp32", "cpu bf16"],
                    help="rwkv package strategies to compare with (none: skip the rwkv package)")
    ap.add_argument("--spiking", action="store_true",
                    help="time a spiking model instead (SpikeGPT rows only: the rwkv package has no spikes)")
    ap.add_argument("--speed", choices=["yes", "no"], default="yes")
    ap.add_argument("--trained", nargs="*", default=[], help="trained run directories for the perplexity table")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"threads": torch.get_num_threads(), "shape": [args.layers, args.width, args.vocab]}
    if args.speed == "yes":
        sp = speed(args)
        report["speed"] = sp
        kind = "spiking" if args.spiking else "non-spiking (RWKV-4)"
        print(f"CPU decode, {args.layers} x {args.width}, vocab {args.vocab}, {kind} random weights, "
              f"{args.prompt}-token prefill, median of {args.rounds} x {args.steps} steps, "
              f"{torch.get_num_threads()} threads; setup {sp['setup_s']:.0f} s")
        for st, d in sp["agree"].items():
            print(f"fp32 logits vs rwkv package {st!r}: max |diff| / max |logit| = {d:.1e}")
        for s, d in sp["compiled_agree"].items():
            print(f"{s} compiled step vs eager step: |diff| / |logits| = {d:.1e}")
        names = list(next(iter(sp["tokens_per_s"].values())))  # rows
        print(f"{'tokens/s':24s}" + "".join(f"{'batch ' + str(b):>12s}" for b in sp["tokens_per_s"]))
        for n in names:
            print(f"{n:24s}" + "".join(f"{sp['tokens_per_s'][b][n]:12.1f}" for b in sp["tokens_per_s"]))
        ratios = {}
        for b, row in sp["tokens_per_s"].items():
            r = {}
            if "rwkv cpu fp32" in row:
                r["fp32 vs rwkv fp32"] = row["spikegpt fp32"] / row["rwkv cpu fp32"]
                if "spikegpt fp32 compiled" in row:
                    r["fp32 compiled vs rwkv fp32"] = row["spikegpt fp32 compiled"] / row["rwkv cpu fp32"]
            if "rwkv cpu bf16" in row and "spikegpt bf16" in row:
                r["bf16 vs rwkv bf16"] = row["spikegpt bf16"] / row["rwkv cpu bf16"]
            for s in ("fp32-plain", "bf16", "int8", "int4", "int8-dynamic"):
                if f"spikegpt {s}" in row:
                    r[f"{s} vs spikegpt fp32"] = row[f"spikegpt {s}"] / row["spikegpt fp32"]
                if f"spikegpt {s} compiled" in row and "spikegpt fp32 compiled" in row:
                    r[f"{s} compiled vs fp32 compiled"] = row[f"spikegpt {s} compiled"] / row["spikegpt fp32 compiled"]
            ratios[b] = r
            print(f"batch {b}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
        print("goals: >= 1x against the rwkv package in fp32 and bf16; int8 >= 2x spikegpt fp32")
        report["ratios"] = ratios
    if args.trained:
        q = quality(args)
        report["quality"] = q
        print("held-out perplexity (relative change from fp32)")
        for run, row in q.items():
            base = row["fp32"]["ppl"]
            cells = [f"{s} {row[s]['ppl']:.3f}" + ("" if s == "fp32" else f" ({row[s]['ppl'] / base - 1:+.2%})")
                     for s in row if s not in ("spiking", "step")]
            print(f"{run} ({'spiking' if row['spiking'] else 'non-spiking'}, {row['fp32']['tokens']} tokens): "
                  + ", ".join(cells))
            if "step" in row:
                st = row["step"]
                cells = [f"{s} {st[s]:.3f}" + ("" if s == "fp32" else f" ({st[s] / st['fp32'] - 1:+.2%})")
                         for s in st if s != "tokens"]
                print(f"  read step by step, eager and compiled ({st['tokens']} tokens): " + ", ".join(cells))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
