"""Two CPU ranks through torchrun (gloo): DDP (disjoint data per rank, identical parameters after every step)
and FSDP2 through the trainer (the same training as DDP, a sharded checkpoint that resumes exactly)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import make_documents, tiny_run, write_jsonl

from spikegpt.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def _rank_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


SETTINGS = dict(max_steps=4, batch_size=2, save_interval=2, eps=1e-5)  # eps: see test_parallel.py


def _torchrun(cwd, corpus, out, **extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "spikegpt.train.pretrain", *tiny_run(corpus, out, **{**SETTINGS, **extra})]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # printed by rank 0 only


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    corpus = write_jsonl(root / "corpus.jsonl", make_documents(80))
    out = root / "ddp"
    return corpus, out, _torchrun(root, corpus, out, debug_rank_log=True)


def test_two_cpu_ranks_with_torchrun(ddp_run):
    corpus, out, final = ddp_run
    assert final["step"] == 4 and final["tokens"] == 4 * 2 * 2 * 31  # steps x ranks x batch x new tokens
    logs = [_rank_log(out / f"rank-{r}.jsonl") for r in range(2)]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    for a, b in zip(*logs):
        assert a["params"] == b["params"]  # identical parameters after every step
    rows = [{h for rec in log for h in rec["rows"]} for log in logs]
    assert len(rows[0]) == len(rows[1]) == 4 * 2 and not rows[0] & rows[1]  # each rank its own blocks
    params = {rec["params"] for rec in logs[0]}
    assert len(params) == 4  # the parameters did move at every step
    ckpt = out / "checkpoint-4"
    assert (ckpt / "trainer_state.pt").is_file() and (out / "model.safetensors").is_file()
    assert (ckpt / "optimizer.pt").is_file()  # replicated: one copy, written by rank 0
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["data"]) == 2 and len(state["rng"]) == 2


def test_fsdp_trains_as_ddp_and_its_sharded_checkpoint_resumes_exactly(ddp_run, tmp_path):
    """parallelism fsdp on the same 2 ranks and data: the DDP run's weights within fp32 rounding (the
    gradient reduction sums in another order); the checkpoint holds the optimizer in one shard per rank, and a
    new run resumed from it ends with the uninterrupted run's weights exactly."""
    corpus, ddp_out, ddp_final = ddp_run
    out = tmp_path / "fsdp"
    final = _torchrun(tmp_path, corpus, out, parallelism="fsdp")
    assert final["step"] == 4 and final["tokens"] == ddp_final["tokens"]
    a, b = load_file(ddp_out / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    assert final["val_loss"] == pytest.approx(ddp_final["val_loss"], rel=1e-5)
    ckpt = out / "checkpoint-2"
    shards = sorted(p.name for p in (ckpt / "optimizer").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"] and not (ckpt / "optimizer.pt").exists()
    assert len(read_metrics(out / "metrics.jsonl", "sample")) == 1  # generated on every rank, logged once

    resumed_out = tmp_path / "resumed"
    resumed = _torchrun(tmp_path, corpus, resumed_out, parallelism="fsdp", resume=str(out / "checkpoint-2"))
    assert resumed["step"] == 4
    c = load_file(resumed_out / "model.safetensors")
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert resumed["val_loss"] == final["val_loss"]
