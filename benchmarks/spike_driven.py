"""Real speed from spike counts: a spike-driven SpikeGPT with int8 weights (``quantize(model, "spike-int8")``, exact
uint8 x int8 ``torch._int_mm`` products of the counts) against fp32 SpikeGPT; then what the int8 weights cost in
quality on a trained spike-driven model.

    python benchmarks/spike_driven.py                           # 216M shape speed + a tiny model trained here
    python benchmarks/spike_driven.py --quick                   # smoke run (toy shape, a few training steps)
    python benchmarks/spike_driven.py --model runs/sd --text held_out.txt    # quality of a model you trained
    python benchmarks/spike_driven.py --speed no --model runs/sd             # its own held-out split

Speed (one process, random weights of a trained model's size as in ``cpu_inference.py``, batch 1, greedy):
three models with the same Linear weights: ``fp32 SpikeGPT`` (``spike_inputs="none"``, the published model,
the baseline), ``fp32 spike-driven`` (``spike_inputs=--code``, every Linear reads spike counts) and
``spike-int8`` (that model quantised). Generation: a ``--prompt``-token prefill, then ``--steps`` decode steps
timed one by one, in ``--rounds`` interleaved rounds (``cpu_inference.time_steps``); tokens/s = 1 / median step.
Prefill: ``model(ids, logits_to_keep=1)`` over ``--prefill`` tokens, chunked as the model does
(``--chunk``, default the config's ``prefill_chunk_size``), median of ``--repeat`` interleaved calls
(``_timing.interleaved_medians``); tokens/s = tokens / median. Ratios are printed against the fp32 SpikeGPT
baseline (goal: spike-int8 >= 2x in generation and prefill) and against the same spike-driven model in fp32.

Quality: held-out next-token predictions of a trained spike-driven model in fp32 and quantised with
spike-int8 (``check_inputs=True``: every quantised layer checks that it reads integer counts in range):
perplexity of each, its relative change, the argmax agreement (fraction of positions whose most likely next
token is the same) and the mean KL divergence from the fp32 predictions, the state carried over windows of
the model's context length. For scale,
the same for the model in fp64 against fp32: spike codes are discontinuous (a count changes where an input
crosses a threshold), so even fp32 rounding moves some predictions. The model is ``--model DIR`` (a saved
spike-driven model with its tokenizer) on ``--text FILE`` (or, without ``--text``, the held-out documents of
DIR's ``train_config.yaml``); without ``--model``, a small spike-driven model is trained here first with
``spikegpt train`` (``configs/tiny.yaml`` at 2 x 128, ``--code`` inputs, ``--train_steps`` steps, one thread)
into ``--train_dir``, reused when it already holds a final model.

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import interleaved_medians
from cpu_inference import spikegpt_runner, time_steps

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.interop.quantization import quantize

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("fp32 SpikeGPT", "fp32 spike-driven", "spike-int8")


def build(args) -> dict:
    """The three speed models, sharing the baseline's Linear weights (random, of a trained model's scale)."""
    torch.manual_seed(0)
    shape = dict(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers,
                 intermediate_size=args.ffn, spiking=True)
    if args.chunk is not None:
        shape["prefill_chunk_size"] = args.chunk
    base = SpikeGPTForCausalLM(SpikeGPTConfig(**shape)).eval()
    with torch.no_grad():  # as cpu_inference.py: no degenerate layer (random init leaves the embedding ~1e-4)
        for p in base.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
        base.model.emb.weight.normal_(0, 1)
    driven = SpikeGPTForCausalLM(SpikeGPTConfig(**shape, spike_inputs=args.code)).eval()
    missing, unexpected = driven.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(".codes." in k or k.startswith("head_code.") for k in missing), missing
    return {"fp32 SpikeGPT": base, "fp32 spike-driven": driven, "spike-int8": quantize(copy.deepcopy(driven),
                                                                                          "spike-int8")}


def speed(args) -> dict:
    t0 = time.perf_counter()
    models = build(args)
    setup_s = time.perf_counter() - t0
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(2))
    gen = time_steps({n: spikegpt_runner(m, prompt) for n, m in models.items()}, args.steps, args.rounds)
    long = torch.randint(0, args.vocab, (1, args.prefill), generator=torch.Generator().manual_seed(3))

    def prefill(m):
        def fn():
            with torch.no_grad():
                m(long, use_cache=True, logits_to_keep=1)
        return fn

    pre = interleaved_medians({n: prefill(m) for n, m in models.items()}, args.repeat)
    gen_tps = {n: 1.0 / t for n, t in gen.items()}
    pre_tps = {n: args.prefill / t for n, t in pre.items()}
    ratios = {}
    for what, tps in (("generation", gen_tps), ("prefill", pre_tps)):
        ratios[what] = {f"{n} vs fp32 SpikeGPT": tps[n] / tps["fp32 SpikeGPT"] for n in ROWS[1:]}
        ratios[what]["spike-int8 vs fp32 spike-driven"] = tps["spike-int8"] / tps["fp32 spike-driven"]
    return {"setup_s": setup_s, "chunk": models["fp32 SpikeGPT"].config.prefill_chunk_size,
            "generation_tokens_per_s": gen_tps, "prefill_tokens_per_s": pre_tps, "ratios": ratios}


# ------------------------------------------------------------------------------------------------------ quality


def train_model(args) -> Path:
    """A small spike-driven model trained by ``spikegpt train`` into ``args.train_dir`` (reused when done)."""
    out = Path(args.train_dir)
    if all((out / f).is_file() for f in ("config.json", "model.safetensors", "train_config.yaml")):
        print(f"reusing the model in {out}", flush=True)
        return out
    cmd = [sys.executable, "-m", "spikegpt.train.pretrain", "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--output_dir", str(out), "--overwrite_output_dir", "true", "--max_steps", str(args.train_steps),
           "--model.spike_inputs", args.code, "--model.hidden_size", "128", "--model.num_hidden_layers", "2",
           "--model.context_length", "64", "--num_threads", "1", "--progress", "false", "--tensorboard", "false",
           "--eval_interval", "0", "--sample_interval", "0", "--save_interval", "0", "--log_interval", "50",
           "--warmup_steps", str(min(20, max(args.train_steps // 10, 1)))]
    print("$", " ".join(cmd[1:]), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        raise SystemExit(f"training failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return out


def held_out_streams(model_dir: Path, text: str | None, max_tokens: int) -> list[list[int]]:
    """Token streams to score: ``text`` (a file) as one stream, or the held-out documents of the run's recipe."""
    from transformers import AutoTokenizer

    from spikegpt.train.tokenization import encoder

    tok = AutoTokenizer.from_pretrained(model_dir)
    encode = encoder(tok)
    if text is not None:
        return [list(encode(Path(text).read_text()))[:max_tokens]]
    recipe = model_dir / "train_config.yaml"
    if not recipe.is_file():
        raise SystemExit(f"{model_dir} has no train_config.yaml: pass --text FILE with held-out text")
    from spikegpt.train.config import load_config
    from spikegpt.train.data import TextSource, validation_documents
    from spikegpt.train.evaluation import build_streams

    cfg = load_config(str(recipe))
    source = TextSource(cfg.data, text_field=cfg.text_field, text_unit=cfg.text_unit)
    docs = validation_documents(source, cfg.seed, cfg.val_fraction, max_tokens, encode)
    return [list(s) for s in build_streams(docs, int(tok.eos_token_id), 8).streams]


def compare(models: dict, streams, window: int) -> dict:
    """Held-out figures of each model (name -> model, the first the reference) over ``streams``, all run window by
    window in lockstep with their own states carried: perplexity, and for the others against the reference the
    argmax agreement and the mean KL(reference || model) of the next-token distributions (nats)."""
    names = list(models)
    nll = {n: [] for n in names}
    agree = {n: [] for n in names[1:]}
    kl = {n: [] for n in names[1:]}
    with torch.no_grad():
        for s in streams:
            ids = torch.tensor([s])
            states = dict.fromkeys(names)
            for s0 in range(0, len(s) - 1, window):
                s1 = min(s0 + window, len(s) - 1)
                target = ids[0, s0 + 1 : s1 + 1, None]
                logp = {}
                for n in names:
                    out = models[n](input_ids=ids[:, s0:s1], state=states[n], use_cache=True)
                    states[n] = out.state
                    logp[n] = F.log_softmax(out.logits[0].double(), dim=-1)
                    nll[n].append(-logp[n].gather(1, target)[:, 0])
                ref = logp[names[0]]
                for n in names[1:]:
                    agree[n].append(logp[n].argmax(-1) == ref.argmax(-1))
                    kl[n].append((ref.exp() * (ref - logp[n])).sum(-1))
    rows = {n: {"ppl": float(torch.cat(nll[n]).mean().exp())} for n in names}
    for n in names[1:]:
        rows[n].update(ppl_change=rows[n]["ppl"] / rows[names[0]]["ppl"] - 1,
                       argmax_agreement=float(torch.cat(agree[n]).double().mean()),
                       kl_nats=float(torch.cat(kl[n]).mean()))
    rows["tokens"] = int(torch.cat(nll[names[0]]).numel())
    return rows


def quality(args) -> dict:
    model_dir = Path(args.model) if args.model else train_model(args)
    fp32 = SpikeGPTForCausalLM.from_pretrained(model_dir).eval()
    if fp32.config.spike_inputs == "none":
        raise SystemExit(f"{model_dir} is not spike-driven (spike_inputs 'none'): spike-int8 needs spike counts")
    streams = held_out_streams(model_dir, args.text, args.max_tokens)
    t0 = time.perf_counter()
    models = {"fp32": fp32, "spike-int8": quantize(copy.deepcopy(fp32), "spike-int8", check_inputs=True),
              "fp64": copy.deepcopy(fp32).double()}
    rows = compare(models, streams, fp32.config.context_length)
    return {"model": str(model_dir), "spike_inputs": fp32.config.spike_inputs, "spiking": fp32.config.spiking,
            "seconds": time.perf_counter() - t0, **rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--ffn", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=50277)
    ap.add_argument("--code", default="int3", help="spike_inputs of the spike-driven models (default int3)")
    ap.add_argument("--prompt", type=int, default=16, help="prefill tokens before the timed decode steps")
    ap.add_argument("--steps", type=int, default=16, help="timed decode steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    ap.add_argument("--prefill", type=int, default=512, help="tokens of the timed prefill")
    ap.add_argument("--chunk", type=int, default=None, help="prefill_chunk_size (default: the config's)")
    ap.add_argument("--repeat", type=int, default=3, help="timed prefill calls per model (after one warm-up)")
    ap.add_argument("--speed", choices=["yes", "no"], default="yes")
    ap.add_argument("--quality", choices=["yes", "no"], default="yes")
    ap.add_argument("--model", default=None, help="a saved spike-driven model directory for the quality figures")
    ap.add_argument("--text", default=None, help="held-out text file (default: the held-out split of --model's "
                                                 "train_config.yaml)")
    ap.add_argument("--max_tokens", type=int, default=16384, help="held-out tokens scored at most")
    ap.add_argument("--train_dir", default=str(ROOT / "runs" / "spike_driven_quality"),
                    help="where the model trained without --model goes (reused when it holds one)")
    ap.add_argument("--train_steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: a shared machine)")
    ap.add_argument("--quick", action="store_true", help="smoke run: toy shape, few steps and tokens")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.width, args.ffn, args.vocab = 2, 64, 256, 96
        args.prompt, args.steps, args.rounds, args.prefill, args.repeat = 4, 2, 1, 16, 1
        args.train_steps, args.max_tokens = min(args.train_steps, 4), min(args.max_tokens, 256)
        if args.model is None and args.train_dir == str(ROOT / "runs" / "spike_driven_quality"):
            args.train_dir = str(ROOT / "runs" / "spike_driven_quality_quick")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    report = {"threads": torch.get_num_threads(), "shape": [args.layers, args.width, args.ffn, args.vocab],
              "code": args.code}
    if args.speed == "yes":
        sp = speed(args)
        report["speed"] = sp
        print(f"CPU, {args.layers} x {args.width} (FFN {args.ffn}), vocab {args.vocab}, random weights, batch 1, "
              f"{torch.get_num_threads()} threads; spike-driven code {args.code}; setup {sp['setup_s']:.0f} s")
        print(f"generation: {args.prompt}-token prompt, median of {args.rounds} x {args.steps} decode steps; "
              f"prefill: {args.prefill} tokens (chunks of {sp['chunk']}), median of {args.repeat}")
        print(f"{'tokens/s':22s}{'generation':>12s}{'prefill':>12s}")
        for n in ROWS:
            print(f"{n:22s}{sp['generation_tokens_per_s'][n]:12.1f}{sp['prefill_tokens_per_s'][n]:12.1f}")
        for what, r in sp["ratios"].items():
            print(f"{what}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
        print("goal: spike-int8 >= 2x fp32 SpikeGPT in generation and prefill")
    if args.quality == "yes":
        q = quality(args)
        report["quality"] = q
        print(f"quality: {q['model']} (spike_inputs {q['spike_inputs']}, spiking {q['spiking']}), {q['tokens']} "
              f"held-out tokens: fp32 ppl {q['fp32']['ppl']:.3f}")
        for n in ("spike-int8", "fp64"):
            print(f"  {n:10s} ppl {q[n]['ppl']:.3f} ({q[n]['ppl_change']:+.2%}), argmax agreement with fp32 "
                  f"{q[n]['argmax_agreement']:.2%}, KL(fp32 || {n}) {q[n]['kl_nats']:.2e} nats/token")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
