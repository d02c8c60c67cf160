"""CPU batch-1 generation: SpikeGPT vs Hugging Face RwkvForCausalLM at the same shape (default: the
216M shape, 18 x 768, vocab 50277), greedy, tokens per second (median over repeats).

Also measures lower-precision weights for SpikeGPT (bf16, and int8 dynamic quantisation of the Linear
layers) and how often their next-token argmax differs from fp32 over a teacher-forced sequence.

    python benchmarks/generation.py
    python benchmarks/generation.py --layers 4 --width 256 --new 32     # quick
    python benchmarks/generation.py --trained runs/tiny                 # argmax agreement on a trained model

Random weights give near-tied logits, so their argmax agreement says little; ``--trained DIR`` also measures
it on a trained model over real text (CPython's docs, the built-in corpus).
"""

import argparse
import copy
import json
import logging

import torch
from _timing import median_time
from transformers import RwkvConfig, RwkvForCausalLM
from transformers.utils import logging as hf_logging

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM


def tokens_per_s(model, prompt, new, repeat):
    def go():
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           attention_mask=torch.ones_like(prompt), pad_token_id=0)

    return new / median_time(go, repeat=repeat, warmup=1)


def argmax_agreement(ref, other, ids):
    with torch.no_grad():
        a = ref(ids).logits.argmax(-1)
        b = other(ids).logits.float().argmax(-1)
    return (a == b).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50277)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--trained", help="a trained model directory for the argmax-agreement check")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    prompt = torch.randint(0, args.vocab, (1, args.prompt))
    ours = SpikeGPTForCausalLM(
        SpikeGPTConfig(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers)
    ).eval()
    hf = RwkvForCausalLM(
        RwkvConfig(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers,
                   attention_hidden_size=args.width, intermediate_size=4 * args.width)
    ).eval()
    rows = {
        "HF RwkvForCausalLM fp32": tokens_per_s(hf, prompt, args.new, args.repeat),
        "spikegpt fp32": tokens_per_s(ours, prompt, args.new, args.repeat),
    }
    bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    rows["spikegpt bf16 weights"] = tokens_per_s(bf16, prompt, args.new, args.repeat)
    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(ours), {torch.nn.Linear}, dtype=torch.qint8)
    rows["spikegpt int8 dynamic (Linear)"] = tokens_per_s(int8, prompt, args.new, args.repeat)
    ids = torch.randint(0, args.vocab, (1, 256), generator=torch.Generator().manual_seed(1))
    agree = {"bf16": argmax_agreement(ours, bf16, ids), "int8": argmax_agreement(ours, int8, ids)}
    print(f"batch-1 greedy generation, {args.layers} x {args.width}, vocab {args.vocab}, "
          f"{args.new} new tokens, {torch.get_num_threads()} threads, median of {args.repeat}")
    for name, v in rows.items():
        print(f"{name:32s} {v:8.1f} tokens/s")
    base = rows["HF RwkvForCausalLM fp32"]
    print(f"spikegpt fp32 vs HF fp32: {rows['spikegpt fp32'] / base:.2f}x (goal >= 1x)")
    print(f"next-token argmax equal to fp32 (random weights, 256 positions): bf16 {agree['bf16']:.1%}, "
          f"int8 {agree['int8']:.1%}")
    if args.trained:
        from transformers import AutoTokenizer

        from spikegpt.train.builtin_corpus import builtin_documents

        model = SpikeGPTForCausalLM.from_pretrained(args.trained).eval()
        tok = AutoTokenizer.from_pretrained(args.trained)
        text = "\n\n".join(builtin_documents("python-docs")[-40:])
        ids = tok(text, return_tensors="pt").input_ids[:, :1024]
        q8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
        agree["trained_bf16"] = argmax_agreement(model, copy.deepcopy(model).to(torch.bfloat16), ids)
        agree["trained_int8"] = argmax_agreement(model, q8, ids)
        print(f"trained model {args.trained}, {ids.shape[1]} tokens of real text: argmax equal to fp32: "
              f"bf16 {agree['trained_bf16']:.1%}, int8 {agree['trained_int8']:.1%}")
    print(json.dumps({"tokens_per_s": rows, "ratio_fp32": rows["spikegpt fp32"] / base, "argmax_agree": agree}))


if __name__ == "__main__":
    main()
