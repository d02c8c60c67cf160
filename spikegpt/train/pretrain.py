"""Pretrain a SpikeGPT model from a YAML recipe.

    spikegpt train --config configs/tiny.yaml [--key value ...]        # or: python -m spikegpt.train.pretrain ...
    torchrun --nproc_per_node 2 -m spikegpt.train.pretrain --config configs/tiny.yaml              # CPU ranks (gloo)
    accelerate launch --config_file configs/accelerate/ddp.yaml -m spikegpt.train.pretrain --config ...   # GPUs

``--config`` is required (``configs/tiny.yaml`` is the recipe for a first run on a CPU). Every setting of the
recipe can be overridden (``--max_steps 50 --output_dir runs/x --model.spiking false``; see
``spikegpt.train.config``). ``--resume`` continues the newest checkpoint of ``output_dir``. The last line
printed is one JSON object with the final metrics: step, train_loss, val_loss, val_ppl, val_bpc, tokens,
tokens_per_s (and a few more). Exit status 130 when stopped by Ctrl-C (after saving a checkpoint).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run by its path: keep the modules beside this file from shadowing others

import argparse
import json
import logging
from pathlib import Path

FIRST_RECIPE = "configs/tiny.yaml"


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


def shipped_recipes() -> list[str]:
    """The recipes in ``configs/`` of the working directory (as ``configs/NAME.yaml``), else in that of the
    source tree this package runs from (full paths); empty when neither has one."""
    cwd, tree = Path.cwd(), Path(__file__).resolve().parents[2]
    for root, shown in ((cwd, Path("configs")), (tree, tree / "configs")):
        found = sorted(p.name for p in (root / "configs").glob("*.yaml"))
        if found:
            return [str(shown / name) for name in found]
    return []


def missing_config_message() -> str:
    """The error for a command line without ``--config``: it names the recipes to choose from."""
    recipes = shipped_recipes()
    listed = f" (recipes: {', '.join(recipes)})" if recipes else ""
    return (f"--config is required: name a YAML recipe, e.g. --config {FIRST_RECIPE} for a first run on a CPU"
            f"{listed}; the defaults alone give the 216M model's shape (18 blocks x 768), meant for GPUs")


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (``--config PATH`` and overrides), train, print the final JSON line, return it.

    The process group of a multi-process run is torn down before returning. A missing ``--config`` is a
    usage error (``SystemExit`` 2, message on stderr); bad settings raise ``ValueError``.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"YAML recipe (required; {FIRST_RECIPE} for a first run on a CPU)")
    args, overrides = parser.parse_known_args(argv)
    if args.config is None:
        parser.error(missing_config_message())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from spikegpt.train.config import load_config
    from spikegpt.train.metrics import clean_record
    from spikegpt.train.trainer import teardown, train

    try:
        config = load_config(args.config, overrides)
        final = train(config)
        if int(os.environ.get("RANK", "0")) == 0:
            line = {k: v for k, v in final.items() if k != "sample"}
            if "sample" in final:
                print(f"\n--- sample at step {final['step']} ---\n{final['sample']}\n---", flush=True)
            print(json.dumps(clean_record(line), allow_nan=False), flush=True)
    finally:
        teardown()
    return final


if __name__ == "__main__":
    _setup_logging()
    result = main()
    sys.exit(130 if result.get("interrupted") else 0)
