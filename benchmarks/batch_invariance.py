"""What ``batch_invariant=True`` costs on CPU: batched prefill and batched generation, rows of different lengths
left-padded, with the setting off (one batched call) and on (one call per row, every row bit-identical to
itself alone). Also checks, on the same inputs, whether the rows match their runs alone bit for bit.

    python benchmarks/batch_invariance.py                        # 12 x 512, vocab 6064, 4 rows
    python benchmarks/batch_invariance.py --layers 18 --width 768 --vocab 50277 --new 16

Prints medians of interleaved rounds and the ratios on / off.
"""

import argparse
import json

import torch
from _timing import interleaved_medians

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM


def left_padded(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]
    T = max(lengths)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):], mask[i, T - len(r):] = r, 1
    return rows, ids, mask


def rows_match_alone(model, rows, ids, mask):
    """Fraction of rows whose prefill logits equal (bit for bit) the row run alone."""
    with torch.no_grad():
        out = model(ids, attention_mask=mask).logits
        same = [torch.equal(out[i, mask[i].bool()], model(r[None]).logits[0]) for i, r in enumerate(rows)]
    return sum(same) / len(same)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=6064)
    ap.add_argument("--lengths", default="256,100,180,40", help="prompt lengths of the rows")
    ap.add_argument("--new", type=int, default=16, help="tokens generated per row")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    torch.manual_seed(0)
    cfg = dict(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers)
    off = SpikeGPTForCausalLM(SpikeGPTConfig(**cfg)).eval()
    on = SpikeGPTForCausalLM(SpikeGPTConfig(**cfg, batch_invariant=True)).eval()
    on.load_state_dict(off.state_dict())
    rows, ids, mask = left_padded(lengths, args.vocab)

    def prefill(model):
        def run():
            with torch.no_grad():
                model(ids, attention_mask=mask)
        return run

    def generate(model):
        def run():
            model.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                           do_sample=False, pad_token_id=0)
        return run

    t = interleaved_medians({"prefill off": prefill(off), "prefill on": prefill(on),
                             "generate off": generate(off), "generate on": generate(on)}, args.repeat)
    tokens = sum(lengths)
    print(f"{args.layers} x {args.width}, vocab {args.vocab}, rows {lengths} left-padded, {args.new} new tokens "
          f"per row, {torch.get_num_threads()} threads, median of {args.repeat} interleaved rounds")
    print(f"{'':16s} {'off':>10s} {'on':>10s} {'on / off':>9s}")
    print(f"{'prefill tok/s':16s} {tokens / t['prefill off']:10.0f} {tokens / t['prefill on']:10.0f} "
          f"{t['prefill on'] / t['prefill off']:8.2f}x")
    new = args.new * len(lengths)
    print(f"{'generate tok/s':16s} {new / t['generate off']:10.1f} {new / t['generate on']:10.1f} "
          f"{t['generate on'] / t['generate off']:8.2f}x")
    match = {"off": rows_match_alone(off, rows, ids, mask), "on": rows_match_alone(on, rows, ids, mask)}
    print(f"rows bit-identical to the row alone (prefill logits): off {match['off']:.0%}, on {match['on']:.0%}")
    print(json.dumps({"seconds": t, "time_ratio_prefill": t["prefill on"] / t["prefill off"],
                      "time_ratio_generate": t["generate on"] / t["generate off"], "rows_bit_identical": match}))


if __name__ == "__main__":
    main()
