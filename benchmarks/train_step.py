"""CPU training step (forward + backward + AdamW): SpikeGPT vs Hugging Face RwkvForCausalLM, same dims.

Also reports the floor set by the same model's Linear layers alone (forward + backward of every matmul
the model does, including the head, on the same tokens).

    python benchmarks/train_step.py                      # 12 x 512 (SpikeGPT-46M), B=4, T=256, vocab 6064
    python benchmarks/train_step.py --vocab 50277        # with a GPT-NeoX-sized head
    python benchmarks/train_step.py --layers 4 --width 256 --repeat 3

Prints medians (seconds per step, tokens/s) and the ratios spikegpt / HF and spikegpt / Linear floor.
"""

import argparse
import json

import torch
from _timing import interleaved_medians
from transformers import RwkvConfig, RwkvForCausalLM

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM


def step_fn(model, ids):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # the same optimizer for every model

    def step():
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def linear_floor_fn(model, ids):
    """Forward + backward of the model's Linear layers alone, on inputs of the right shapes."""
    B, T = ids.shape
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(B, T, m.in_features, requires_grad=True) for m in linears]

    def step():
        for m, x in zip(linears, xs):
            m(x).sum().backward()
        model.zero_grad(set_to_none=True)

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=6064, help="6064: the enwik8 characters of SpikeGPT-46M")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.ctx))
    tokens = args.batch * args.ctx
    ours = SpikeGPTForCausalLM(
        SpikeGPTConfig(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers)
    ).train()
    hf = RwkvForCausalLM(
        RwkvConfig(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers,
                   attention_hidden_size=args.width, intermediate_size=4 * args.width, context_length=args.ctx)
    ).train()
    steps = {
        "spikegpt": step_fn(ours, ids),
        "spikegpt (spiking=False)": step_fn(SpikeGPTForCausalLM(SpikeGPTConfig(
            vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers, spiking=False)).train(), ids),
        "HF RwkvForCausalLM": step_fn(hf, ids),
        "Linear layers alone": linear_floor_fn(ours, ids),
    }
    rows = interleaved_medians(steps, args.repeat)
    print(f"training step, {args.layers} x {args.width}, vocab {args.vocab}, B={args.batch}, T={args.ctx}, "
          f"{torch.get_num_threads()} threads, median of {args.repeat} interleaved rounds")
    print(f"{'':28s} {'s/step':>8s} {'tokens/s':>10s}")
    for name, t in rows.items():
        print(f"{name:28s} {t:8.3f} {tokens / t:10.0f}")
    result = {
        "speedup_vs_hf": rows["HF RwkvForCausalLM"] / rows["spikegpt"],
        "fraction_of_linear_floor": rows["Linear layers alone"] / rows["spikegpt"],
        "tokens_per_s": tokens / rows["spikegpt"],
    }
    print(f"spikegpt vs HF RwkvForCausalLM: {result['speedup_vs_hf']:.2f}x (goal >= 2x)")
    print(f"fraction of the Linear-layer floor: {result['fraction_of_linear_floor']:.2f} (goal >= 0.75)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
