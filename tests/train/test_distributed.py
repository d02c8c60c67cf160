"""Two CPU ranks through torchrun (gloo): disjoint data per rank, identical parameters after every step."""

import json
import os
import subprocess
import sys
from pathlib import Path

from train_helpers import tiny_run

REPO = Path(__file__).resolve().parents[2]


def _rank_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_cpu_ranks_with_torchrun(tmp_path, corpus_file):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "spikegpt.train.pretrain",
           *tiny_run(corpus_file, out, max_steps=4, batch_size=2, debug_rank_log=True, save_interval=2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = json.loads(proc.stdout.strip().splitlines()[-1])  # printed by rank 0 only
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
    import torch

    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["data"]) == 2 and len(state["rng"]) == 2
