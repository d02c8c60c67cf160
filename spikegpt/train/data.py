"""Text data for pretraining: documents from the Hub, local files or the built-in corpus, packed into blocks.

Sources (the ``data`` setting):

- ``builtin:python-docs``: CPython's documentation prose (see :mod:`spikegpt.train.builtin_corpus`).
- a local file, directory or glob of ``.txt``, ``.jsonl`` / ``.json`` (one JSON object per line, also
  compressed as ``.gz``, ``.zst``, ``.bz2`` or ``.xz``) or ``.parquet`` files. A file with another
  extension is read as text. Line-based files go through a tolerant reader wrapped in a
  ``datasets.IterableDataset`` (``datasets``' own json builder aborts the whole file at the first bad line);
  parquet goes through ``datasets.load_dataset("parquet", streaming=True)``.
- anything else is a Hugging Face Hub dataset name, streamed with ``datasets.load_dataset(..., streaming=True)``.

A malformed record (bad JSON, bytes that are not UTF-8, a missing, non-string or empty text) is skipped and
counted; the first one is reported in one warning. A missing file or dataset is an error that names it.

Every document is prefixed with the end-of-text token and the stream is cut into blocks of ``block_len``
tokens; consecutive blocks share one token, so each token of the stream is a prediction target exactly once
(the model shifts labels inside). A document is held out for validation when a hash of its text keyed by
the seed falls below ``val_fraction``: the split is fixed by the seed, does not depend on the order in which
documents arrive, and puts exact duplicates on the same side.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from spikegpt.train.builtin_corpus import BUILTIN_PREFIX, builtin_documents

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

LINE_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".txt": "text", ".text": "text"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
DATA_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".txt", ".text", ".parquet")


def _split_ext(path: str) -> tuple[str, str | None]:
    """``'a.jsonl.zst' -> ('jsonl', 'zstd')``; unknown extensions read as text."""
    p = Path(path.lower())
    compression = COMPRESSIONS.get(p.suffix)
    if compression is not None:
        p = p.with_suffix("")
    if p.suffix == ".parquet":
        if compression is not None:
            raise ValueError(f"compressed parquet files are not supported: {path}")
        return "parquet", None
    return LINE_FORMATS.get(p.suffix, "text"), compression


def _open_binary(path: str, compression: str | None):
    if compression is None:
        return open(path, "rb")
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    import zstandard  # needed by .zst files only (the OpenWebText2 format)

    # zstandard's reader cannot iterate lines itself: buffer it
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))


def _record(text: Any, where: str, text_field: str) -> dict[str, str | None]:
    if not isinstance(text, str):
        kind = "missing" if text is None else f"a {type(text).__name__}, not a string"
        return {"text": None, "error": f"{where}: field {text_field!r} is {kind}"}
    if not text.strip():
        return {"text": None, "error": f"{where}: empty text"}
    return {"text": text, "error": None}


def _read_line_files(files: list[str], text_field: str, text_unit: str) -> Iterator[dict[str, str | None]]:
    """Generator behind ``datasets.IterableDataset.from_generator``: ``{"text", "error"}`` per record."""
    for path in files:
        fmt, compression = _split_ext(path)
        with _open_binary(path, compression) as f:
            if fmt == "jsonl":
                for lineno, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue  # blank separator lines are not records
                    where = f"{path}:{lineno}"
                    try:
                        obj = json.loads(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        yield {"text": None, "error": f"{where}: bytes that are not UTF-8"}
                        continue
                    except json.JSONDecodeError as e:
                        yield {"text": None, "error": f"{where}: bad JSON ({e.msg})"}
                        continue
                    if not isinstance(obj, dict):
                        yield {"text": None, "error": f"{where}: a JSON {type(obj).__name__}, not an object"}
                        continue
                    yield _record(obj.get(text_field), where, text_field)
            else:
                yield from _read_text_units(f, path, text_unit)


def _read_text_units(lines: Iterator[bytes], path: str, text_unit: str) -> Iterator[dict[str, str | None]]:
    """Documents of a text file: paragraphs (split at blank lines), lines, or the whole file."""

    def decode(chunk: list[bytes], where: str) -> dict[str, str | None]:
        try:
            text = b"".join(chunk).decode("utf-8").replace("\r\n", "\n").strip("\n")
        except UnicodeDecodeError:
            return {"text": None, "error": f"{where}: bytes that are not UTF-8"}
        return _record(text, where, "text")

    chunk: list[bytes] = []
    start = 1
    for lineno, raw in enumerate(lines, 1):
        blank = not raw.strip()
        if text_unit == "line":
            if not blank:
                yield decode([raw], f"{path}:{lineno}")
        elif text_unit == "paragraph" and blank:
            if chunk:
                yield decode(chunk, f"{path}:{start}")
            chunk = []
        else:
            if not chunk:
                start = lineno
            chunk.append(raw)
    if chunk:
        yield decode(chunk, f"{path}:{start}" if text_unit == "paragraph" else path)


def resolve_local_files(spec: str) -> list[str] | None:
    """The data files that ``spec`` names, or None when ``spec`` is not a local path (then a Hub name).

    Raises ``FileNotFoundError`` naming ``spec`` when it looks like a path (starts with ``/ . ~``, has a data
    extension or glob characters) but nothing is there, or when a directory holds no data files.
    """
    expanded = os.path.expanduser(spec)
    if any(c in spec for c in "*?["):
        files = sorted(f for f in glob.glob(expanded, recursive=True) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"no data files match {spec!r}")
        return files
    if os.path.isdir(expanded):
        files = sorted(
            str(p) for p in Path(expanded).rglob("*")
            if p.is_file() and any(s in DATA_EXTENSIONS for s in p.suffixes)
        )
        if not files:
            raise FileNotFoundError(f"data directory {spec!r} holds no {'/'.join(DATA_EXTENSIONS)} files")
        return files
    if os.path.isfile(expanded):
        return [expanded]
    lowered = spec.lower()
    looks_local = (
        spec.startswith(("/", "./", "../", "~"))
        or any(ext in lowered for ext in DATA_EXTENSIONS)
        or Path(lowered).suffix in COMPRESSIONS
    )
    if looks_local:
        raise FileNotFoundError(f"data file not found: {spec}")
    return None


@dataclass
class TextSource:
    """A corpus of documents, read through ``datasets``, with malformed records skipped and counted.

    ``spec`` is the ``data`` setting (see the module docstring). Iterate with :meth:`texts`.
    """

    spec: str
    data_config: str | None = None
    split: str = "train"
    revision: str | None = None
    text_field: str = "text"
    text_unit: str = "paragraph"
    malformed: int = 0  # malformed records counted in the longest pass so far
    _warned: bool = field(default=False, repr=False)
    _dataset: datasets.IterableDataset | None = field(default=None, repr=False)
    _line_records: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._dataset = self._load()

    def _load(self) -> datasets.IterableDataset:
        import datasets  # imported here: builtin_text and the helpers above work without it

        spec = self.spec
        if spec.startswith(BUILTIN_PREFIX):
            docs = builtin_documents(spec[len(BUILTIN_PREFIX):])
            return datasets.Dataset.from_dict({self.text_field: list(docs)}).to_iterable_dataset()
        files = resolve_local_files(spec)
        if files is not None:
            formats = {_split_ext(f)[0] for f in files}
            if len(formats) > 1:
                raise ValueError(f"data {spec!r} mixes file formats {sorted(formats)}; use one format")
            if formats == {"parquet"}:
                return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
            self._line_records = True
            return datasets.IterableDataset.from_generator(
                _read_line_files,
                gen_kwargs={"files": files, "text_field": self.text_field, "text_unit": self.text_unit},
                features=datasets.Features({"text": datasets.Value("string"), "error": datasets.Value("string")}),
            )
        try:
            return datasets.load_dataset(
                spec, self.data_config, split=self.split, streaming=True, revision=self.revision
            )
        except Exception as e:  # offline, unknown name, gated, bad config: say which dataset failed
            raise FileNotFoundError(
                f"dataset {spec!r} could not be loaded from the Hugging Face Hub "
                f"(config={self.data_config!r}, split={self.split!r}): {type(e).__name__}: {e}. "
                "For local data give an existing file, directory or glob."
            ) from e

    def _texts_of(self, records: Iterator[dict[str, Any]]) -> Iterator[str]:
        count = 0
        for i, rec in enumerate(records):
            if self._line_records:  # the tolerant reader has validated the record already
                text, error = rec["text"], rec["error"]
            else:
                if i == 0 and self.text_field not in rec:
                    raise ValueError(
                        f"dataset {self.spec!r} has no field {self.text_field!r}; its fields are "
                        f"{sorted(rec)} (set text_field)"
                    )
                checked = _record(rec.get(self.text_field), f"{self.spec} record {i}", self.text_field)
                text, error = checked["text"], checked["error"]
            if error is not None or text is None:
                count += 1
                self.malformed = max(self.malformed, count)
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "skipping malformed records in %s (first: %s); the rest are skipped silently and "
                        "counted (malformed_records in the metrics)", self.spec, error,
                    )
                continue
            yield text

    def texts(self, shuffle_seed: int | None = None, buffer_size: int = 10000, epoch: int = 0) -> Iterator[str]:
        """The valid documents, in stored order or shuffled (``datasets`` shuffle buffer, seed and epoch)."""
        ds = self._dataset
        if shuffle_seed is not None:
            ds = ds.shuffle(seed=shuffle_seed, buffer_size=buffer_size)
            ds.set_epoch(epoch)
        return self._texts_of(iter(ds))


def builtin_text(spec: str) -> str:
    """The whole text of the built-in corpus ``spec`` (``builtin:python-docs``): its documents joined by blank
    lines. ``ValueError`` names a ``spec`` that is not a built-in corpus."""
    if not spec.startswith(BUILTIN_PREFIX):
        raise ValueError(f"{spec!r} is not a built-in corpus (those are named {BUILTIN_PREFIX}NAME)")
    return "\n\n".join(builtin_documents(spec[len(BUILTIN_PREFIX):]))


def is_validation(text: str, seed: int, fraction: float) -> bool:
    """True when the document ``text`` belongs to the held-out split (a keyed hash below ``fraction``)."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8,
                             key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < fraction


def training_texts(source: TextSource, seed: int, val_fraction: float, max_chars: int) -> Iterator[str]:
    """Training-split documents in stored order, up to ``max_chars`` characters (tokenizer training)."""
    total = 0
    for text in source.texts():
        if is_validation(text, seed, val_fraction):
            continue
        yield text
        total += len(text)
        if total >= max_chars:
            return


def validation_documents(
    source: TextSource, seed: int, val_fraction: float, max_tokens: int, encode: Callable[[str], list[int]]
) -> list[tuple[str, list[int]]]:
    """The held-out documents as ``(text, token ids)``, whole documents in stored order until ``max_tokens``
    tokens (0 = all of them)."""
    docs: list[tuple[str, list[int]]] = []
    if val_fraction <= 0:
        return docs
    total = 0
    for text in source.texts():
        if not is_validation(text, seed, val_fraction):
            continue
        ids = encode(text)
        docs.append((text, ids))
        total += len(ids)
        if max_tokens and total >= max_tokens:
            break
    return docs


@dataclass
class DataPosition:
    """Where a rank's training stream stands: the epoch, the number of training documents of that epoch
    consumed by all ranks together, and the tokens read but not yet emitted in a block."""

    epoch: int = 0
    docs: int = 0
    buffer: list[int] = field(default_factory=list)


class BlockPacker:
    """Pack the training split into ``(n, block_len)`` token blocks for one rank, resumably.

    Documents of the shuffled training stream are dealt round-robin to the ``world_size`` ranks (document i
    goes to rank ``i % world_size``), so ranks read disjoint data. Each document becomes ``[eot] + tokens``;
    blocks are cut from the concatenation with a one-token overlap. When the data runs out a new epoch starts
    with a new shuffle. ``state_dict()`` after a batch, given to ``load_state_dict`` of a fresh packer,
    continues with exactly the blocks the first packer would have produced next.
    """

    def __init__(
        self,
        source: TextSource,
        encode: Callable[[str], list[int]],
        eot_id: int,
        block_len: int,
        *,
        seed: int = 0,
        val_fraction: float = 0.0,
        shuffle_buffer: int = 10000,
        rank: int = 0,
        world_size: int = 1,
    ):
        if block_len < 2:
            raise ValueError(f"block_len must be >= 2, got {block_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.source, self.encode, self.eot_id, self.block_len = source, encode, eot_id, block_len
        self.seed, self.val_fraction, self.shuffle_buffer = seed, val_fraction, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.position = DataPosition()
        self._start = 0  # tokens of position.buffer before this offset have been emitted
        self._docs: Iterator[tuple[int, int, str]] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The position after the last block handed out (plain data: ints and a list of ints)."""
        pos = self.position
        return {"epoch": pos.epoch, "docs": pos.docs, "buffer": pos.buffer[self._start :]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (of a packer over the same data, tokenizer, seed and ranks)."""
        self.position = DataPosition(int(state["epoch"]), int(state["docs"]), [int(t) for t in state["buffer"]])
        self._start = 0
        self._docs = None

    def _doc_stream(self, epoch: int, skip: int) -> Iterator[tuple[int, int, str]]:
        """Yield ``(epoch, docs consumed after this one, text)`` for this rank, from ``(epoch, skip)`` on."""
        while True:
            index = 0
            mine = 0
            for text in self.source.texts(self.seed, self.shuffle_buffer, epoch):
                if is_validation(text, self.seed, self.val_fraction):
                    continue
                index += 1
                if index <= skip:
                    continue
                if (index - 1) % self.world_size == self.rank:
                    mine += 1
                    yield epoch, index, text
            if mine == 0 and skip == 0:
                raise ValueError(
                    f"no training documents for rank {self.rank} of {self.world_size} in data "
                    f"{self.source.spec!r} ({index} training documents in all, val_fraction={self.val_fraction})"
                )
            epoch, skip = epoch + 1, 0

    def next_block(self) -> list[int]:
        """The next ``block_len`` tokens of this rank's stream."""
        pos = self.position
        while len(pos.buffer) - self._start < self.block_len:
            if self._docs is None:
                self._docs = self._doc_stream(pos.epoch, pos.docs)
            epoch, index, text = next(self._docs)
            if self._start:
                del pos.buffer[: self._start]
                self._start = 0
            pos.buffer.append(self.eot_id)
            pos.buffer.extend(self.encode(text))
            pos.epoch, pos.docs = epoch, index
        block = pos.buffer[self._start : self._start + self.block_len]
        self._start += self.block_len - 1
        if self._start > 1 << 16 and self._start > len(pos.buffer) // 2:
            del pos.buffer[: self._start]
            self._start = 0
        return block

    def next_batch(self, n: int) -> torch.Tensor:
        """``(n, block_len)`` long tensor of the next ``n`` blocks."""
        return torch.tensor([self.next_block() for _ in range(n)], dtype=torch.long)
