"""The FSDP2 side of tests/train/test_parallel.py, run on 2 CPU ranks (gloo) by torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/fsdp_worker.py PHASE OUT_DIR

``train``: a tiny SpikeGPTForCausalLM sharded with :func:`spikegpt.train.parallel.build_accelerator` ("fsdp"),
Adam on fixed per-rank batches (:func:`batch`) with gradient clipping for :data:`STEPS` steps; after
:data:`SAVE_AT` steps the full model (save_pretrained) and the sharded optimizer go to ``OUT_DIR/ckpt``. Also
validation with a different number of forwards per rank, and generation with a different length per rank.
``resume``: a fresh process loads ``OUT_DIR/ckpt`` into a fresh sharded model and optimizer and takes the
remaining steps. Rank 0 writes what it saw to ``OUT_DIR/PHASE.pt``; the test compares it with one process.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

import spikegpt
from spikegpt.train.parallel import (
    OPTIMIZER_DIR,
    build_accelerator,
    clip_grad_norm,
    gather_model_state,
    generate,
    is_fsdp,
    load_optimizer,
    save_optimizer,
    shared_directory,
    validation_nats,
)

STEPS, SAVE_AT, LR, EPS, CLIP, ROWS = 5, 3, 1e-2, 1e-5, 0.5, 2
CONFIG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, context_length=32)
PROMPT = [5, 9, 3]
NEW_TOKENS = (2, 5)  # per rank: under FSDP rank 0 is done first and must keep stepping with rank 1


def tiny_model() -> spikegpt.SpikeGPTForCausalLM:
    torch.manual_seed(0)
    return spikegpt.SpikeGPTForCausalLM(spikegpt.SpikeGPTConfig(**CONFIG))


def batch(step: int, rank: int) -> torch.Tensor:
    """The (ROWS, 32) token batch of ``rank`` at ``step`` (the single-process run concatenates both ranks')."""
    return torch.randint(0, CONFIG["vocab_size"], (ROWS, CONFIG["context_length"]),
                         generator=torch.Generator().manual_seed(1000 * step + rank))


def val_streams(rank: int) -> list[list[int]]:
    """Validation streams of different lengths per rank: rank 0 needs 8 forwards (batch 2, window 16), rank 1 one."""
    g = torch.Generator().manual_seed(77 + rank)
    lengths = (40, 20, 70) if rank == 0 else (10,)
    return [torch.randint(0, CONFIG["vocab_size"], (n,), generator=g).tolist() for n in lengths]


def main(phase: str, out: Path) -> None:
    # FSDP2 warns that a block returns views (att_shift / ffn_shift are x[:, -1]); nothing modifies them in place
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    acc = build_accelerator("fsdp", "no")
    rank = acc.process_index
    assert acc.num_processes == 2 and is_fsdp(acc) and acc.is_fsdp2, acc.distributed_type
    ckpt = out / "ckpt"
    if phase == "train":
        model = tiny_model()
    else:
        model = spikegpt.SpikeGPTForCausalLM.from_pretrained(ckpt)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, eps=EPS)
    model, optimizer = acc.prepare(model, optimizer)

    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    sharded = sorted(n for n, m in model.named_modules() if isinstance(m, FSDPModule))
    shapes = {n: (tuple(p.shape), tuple(p.to_local().shape)) for n, p in model.named_parameters()
              if isinstance(p, DTensor)}
    record = {"sharded_modules": sharded, "shapes": shapes,
              "all_dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
              "losses": [], "norms": []}

    def train_step(step: int) -> None:
        ids = batch(step, rank)
        loss = model(input_ids=ids, labels=ids).loss
        acc.backward(loss)
        norm = clip_grad_norm(acc, model, CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean = acc.reduce(loss.detach().reshape(1), reduction="mean")
        record["losses"].append(float(mean))
        record["norms"].append(float(norm))

    first = 0
    if phase == "resume":
        try:
            load_optimizer(acc, model, optimizer, out)  # no optimizer state there: a clear error on every rank
        except FileNotFoundError as e:
            record["missing_error"] = str(e)
        load_optimizer(acc, model, optimizer, ckpt)
        first = SAVE_AT
    for step in range(first, STEPS):
        train_step(step)
        if phase == "train" and step + 1 == SAVE_AT:
            state = gather_model_state(acc, model)
            record["state_at_save"] = dict(state) if state is not None else None  # save_pretrained empties state
            record["none_off_main"] = gather_none(acc, state)
            directory = shared_directory(acc, lambda: _make(ckpt))
            record["shared_dir"] = str(directory)
            save_optimizer(acc, model, optimizer, directory)
            if acc.is_main_process:
                acc.unwrap_model(model).save_pretrained(directory, state_dict=state)
            acc.wait_for_everyone()
    record["state_final"] = gather_model_state(acc, model)

    if phase == "train":
        record["shards"] = sorted(p.name for p in (ckpt / OPTIMIZER_DIR).iterdir())
        from accelerate.utils import gather_object

        nats = validation_nats(acc, model, val_streams(rank), window=16, batch_size=2)
        nats_none = validation_nats(acc, model, val_streams(rank) if rank == 0 else None, window=16, batch_size=2)
        record["val"] = gather_object([nats])
        record["val_rank1_none"] = gather_object([nats_none])
        ids = torch.tensor([PROMPT])
        out_ids = generate(acc, model, ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS[rank],
                           do_sample=False, pad_token_id=0, eos_token_id=None)
        record["generated"] = gather_object([out_ids[0].tolist()])
        model.train()
        train_step(STEPS)  # training still works after the no-grad forwards
        record["state_after_eval"] = gather_model_state(acc, model)

    if acc.is_main_process:
        torch.save(record, out / f"{phase}.pt")
    acc.wait_for_everyone()
    acc.end_training()  # destroys the process group


def gather_none(acc, state) -> bool:
    from accelerate.utils import gather_object

    flags = gather_object([state is None])
    return flags == [False, True]


def _make(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1], Path(sys.argv[2]))
