"""Helpers of the training tests: a small corpus on disk and the overrides of a fast recipe."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "the a spike neuron fires when its membrane crosses the threshold and then resets to zero while the "
    "language model reads one token at a time carrying its state forward through every layer of the network"
).split()


def make_documents(n: int, seed: int = 0, min_words: int = 20, max_words: int = 60) -> list[str]:
    """``n`` distinct pseudo-English documents (document i starts with its number)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        docs.append(f"Document {i}: " + " ".join(words) + ".")
    return docs


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


TINY_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def tiny_run(data: Path | str, output_dir: Path, **extra) -> list[str]:
    """The command line of a fast run: ``--config configs/tiny.yaml`` and :func:`tiny_overrides`."""
    return ["--config", str(TINY_RECIPE), *tiny_overrides(data, output_dir, **extra)]


def tiny_overrides(data: Path | str, output_dir: Path, **extra) -> list[str]:
    """CLI overrides for a run that takes a second or two: 2 blocks x 32, byte tokenizer, context 32."""
    settings = {
        "data": str(data), "output_dir": str(output_dir), "tokenizer": "byte", "max_steps": 6, "batch_size": 4,
        "model.hidden_size": 32, "model.num_hidden_layers": 2, "model.context_length": 32, "model.dropout": 0.0,
        "lr": 3e-3, "min_lr": 1e-4, "warmup_steps": 2, "log_interval": 1, "val_fraction": 0.1,
        "val_max_tokens": 600, "eval_batch_size": 4, "sample_max_new_tokens": 8, "progress": False,
        "tensorboard": False, "keep_checkpoints": 2, "shuffle_buffer": 50,
    }
    settings.update(extra)
    out = []
    for k, v in settings.items():
        out += [f"--{k}", json.dumps(v) if isinstance(v, bool) else str(v)]
    return out


class HalfLossObjective:
    """A test objective, loaded by name ``train_helpers:HalfLossObjective``: half the LM loss, plus a metric."""

    def __init__(self, config, accelerator):
        self.scale = float(config.objective_args.get("scale", 0.5))

    def __call__(self, model, batch):
        ids = batch["input_ids"]
        loss = model(input_ids=ids, labels=ids).loss
        return self.scale * loss, {"full_loss": float(loss.detach())}
