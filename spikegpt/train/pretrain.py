"""Pretrain a SpikeGPT model from a YAML recipe.

    python train/pretrain.py --config configs/tiny.yaml [--key value ...]
    torchrun --nproc_per_node 2 train/pretrain.py --config configs/tiny.yaml          # CPU ranks (gloo)
    accelerate launch --config_file configs/accelerate/ddp.yaml train/pretrain.py --config ...   # GPUs

Every setting of the recipe can be overridden (``--max_steps 50 --output_dir runs/x --model.spiking false``;
see ``spikegpt.train.config``). ``--resume`` continues the newest checkpoint of ``output_dir``. The last line
printed is one JSON object with the final metrics: step, train_loss, val_loss, val_ppl, val_bpc, tokens,
tokens_per_s (and a few more). Exit status 130 when stopped by Ctrl-C (after saving a checkpoint).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # train/ is on the path when run as a script: keep its modules from shadowing others

import argparse
import json
import logging


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s" if "RANK" in os.environ
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "datasets", "huggingface_hub", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (``--config PATH`` and overrides), train, print the final JSON line, return it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (configs/*.yaml); defaults only when omitted")
    args, overrides = parser.parse_known_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from spikegpt.train.config import load_config
    from spikegpt.train.trainer import train

    config = load_config(args.config, overrides)
    final = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        line = {k: v for k, v in final.items() if k != "sample"}
        if "sample" in final:
            print(f"\n--- sample at step {final['step']} ---\n{final['sample']}\n---", flush=True)
        print(json.dumps(line), flush=True)
    return final


if __name__ == "__main__":
    _setup_logging()
    from spikegpt.train.trainer import teardown

    try:
        result = main()
    finally:
        teardown()
    sys.exit(130 if result.get("interrupted") else 0)
