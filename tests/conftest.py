"""Test-session setup.

``TRITON_INTERPRET=1`` is set before anything imports a Triton kernel module (they are imported lazily,
on the first ``backend="triton"`` call), so Triton kernels run on CPU tensors in the interpreter.
Automatic dispatch still picks the PyTorch path for CPU tensors.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tests use small tensors, for which intra-op threads cost more than they give (and CI has 2 cores).
import torch  # noqa: E402

torch.set_num_threads(1)


import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from text_helpers import documents  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run directory of a tiny spiking model trained for 40 steps by the real pipeline (``spikegpt train``):
    the final model and tokenizer, and one checkpoint (``checkpoint-20``). ~10 s."""
    from spikegpt.train.pretrain import main

    root = tmp_path_factory.mktemp("trained")
    data = root / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents(120, seed=0)), encoding="utf-8")
    out = root / "run"
    overrides = {
        "data": data, "output_dir": out, "tokenizer": "byte", "max_steps": 40, "batch_size": 8,
        "model.hidden_size": 32, "model.num_hidden_layers": 2, "model.context_length": 48, "lr": 3e-3,
        "min_lr": 1e-4, "warmup_steps": 5, "log_interval": 10, "val_fraction": 0.1, "val_max_tokens": 2000,
        "eval_interval": 0, "sample_interval": 0, "sample_max_new_tokens": 8, "save_interval": 20,
        "keep_checkpoints": 3, "progress": "false", "tensorboard": "false", "shuffle_buffer": 50,
    }
    argv = ["--config", str(REPO / "configs" / "tiny.yaml")]
    for k, v in overrides.items():
        argv += [f"--{k}", str(v)]
    final = main(argv)
    assert final["step"] == 40 and (out / "checkpoint-20").is_dir()
    return out
