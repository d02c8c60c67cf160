"""Evaluate a causal LM on text: loss, perplexity and bits per character over whole documents.

    spikegpt eval --model runs/tiny --data builtin:python-docs --split val     # or: python -m spikegpt.train.evaluate
    spikegpt eval --model DIR_OR_HUB_ID --data wikitext --data_config wikitext-103-raw-v1 --data_split test

``--model`` is a model directory, a training run directory (its final model, else its newest checkpoint) or
a Hub id. ``--data`` takes what the ``data`` setting of a recipe takes. Long documents are evaluated in
windows of ``--window`` tokens that carry the recurrent state (no context limit); see
``spikegpt.train.evaluation`` for how documents become streams and what counts as a character.
``--split val`` / ``train`` keeps the held-out / training documents of a run (seed and val_fraction from the
run's ``train_config.yaml``, or ``--seed`` / ``--val_fraction``); the default ``all`` keeps every document.
Prints one JSON line: loss, ppl, bpc, tokens, characters, documents, malformed_records.
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
from typing import Any

import torch
import yaml

from spikegpt.train.checkpoint import resolve_model_path

logger = logging.getLogger(__name__)


def _run_settings(model_path: str) -> dict[str, Any]:
    """seed / val_fraction of the run that produced ``model_path`` (from its train_config.yaml), if any."""
    for d in (Path(model_path), Path(model_path).parent):
        f = d / "train_config.yaml"
        if f.is_file():
            return yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    return {}


def evaluate_model(
    model: str,
    data: str,
    *,
    split: str = "all",
    data_config: str | None = None,
    data_split: str = "train",
    text_field: str = "text",
    text_unit: str = "paragraph",
    tokenizer: str | None = None,
    window: int | None = None,
    batch_size: int = 8,
    max_docs: int = 0,
    max_tokens: int = 0,
    seed: int | None = None,
    val_fraction: float | None = None,
    device: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
) -> dict[str, Any]:
    """Load ``model`` and ``data`` and return ``{"loss", "ppl", "bpc", "tokens", "characters", "documents",
    "malformed_records", ...}`` over the selected documents (see the module docstring)."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    import spikegpt  # noqa: F401  (registers the Auto classes)
    from spikegpt.train.data import TextSource, is_validation
    from spikegpt.train.evaluation import EvalResult, build_streams, stream_nats
    from spikegpt.train.tokenization import encoder, load_tokenizer

    if split not in ("all", "val", "train"):
        raise ValueError(f"split must be all, val or train, got {split!r}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    path = resolve_model_path(model)
    tok = load_tokenizer(tokenizer or path)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(dev).eval()
    window = window or int(getattr(lm.config, "context_length", 1024))
    if split != "all":
        run = _run_settings(path)
        seed = run.get("seed", 0) if seed is None else seed
        val_fraction = run.get("val_fraction", 0.05) if val_fraction is None else val_fraction
    source = TextSource(data, data_config=data_config, split=data_split, text_field=text_field, text_unit=text_unit)
    encode = encoder(tok)
    docs = []
    total = 0
    for text in source.texts():
        if split != "all" and is_validation(text, seed, val_fraction) != (split == "val"):
            continue
        ids = encode(text)
        docs.append((text, ids))
        total += len(ids)
        if (max_docs and len(docs) >= max_docs) or (max_tokens and total >= max_tokens):
            break
    if not docs:
        raise ValueError(f"no documents to evaluate in {data!r} (split={split!r})")
    streams = build_streams(docs, int(tok.eos_token_id), batch_size)
    bar = tqdm(total=sum(len(s) - 1 for s in streams.streams), unit="tok", disable=not progress, dynamic_ncols=True)
    nats, count = stream_nats(lm, streams.streams, window, batch_size, device=dev, progress=bar)
    bar.close()
    result = EvalResult(nats=nats, tokens=count, characters=streams.characters, documents=streams.documents)
    return {
        **result.as_dict(),
        "malformed_records": source.malformed, "model": path, "data": data, "split": split, "window": window,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: parse ``argv``, evaluate, print one JSON line and return it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory, run directory or Hub id")
    p.add_argument("--data", required=True, help="Hub dataset, local file/directory/glob, or builtin:python-docs")
    p.add_argument("--split", default="all", choices=["all", "val", "train"], help="documents of a run's split")
    p.add_argument("--data_config", default=None, help="Hub dataset configuration")
    p.add_argument("--data_split", default="train", help="Hub dataset split to read")
    p.add_argument("--text_field", default="text")
    p.add_argument("--text_unit", default="paragraph", choices=["paragraph", "line", "document"])
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the model's own)")
    p.add_argument("--window", type=int, default=None, help="tokens per forward (default: context_length)")
    p.add_argument("--batch_size", type=int, default=8, help="streams evaluated side by side")
    p.add_argument("--max_docs", type=int, default=0, help="stop after this many documents (0 = all)")
    p.add_argument("--max_tokens", type=int, default=0, help="stop after the document that reaches this many tokens")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--val_fraction", type=float, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    kwargs = vars(a)
    kwargs["progress"] = not kwargs.pop("no_progress")
    result = evaluate_model(kwargs.pop("model"), kwargs.pop("data"), **kwargs)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
