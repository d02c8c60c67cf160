"""Quantisation-aware training of a tiny SpikeGPT: full precision vs 8-bit vs ternary weights.

A character-level SpikeGPT is trained from the same initialisation and on the same batches three times:
with float weights, and with the Linear layers inside the blocks fake-quantised to 8 bits (per output
channel) and to ternary {-a, 0, +a} (TWN) by ``spikegpt.snn.qat.quantize_model_`` (straight-through
gradients; the head stays in float unless ``--quantize-head``). The text is the Python language
reference shipped with CPython (``pydoc_data.topics``), so nothing is downloaded. Prints the training
and held-out losses (nats per character) and their change against full precision.

    python examples/qat_spikegpt.py [--steps 300] [--hidden 128] [--layers 2] [--ctx 64] [--batch 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from tqdm import tqdm

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.snn.qat import quantize_model_


def load_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def batch(data: torch.Tensor, starts: torch.Tensor, ctx: int) -> torch.Tensor:
    return torch.stack([data[s : s + ctx] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model, data, ctx, n_batches, batch_size, seed) -> float:
    g = torch.Generator().manual_seed(seed)
    model.eval()
    losses = []
    for _ in range(n_batches):
        x = batch(data, torch.randint(0, len(data) - ctx, (batch_size,), generator=g), ctx)
        losses.append(model(x, labels=x).loss.item())
    model.train()
    return sum(losses) / len(losses)


def run(precision, args, train, val, vocab_size):
    torch.manual_seed(args.seed)
    cfg = SpikeGPTConfig(vocab_size=vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         context_length=args.ctx)
    model = SpikeGPTForCausalLM(cfg)
    if precision != "fp32":
        bits = 8 if precision == "8-bit" else "ternary"
        quantize_model_(model, bits, exclude=() if args.quantize_head else ("head",))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    g = torch.Generator().manual_seed(args.seed + 1)  # same batches for every precision
    recent = []
    for _ in tqdm(range(args.steps), desc=precision, leave=False):
        x = batch(train, torch.randint(0, len(train) - args.ctx, (args.batch,), generator=g), args.ctx)
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-20:]
    return sum(recent) / len(recent), evaluate(model, val, args.ctx, args.eval_batches, args.batch, args.seed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-batches", type=int, default=20)
    ap.add_argument("--quantize-head", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny model: 1 is fastest on a busy CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    text = load_text()
    chars = sorted(set(text))
    lut = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([lut[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(data))
    train, val = data[:cut], data[cut:]
    print(f"pydoc_data.topics: {len(text)} chars, vocab {len(chars)}; SpikeGPT {args.layers} x {args.hidden}, "
          f"ctx {args.ctx}, batch {args.batch}, {args.steps} steps; head quantised: {args.quantize_head}")
    print(f"{'weights':8s} {'train loss':>10s} {'val loss':>9s} {'val vs fp32':>12s} {'time':>7s}")
    base = None
    for precision in ("fp32", "8-bit", "ternary"):
        t0 = time.perf_counter()
        tr, va = run(precision, args, train, val, len(chars))
        base = va if base is None else base
        print(f"{precision:8s} {tr:10.3f} {va:9.3f} {va - base:+12.3f} {time.perf_counter() - t0:6.0f}s")


if __name__ == "__main__":
    main()
