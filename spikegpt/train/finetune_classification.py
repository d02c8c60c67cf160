"""Fine-tune a SpikeGPT model for sequence classification (SST-2, SST-5, MR, Subj, ...).

    python -m spikegpt.train.finetune_classification --model runs/tiny --data glue --data_config sst2 \\
        --text_field sentence --output_dir runs/sst2
    python -m spikegpt.train.finetune_classification --model DIR --data train.csv --eval_data dev.csv \\
        --output_dir runs/clf

``--model`` is a causal-LM or classifier directory or Hub id (the classification head starts afresh when the
checkpoint has none). ``--data`` is a Hub dataset name (with ``--data_config``, ``--train_split``,
``--eval_split``) or a local ``.csv`` / ``.tsv`` / ``.json`` / ``.jsonl`` file; without an evaluation set
(``--eval_data`` or ``--eval_split``), ``--val_fraction`` of the training rows is held out. Labels may be
integers or strings (mapped to ids in sorted order). Texts are padded on the right with an attention mask;
the model pools the last real token (see ``spikegpt.modeling_sequence_classification``).

The best model by evaluation accuracy is saved to ``--output_dir`` with its tokenizer. The last line printed
is one JSON object: train_loss, eval_loss, eval_accuracy, best_eval_accuracy, epochs, steps, train_examples,
eval_examples.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run by its path: keep the modules beside this file from shadowing others

import argparse
import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import torch

from spikegpt.train.schedule import warmup_linear

logger = logging.getLogger(__name__)

LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


def load_split(data: str, *, config: str | None = None, split: str = "train"):
    """A ``datasets.Dataset``: a local CSV/TSV/JSON(L) file (``split`` ignored) or a split of a Hub dataset."""
    import datasets

    p = Path(data).expanduser()
    suffix = p.suffix.lower()
    if suffix in LOCAL_FORMATS or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"data file not found: {data}")
        if suffix not in LOCAL_FORMATS:
            raise ValueError(f"unsupported data file {data}: use .csv, .tsv, .json or .jsonl")
        kwargs: dict[str, Any] = {"delimiter": "\t"} if suffix == ".tsv" else {}
        return datasets.load_dataset(LOCAL_FORMATS[suffix], data_files=str(p), split="train", **kwargs)
    return datasets.load_dataset(data, config, split=split)


def _column(ds, name: str | None, candidates: tuple[str, ...], what: str) -> str:
    cols = list(ds.column_names)
    if name is not None:
        if name not in cols:
            raise ValueError(f"{what} column {name!r} not in the data (columns: {cols})")
        return name
    for c in candidates:
        if c in cols:
            return c
    raise ValueError(f"no {what} column found (tried {list(candidates)}; columns: {cols}): pass --{what}_field")


def label_names(train_ds, label_field: str) -> list[str] | None:
    """Class names: the dataset's ClassLabel names, the sorted distinct string labels, or None for integers."""
    feature = train_ds.features.get(label_field)
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    values = train_ds[label_field]
    if values and isinstance(values[0], str):
        return sorted(set(values))
    return None


def encode_labels(values: list, names: list[str] | None, num_labels: int, where: str) -> list[int]:
    """Integer label ids; ``ValueError`` naming the first label that is not a class."""
    out = []
    for i, v in enumerate(values):
        if names is not None and isinstance(v, str):
            if v not in names:
                raise ValueError(f"{where} row {i}: label {v!r} is not one of {names}")
            out.append(names.index(v))
            continue
        try:
            iv = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"{where} row {i}: label {v!r} is not an integer or a class name") from None
        if not 0 <= iv < num_labels:
            raise ValueError(f"{where} row {i}: label {iv} outside [0, {num_labels})")
        out.append(iv)
    return out


def batches(enc: list[list[int]], labels: list[int], batch_size: int, pad_id: int, shuffle: bool, rng: random.Random):
    """Right-padded (input_ids, attention_mask, labels) batches."""
    order = list(range(len(enc)))
    if shuffle:
        rng.shuffle(order)
    for a in range(0, len(order), batch_size):
        idx = order[a : a + batch_size]
        T = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(enc[i])] = torch.tensor(enc[i])
            mask[r, : len(enc[i])] = 1
        yield ids, mask, torch.tensor([labels[i] for i in idx])


@torch.no_grad()
def evaluate(model, enc, labels, batch_size, pad_id, device) -> dict[str, float]:
    """Mean cross-entropy and accuracy over the evaluation set."""
    model.eval()
    total_loss, correct = 0.0, 0
    for ids, mask, y in batches(enc, labels, batch_size, pad_id, False, random.Random(0)):
        out = model(ids.to(device), attention_mask=mask.to(device), labels=y.to(device))
        total_loss += float(out.loss) * len(y)
        correct += int((out.logits.argmax(-1).cpu() == y).sum())
    n = max(len(labels), 1)
    return {"eval_loss": total_loss / n, "eval_accuracy": correct / n}


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Run the fine-tuning described by the parsed ``args`` (see ``main``) and return the final metrics."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    import spikegpt  # noqa: F401  (registers the Auto classes)
    from spikegpt import SpikeGPTForSequenceClassification

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train_ds = load_split(args.data, config=args.data_config, split=args.train_split)
    if args.eval_data:
        eval_ds = load_split(args.eval_data, config=args.data_config, split=args.eval_split or "validation")
    elif args.eval_split:
        eval_ds = load_split(args.data, config=args.data_config, split=args.eval_split)
    else:
        if not 0 < args.val_fraction < 1:
            raise ValueError(f"--val_fraction must lie in (0, 1) without an evaluation set, got {args.val_fraction}")
        parts = train_ds.train_test_split(test_size=args.val_fraction, seed=args.seed)
        train_ds, eval_ds = parts["train"], parts["test"]
    text_field = _column(train_ds, args.text_field, ("sentence", "text", "review", "content"), "text")
    label_field = _column(train_ds, args.label_field, ("label", "labels"), "label")
    if args.max_train_samples:
        train_ds = train_ds.select(range(min(args.max_train_samples, len(train_ds))))
    if args.max_eval_samples:
        eval_ds = eval_ds.select(range(min(args.max_eval_samples, len(eval_ds))))
    names = label_names(train_ds, label_field)
    if args.num_labels:
        num_labels = args.num_labels
    elif names is not None:
        num_labels = len(names)
    else:
        num_labels = int(max(int(v) for v in train_ds[label_field])) + 1
    if num_labels < 2:
        raise ValueError(f"need at least 2 classes, found {num_labels}")
    y_train = encode_labels(train_ds[label_field], names, num_labels, "training data")
    y_eval = encode_labels(eval_ds[label_field], names, num_labels, "evaluation data")

    tok = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
        tok.pad_token = tok.eos_token

    def encode(texts):
        out = []
        for t in texts:
            ids = tok(t if isinstance(t, str) else "", add_special_tokens=False)["input_ids"][: args.max_length]
            out.append(ids or [tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id])
        return out

    x_train, x_eval = encode(train_ds[text_field]), encode(eval_ds[text_field])
    if not x_train or not x_eval:
        raise ValueError(f"empty data: {len(x_train)} training and {len(x_eval)} evaluation examples")
    id2label = {i: (names[i] if names else str(i)) for i in range(num_labels)}
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = SpikeGPTForSequenceClassification.from_pretrained(
        args.model, num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()},
        pad_token_id=tok.pad_token_id, ignore_mismatched_sizes=args.reinit_head,
    ).to(device)
    model.config.problem_type = "single_label_classification"
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total_steps = args.max_steps or steps_per_epoch * args.epochs
    warmup = int(args.warmup_ratio * total_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_linear(s, warmup, total_steps))
    out_dir = Path(args.output_dir)
    logger.info("fine-tuning on %d examples (%d classes), evaluating on %d; %d steps", len(x_train), num_labels,
                len(x_eval), total_steps)
    step, best, epoch, losses = 0, -1.0, 0, []
    metrics: dict[str, Any] = {}
    bar = tqdm(total=total_steps, disable=args.no_progress, dynamic_ncols=True)
    while step < total_steps:
        epoch += 1
        model.train()
        for ids, mask, y in batches(x_train, y_train, args.batch_size, tok.pad_token_id, True, rng):
            loss = model(ids.to(device), attention_mask=mask.to(device), labels=y.to(device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if step >= total_steps:
                break
        metrics = evaluate(model, x_eval, y_eval, args.eval_batch_size, tok.pad_token_id, device)
        logger.info("epoch %d step %d: train loss %.4f, eval loss %.4f, accuracy %.4f", epoch, step,
                    sum(losses[-steps_per_epoch:]) / len(losses[-steps_per_epoch:]), metrics["eval_loss"],
                    metrics["eval_accuracy"])
        if metrics["eval_accuracy"] > best:
            best = metrics["eval_accuracy"]
            model.save_pretrained(out_dir)
            tok.save_pretrained(out_dir)
    bar.close()
    result = {
        "train_loss": sum(losses[-steps_per_epoch:]) / len(losses[-steps_per_epoch:]),
        "first_train_loss": losses[0],
        **metrics,
        "best_eval_accuracy": best,
        "epochs": epoch,
        "steps": step,
        "train_examples": len(x_train),
        "eval_examples": len(x_eval),
        "output_dir": str(out_dir),
    }
    (out_dir / "finetune_results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="causal-LM or classifier directory, or Hub id")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the model's own)")
    p.add_argument("--data", required=True, help="Hub dataset name or local .csv/.tsv/.json/.jsonl file")
    p.add_argument("--data_config", default=None, help="Hub dataset configuration (e.g. sst2 of glue)")
    p.add_argument("--train_split", default="train")
    p.add_argument("--eval_data", default=None, help="local evaluation file")
    p.add_argument("--eval_split", default=None, help="Hub split to evaluate on (e.g. validation)")
    p.add_argument("--val_fraction", type=float, default=0.1, help="held out when there is no evaluation set")
    p.add_argument("--text_field", default=None, help="text column (default: sentence, text, review or content)")
    p.add_argument("--label_field", default=None, help="label column (default: label or labels)")
    p.add_argument("--num_labels", type=int, default=None, help="number of classes (default: from the data)")
    p.add_argument("--max_length", type=int, default=128, help="tokens kept per text")
    p.add_argument("--max_train_samples", type=int, default=0)
    p.add_argument("--max_eval_samples", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max_steps", type=int, default=0, help="stop after this many steps (0: --epochs)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--warmup_ratio", type=float, default=0.06)
    p.add_argument("--grad_clip", type=float, default=1.0)
    p.add_argument("--reinit_head", action="store_true", help="start a classifier head of another size afresh")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--output_dir", default="runs/classifier")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: parse ``argv``, fine-tune, print one JSON line and return it."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = finetune(args)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    main()
