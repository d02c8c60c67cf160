"""Tokenize a training recipe's corpus once, into a prepared directory that training memory-maps.

    spikegpt prepare --config configs/tiny.yaml --output data/tiny [--key value ...]
    python -m spikegpt.train.prepare --config configs/spikegpt-216m-owt2.yaml --output data/owt2 --num_threads 16
    spikegpt prepare --verify data/tiny                 # check every shard's sha256 against the manifest

The recipe is the training one (``spikegpt.train.config``): its ``data``, ``data_config``, ``data_split``,
``data_revision``, ``text_field`` and ``text_unit`` say what to read, ``tokenizer`` (with
``tokenizer_vocab_size`` and ``tokenizer_train_chars``) what to tokenize with, ``seed`` and ``val_fraction``
which documents are held out; any of them can be overridden (``--data corpus.jsonl --tokenizer byte``).
The tokenizer is built as the trainer builds it (``bpe`` / ``char`` trained on the training split), and is
saved in ``OUTPUT/tokenizer``. Documents are split by the content-keyed hash of
:func:`spikegpt.train.data.is_validation`, so preparing again gives the same split and the same files.
Training with ``--data OUTPUT`` then reads the tokens instead of the text.

Options: ``--output DIR`` (required; must not exist or be empty), ``--shard_tokens N`` (tokens per shard
file, default 2**28), ``--batch_docs N`` (documents per tokenizer call, default 1000), ``--num_threads N``
(tokenizer threads, default all cores), ``--progress true|false``. The output is written into a hidden
sibling directory and renamed into place when complete, so an interrupted run leaves nothing under the
output name. The last line printed is a JSON summary (documents and tokens per split, malformed records,
seconds, tokens/s). The format is described in :mod:`spikegpt.train.token_data` and ``docs/data.md``.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run by its path: keep the modules beside this file from shadowing others

import argparse
import contextlib
import hashlib
import itertools
import json
import logging
import secrets
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from spikegpt.train.config import TrainConfig, load_config
from spikegpt.train.token_data import (
    FORMAT,
    SPLITS,
    TOKENIZER_DIR,
    VERSION,
    open_token_data,
    shard_entry,
    token_dtype,
    tokenizer_hash,
    write_manifest,
)

logger = logging.getLogger(__name__)

DEFAULT_SHARD_TOKENS = 1 << 28
DEFAULT_BATCH_DOCS = 1000


class _SplitWriter:
    """Append documents of one split to shard files ``{split}-{k:05d}.bin`` (+ index arrays)."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.documents = self.tokens = self.characters = 0
        self._file = None

    def _open(self) -> None:
        self._stem = f"{self.split}-{len(self.shards):05d}"
        self._file = open(self.directory / f"{self._stem}.bin", "wb")
        self._hash = hashlib.sha256()
        self._offsets: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self._chars: list[np.ndarray] = []
        self._shard_len = 0

    def _close(self) -> None:
        self._file.close()
        self._file = None
        offsets, chars = np.concatenate(self._offsets), np.concatenate(self._chars)
        token_bytes = self._shard_len * self.dtype.itemsize
        self.shards.append(shard_entry(self.directory, self._stem, self._hash.hexdigest(), token_bytes, offsets,
                                       chars))

    def add(self, ids: list[list[int]], chars: list[int]) -> None:
        """Append documents (token ids, character counts); a shard closes at the first document that brings
        it to ``shard_tokens`` tokens (a document never straddles two shards)."""
        if not ids:
            return
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
        if flat.size and (flat.min() < 0 or flat.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token id {int(flat.max())} does not fit the {self.dtype} shards")
        flat = flat.astype(self.dtype.newbyteorder("<"))
        counts = np.asarray(chars, dtype=np.int64)
        self.documents += len(ids)
        self.tokens += int(lens.sum())
        self.characters += int(counts.sum())
        i, pos = 0, 0
        while i < len(ids):
            if self._file is None:
                self._open()
            cum = np.cumsum(lens[i:])
            take = min(len(cum), int(np.searchsorted(cum, self.shard_tokens - self._shard_len, side="left")) + 1)
            n_tok = int(cum[take - 1])
            raw = flat[pos : pos + n_tok].tobytes()
            self._file.write(raw)
            self._hash.update(raw)
            self._offsets.append(self._shard_len + cum[:take])
            self._chars.append(counts[i : i + take])
            self._shard_len += n_tok
            i, pos = i + take, pos + n_tok
            if self._shard_len >= self.shard_tokens:
                self._close()

    def finish(self) -> dict[str, Any]:
        if self._file is not None:
            self._close()
        return {"documents": self.documents, "tokens": self.tokens, "characters": self.characters,
                "shards": self.shards}


def build_prepare_tokenizer(config: TrainConfig, source):
    """The tokenizer the trainer would build for ``config`` (``bpe`` / ``char`` trained on the training
    split of ``source``; the one of ``init_from`` when it is set; else ``build_tokenizer(name)``)."""
    from spikegpt.train.data import training_texts
    from spikegpt.train.tokenization import BUILT_TOKENIZERS, build_tokenizer

    if config.init_from is not None and config.tokenizer in BUILT_TOKENIZERS and config.tokenizer != "byte":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(config.init_from)  # as the trainer: keep the model's vocabulary
    if config.tokenizer not in ("bpe", "char"):
        return build_tokenizer(config.tokenizer)
    texts = training_texts(source, config.seed, config.val_fraction, config.tokenizer_train_chars)
    return build_tokenizer(config.tokenizer, texts, config.tokenizer_vocab_size)


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(itertools.islice(texts, size)):
        yield batch


@contextlib.contextmanager
def _environment(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        what = "is a file" if not output.is_dir() else "exists and is not empty"
        raise FileExistsError(f"output {output} {what}: prepare writes a new directory (choose another --output "
                              "or remove it yourself)")


def prepare(config: TrainConfig, output: str | os.PathLike, *, shard_tokens: int = DEFAULT_SHARD_TOKENS,
            batch_docs: int = DEFAULT_BATCH_DOCS, num_threads: int | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Tokenize ``config``'s corpus into the directory ``output`` and return the summary (see the module
    docstring). ``FileExistsError`` for an existing non-empty ``output``; ``ValueError`` when the corpus has
    no training document or is already tokenized."""
    if shard_tokens < 1 or batch_docs < 1:
        raise ValueError(f"shard_tokens and batch_docs must be >= 1, got {shard_tokens} and {batch_docs}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    output = Path(output).expanduser()
    _check_output(output)
    if open_token_data(config.data) is not None:
        raise ValueError(f"data {config.data!r} is already tokenized: train on it directly")
    threads = str(num_threads or os.cpu_count() or 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        with _environment(TOKENIZERS_PARALLELISM="true", RAYON_NUM_THREADS=threads, RAYON_RS_NUM_CPUS=threads):
            summary = _prepare_into(config, tmp, shard_tokens, batch_docs, progress)
        _check_output(output)  # nobody wrote there meanwhile
        os.rename(tmp, output)  # atomic; replaces an empty directory of that name (POSIX rename)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours alone: created above
        raise
    summary["output"] = str(output)
    logger.info("prepared %s: %d training documents (%d tokens), %d validation documents (%d tokens) in %.1f s",
                output, summary["documents"]["train"], summary["tokens"]["train"], summary["documents"]["val"],
                summary["tokens"]["val"], summary["seconds"])
    return summary


def _prepare_into(config: TrainConfig, out: Path, shard_tokens: int, batch_docs: int,
                  progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from spikegpt.train.data import TextSource, is_validation

    t0 = time.perf_counter()
    source = TextSource(config.data, data_config=config.data_config, split=config.data_split,
                        revision=config.data_revision, text_field=config.text_field, text_unit=config.text_unit)
    tok = build_prepare_tokenizer(config, source)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {config.tokenizer!r} has no eos token to separate documents")
    tok.save_pretrained(out / TOKENIZER_DIR)
    t_tok = time.perf_counter() - t0
    vocab = len(tok)
    dtype = token_dtype(vocab)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        batch_encode = getattr(backend, "encode_batch_fast", backend.encode_batch)

        def encode(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in batch_encode(texts, add_special_tokens=False)]
    else:
        def encode(texts: list[str]) -> list[list[int]]:
            return [tok.encode(t, add_special_tokens=False) for t in texts]

    writers = {name: _SplitWriter(out, name, dtype, shard_tokens) for name in SPLITS}
    seed, fraction = config.seed, config.val_fraction
    bar = tqdm(desc="prepare", unit="doc", disable=None if progress else True, dynamic_ncols=True)

    def consume(texts: list[str], ids: list[list[int]]) -> None:
        held = [is_validation(t, seed, fraction) for t in texts]
        for name, flag in (("train", False), ("val", True)):
            sel = [i for i, h in enumerate(held) if h == flag]
            writers[name].add([ids[i] for i in sel], [len(texts[i]) for i in sel])
        bar.update(len(texts))

    t1 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-encode") as pool:
        pending = None  # the previous batch is encoded (Rust threads, GIL released) while the next one is read
        for texts in _batches(source.texts(), batch_docs):
            job = (texts, pool.submit(encode, texts))
            if pending is not None:
                consume(pending[0], pending[1].result())
            pending = job
        if pending is not None:
            consume(pending[0], pending[1].result())
    bar.close()
    splits = {name: w.finish() for name, w in writers.items()}
    if splits["train"]["documents"] == 0:
        raise ValueError(f"data {config.data!r} has no training documents ({splits['val']['documents']} held out "
                         f"with val_fraction={fraction}, {source.malformed} malformed records)")
    manifest = {
        "format": FORMAT, "version": VERSION, "tokenizer_hash": tokenizer_hash(tok), "tokenizer_dir": TOKENIZER_DIR,
        "tokenizer": _tokenizer_settings(config), "vocab_size": vocab, "eos_token_id": int(tok.eos_token_id),
        "token_dtype": dtype.name, "seed": seed, "val_fraction": fraction, "malformed_records": source.malformed,
        "shard_tokens": shard_tokens, "splits": splits,
        "source": {"data": config.data, "data_config": config.data_config, "data_split": config.data_split,
                   "data_revision": config.data_revision, "text_field": config.text_field,
                   "text_unit": config.text_unit},
    }
    write_manifest(out, manifest)
    seconds = time.perf_counter() - t0
    tokens = {name: s["tokens"] for name, s in splits.items()}
    encode_seconds = time.perf_counter() - t1
    return {
        "documents": {name: s["documents"] for name, s in splits.items()}, "tokens": tokens,
        "characters": {name: s["characters"] for name, s in splits.items()},
        "shards": {name: len(s["shards"]) for name, s in splits.items()},
        "malformed_records": source.malformed, "tokenizer": config.tokenizer, "vocab_size": vocab,
        "tokenizer_seconds": round(t_tok, 3), "seconds": round(seconds, 3),
        "tokens_per_s": round(sum(tokens.values()) / max(encode_seconds, 1e-9), 1),
    }


def _tokenizer_settings(config: TrainConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {"name": config.tokenizer}
    if config.tokenizer in ("bpe", "char"):
        settings.update(vocab_size=config.tokenizer_vocab_size, train_chars=config.tokenizer_train_chars,
                        init_from=config.init_from)
    return settings


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Check a prepared directory's (or binidx prefix's) files; the report, or ``ValueError`` naming a bad
    shard."""
    data = open_token_data(path)
    if data is None:
        raise FileNotFoundError(f"{path} is not pre-tokenized data (no manifest.json, no PREFIX.bin + PREFIX.idx)")
    t0 = time.perf_counter()
    report = data.verify()
    report.update({name: {"documents": data.split(name).num_documents, "tokens": data.split(name).num_tokens}
                   for name in ("train", "val")} if data.kind == "prepared" else {})
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (options above and recipe overrides), prepare (or verify), print the JSON summary line
    and return it. A missing ``--config`` / ``--output`` is a usage error (``SystemExit`` 2)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", help="the training recipe (YAML) whose data and tokenizer to prepare")
    parser.add_argument("--output", help="the directory to write (must not exist or be empty)")
    parser.add_argument("--shard_tokens", type=_positive, default=DEFAULT_SHARD_TOKENS,
                        help="tokens per shard file (default 2**28)")
    parser.add_argument("--batch_docs", type=_positive, default=DEFAULT_BATCH_DOCS,
                        help="documents per tokenizer call (default 1000)")
    parser.add_argument("--num_threads", type=_positive, default=None,
                        help="tokenizer threads (default: all cores)")
    parser.add_argument("--progress", type=_bool, default=None, help="progress bar (default: the recipe's)")
    parser.add_argument("--verify", metavar="DIR", help="only check the checksums of a prepared directory")
    args, overrides = parser.parse_known_args(argv)
    if args.verify is not None:
        if args.config or args.output or overrides:
            parser.error("--verify DIR takes no other options")
        summary = verify(args.verify)
    else:
        if args.config is None:
            parser.error("--config is required: the training recipe whose data to prepare (e.g. --config "
                         "configs/tiny.yaml)")
        if args.output is None:
            parser.error("--output is required: the directory to write the prepared data to")
        config = load_config(args.config, overrides)
        progress = config.progress if args.progress is None else args.progress
        summary = prepare(config, args.output, shard_tokens=args.shard_tokens, batch_docs=args.batch_docs,
                          num_threads=args.num_threads, progress=progress)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "datasets", "huggingface_hub", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    main()
