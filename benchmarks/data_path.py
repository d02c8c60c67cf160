"""The pretraining data path: prepared shards against a GPU's appetite, streaming, resume, and the step.

    python benchmarks/data_path.py                  # ~3 minutes on 2 cores; writes ~0.3 GB under a temp dir
    python benchmarks/data_path.py --big_docs 2000000 --repeat 5      # quicker, smaller resume check

Rows (medians, each ratio against the baseline named on its row, measured in this run):

1. prepared shards: tokens/s of ``TokenPacker.next_batch(8)`` (blocks of 1025, documents of ~300 tokens as in
   OpenWebText2) per process, against a GPU's appetite: the 216M model on one H200 at 35% MFU eats
   ``0.35 * 989e12 / (6 * 216e6)`` = ~267k tokens/s (goal: >= 10x);
2. streamed text: tokens/s of ``BlockPacker`` (``datasets`` stream + a 4096-token byte-level BPE) on the
   built-in corpus, against the same appetite;
3. time to the first batch after a resume near the end of an epoch, prepared, at 1M and at 17M documents
   (goal: < 1 s at both; documents of ~4 tokens keep the files small, the cost grows with documents, not
   tokens), and for streamed text at 20k documents, extrapolated linearly to 1M / 17M (it re-reads them);
4. a training step of the tiny recipe's model (4 x 256, context 128, batch 16) fed by the background
   worker over prepared shards, against the same step on a tensor made beforehand (goal: within 2%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _timing import interleaved_medians

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.train.data import BlockPacker, TextSource, builtin_text
from spikegpt.train.loader import Prefetcher
from spikegpt.train.token_data import TokenPacker, open_token_data, write_synthetic
from spikegpt.train.tokenization import encoder, train_bpe_tokenizer

APPETITE = 0.35 * 989e12 / (6 * 216e6)  # tokens/s: 216M parameters, 6 FLOPs per parameter and token, H200 bf16


def prepared_throughput(directory: Path, repeat: int) -> float:
    """Tokens/s of next_batch(8) with blocks of 1025 (the 216M recipe's context + 1)."""
    split = open_token_data(directory).split("train")
    packer = TokenPacker(split, 4095, 1025, seed=0)
    n_batches = 50

    def run():
        for _ in range(n_batches):
            packer.next_batch(8)

    t = interleaved_medians({"prepared": run}, repeat)["prepared"]
    return n_batches * 8 * 1024 / t


def streaming_throughput(repeat: int) -> tuple[float, object]:
    text = builtin_text("builtin:python-docs")
    tok = train_bpe_tokenizer([text[i : i + 100_000] for i in range(0, min(len(text), 2_000_000), 100_000)], 4096)
    encode = encoder(tok)
    source = TextSource("builtin:python-docs")
    times = []
    tokens = 0
    for _ in range(repeat):
        packer = BlockPacker(source, encode, tok.eos_token_id, 1025, seed=0, shuffle_buffer=1000)
        t0 = time.perf_counter()
        for _ in range(20):
            packer.next_batch(8)
        times.append(time.perf_counter() - t0)
        tokens = 20 * 8 * 1024
    return tokens / statistics.median(times), encode


def prepared_resume_seconds(directory: Path, repeat: int) -> float:
    """Open the data, make a packer, restore a position near the end of epoch 0, take one batch."""
    split = open_token_data(directory).split("train")
    probe = TokenPacker(split, 4095, 1025, seed=0)
    state = probe.state_dict()
    state["block"] = (split.num_tokens + split.num_documents) // 1024 - 10  # ~10 blocks before the epoch ends
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        packer = TokenPacker(open_token_data(directory).split("train"), 4095, 1025, seed=0)
        packer.load_state_dict(state)
        packer.next_batch(8)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def streaming_resume_seconds(tmp: Path, encode, docs: int) -> float:
    path = tmp / "stream.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(docs + 2000):
            f.write(json.dumps({"text": f"document {i}: " + "spikes carry the state forward. " * 8}) + "\n")
    source = TextSource(str(path))
    packer = BlockPacker(source, encode, 0, 129, seed=0, shuffle_buffer=1000)
    packer.load_state_dict({"epoch": 0, "docs": docs, "buffer": []})
    t0 = time.perf_counter()
    packer.next_batch(1)
    return time.perf_counter() - t0


def step_with_data(directory: Path, repeat: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4,
                                               context_length=128))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = Prefetcher(TokenPacker(open_token_data(directory).split("train"), 4095, 128, seed=0), 16)
    fixed = loader.next().clone()

    def step(ids):
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = interleaved_medians({"real": lambda: step(loader.next()), "synthetic": lambda: step(fixed)}, repeat)
    loader.close()
    return t["real"], t["synthetic"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000, help="documents of the smaller resume check")
    ap.add_argument("--big_docs", type=int, default=17_000_000, help="documents of the larger (OpenWebText2)")
    ap.add_argument("--stream_docs", type=int, default=20_000, help="documents a streamed resume re-reads")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        realistic = write_synthetic(tmp / "owt-like", 100_000, 300.0, 4096, seed=1)
        rows["prepared_tokens_per_s"] = prepared_throughput(realistic, args.repeat)
        rows["streaming_tokens_per_s"], encode = streaming_throughput(max(3, args.repeat // 2))
        for label, n in (("resume_s_small", args.docs), ("resume_s_big", args.big_docs)):
            directory = write_synthetic(tmp / f"resume-{n}", n, 4.0, 4096, seed=2)
            rows[label] = prepared_resume_seconds(directory, max(3, args.repeat // 2))
            rows[label.replace("resume_s", "documents")] = n
        rows["stream_resume_s"] = streaming_resume_seconds(tmp, encode, args.stream_docs)
        rows["step_real_s"], rows["step_synthetic_s"] = step_with_data(realistic, args.repeat * 3)

    per_doc = rows["stream_resume_s"] / args.stream_docs
    print(f"{'row':58s} {'value':>14s} {'ratio':>9s}  baseline")
    print(f"{'prepared shards, tokens/s per process':58s} {rows['prepared_tokens_per_s']:14,.0f} "
          f"{rows['prepared_tokens_per_s'] / APPETITE:8.1f}x  a GPU's appetite {APPETITE:,.0f} tok/s (goal >= 10x)")
    print(f"{'streamed text (4k BPE, datasets), tokens/s':58s} {rows['streaming_tokens_per_s']:14,.0f} "
          f"{rows['streaming_tokens_per_s'] / APPETITE:8.2f}x  the same appetite")
    for label, n in (("resume_s_small", args.docs), ("resume_s_big", args.big_docs)):
        print(f"{f'first batch after resume, prepared, {n:,} docs (s)':58s} {rows[label]:14.3f} "
              f"{rows[label]:8.3f}s  goal < 1 s; streamed text would re-read: {per_doc * n:,.0f} s")
    print(f"{f'first batch after resume, streamed, {args.stream_docs:,} docs (s)':58s} "
          f"{rows['stream_resume_s']:14.3f} {per_doc * 1e6:8.1f}s  per 1M documents, extrapolated")
    ratio = rows["step_real_s"] / rows["step_synthetic_s"]
    print(f"{'training step, prepared data via the worker (s)':58s} {rows['step_real_s']:14.4f} "
          f"{ratio:8.3f}x  the same step on a ready tensor {rows['step_synthetic_s']:.4f} s (goal <= 1.02x)")
    rows.update(appetite_tokens_per_s=APPETITE, step_ratio=ratio, stream_resume_s_per_million_docs=per_doc * 1e6)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
