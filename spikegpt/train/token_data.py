"""Pre-tokenized pretraining data: prepared directories, Megatron ``binidx`` files, and a resumable packer.

Two on-disk forms are read, both memory-mapped (nothing is loaded up front):

**A prepared directory** (written by ``spikegpt prepare``, see :mod:`spikegpt.train.prepare`)::

    DIR/manifest.json                  format "spikegpt-tokens", version 1 (below)
    DIR/tokenizer/                     the tokenizer, save_pretrained (AutoTokenizer.from_pretrained(DIR/tokenizer))
    DIR/{split}-{k:05d}.bin            shard k of split "train" / "val": the raw token ids of its documents,
                                       end to end, little-endian uint16 (vocab <= 65536) or uint32, no separators
    DIR/{split}-{k:05d}.offsets.npy    int64 [documents + 1]: document j of the shard is tokens[o[j]:o[j+1]]
    DIR/{split}-{k:05d}.chars.npy      int64 [documents]: the characters (code points) of each document's text

``manifest.json`` holds ``format``, ``version``, ``tokenizer_hash`` (:func:`tokenizer_hash`), ``vocab_size``,
``eos_token_id``, ``token_dtype``, ``tokenizer_dir`` (``"tokenizer"``, or null for synthetic data),
``tokenizer`` (the recipe's tokenizer settings), ``source`` (the data settings it was read from), ``seed``
and ``val_fraction`` (the content-keyed split of :func:`spikegpt.train.data.is_validation`),
``malformed_records``, ``shard_tokens`` and ``splits``: per split ``documents``, ``tokens``, ``characters``
and ``shards``, a list of ``{"documents", "tokens", "characters", "files": {"tokens" | "offsets" |
"characters": {"name", "bytes", "sha256"}}}``. A document never straddles two shards; documents are stored
without the end-of-text token (the packer adds it). Opening checks every file's size against the manifest
(O(number of shards)); :meth:`TokenData.verify` checks the sha256 of every file.

**A Megatron indexed dataset** ("binidx", ``MMapIndexedDataset`` of Megatron-LM / GPT-NeoX, read by the
original SpikeGPT and RWKV-LM): ``PREFIX.bin`` holds the raw tokens, ``PREFIX.idx`` is the header
``b"MMIDIDX\\x00\\x00"``, uint64 version 1, uint8 dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
8 uint16; 6 and 7 are floating-point codes, refused here), uint64 number of sequences n, uint64 length m of
the document index, then int32 sizes[n] (tokens per sequence), int64 pointers[n] (byte offsets into .bin)
and int64 doc_idx[m], all little-endian. Each sequence is one document here (GPT-NeoX's preprocessing ends
each with its end-of-document token, so the packer adds no separator: ``eot_id=None``). There is no stored
split: a sequence is held out when a keyed hash of its index (splitmix64 of ``index ^ key(seed)``) falls
below ``val_fraction``, computed vectorised in numpy, fixed by the seed and independent of the files' order
of reading. binidx data has no tokenizer and no character counts.

:class:`TokenPacker` cuts a split into training blocks with the interface of
:class:`spikegpt.train.data.BlockPacker`, and resumes exactly from a state of a few integers.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "spikegpt-tokens"
VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val")

BINIDX_MAGIC = b"MMIDIDX\x00\x00"
BINIDX_VERSION = 1
# dtype codes of Megatron's MMapIndexedDataset (the integer ones; 6 and 7 are floating point)
BINIDX_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
BINIDX_FLOAT_CODES = (6, 7)
_BINIDX_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, doc_idx length

_HASH_CHUNK = 1 << 24


# ------------------------------------------------------------------------------------------------- helpers


def token_dtype(vocab_size: int) -> np.dtype:
    """The storage dtype of token ids below ``vocab_size``: uint16 up to 65536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of a tokenizer's canonical JSON: ``backend_tokenizer.to_str()`` (or a ``tokenizers.Tokenizer``'s
    own ``to_str()``) parsed, without its ``truncation`` and ``padding`` settings (which transformers changes
    per call), dumped with sorted keys. Equal for a tokenizer and its ``save_pretrained`` reload."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None) or tokenizer
    if not hasattr(backend, "to_str"):
        raise TypeError(f"{type(tokenizer).__name__} has no backend tokenizer to hash")
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _map(path: Path, dtype: np.dtype, count: int | None = None) -> np.ndarray:
    """A read-only memory map of a raw array file as a plain ndarray (empty files give an empty array)."""
    if path.stat().st_size == 0:
        return np.empty(0, dtype=dtype)
    return np.asarray(np.memmap(path, dtype=dtype, mode="r", shape=count))


def _load_npy(path: Path) -> np.ndarray:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    return np.asarray(arr)


_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of ``x + golden`` (uint64 arithmetic modulo 2**64), elementwise."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def index_validation_mask(n: int, seed: int, fraction: float, chunk: int = 1 << 16) -> np.ndarray:
    """Boolean ``[n]``: True where document index i is held out. ``splitmix64(i ^ key) / 2**64 < fraction``
    with ``key = splitmix64(seed)``: stable for a seed, independent of n (a document keeps its side when
    more are appended), about ``fraction`` of the indices. Vectorised in place, in cache-sized chunks
    (17M indices in about 0.1 s)."""
    mask = np.zeros(n, dtype=bool)
    if fraction <= 0 or n == 0:
        return mask
    key = splitmix64(np.array([seed & (2**64 - 1)], dtype=np.uint64))[0]
    threshold = np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))
    chunk = min(chunk, n)
    base = np.arange(chunk, dtype=np.uint64)
    z, t = np.empty(chunk, dtype=np.uint64), np.empty(chunk, dtype=np.uint64)
    s30, s27, s31 = np.uint64(30), np.uint64(27), np.uint64(31)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        zz, tt = z[:m], t[:m]
        np.add(base[:m], np.uint64(lo), out=zz)
        np.bitwise_xor(zz, key, out=zz)
        np.add(zz, _GOLDEN, out=zz)  # splitmix64, as above, without temporaries
        np.right_shift(zz, s30, out=tt)
        np.bitwise_xor(zz, tt, out=zz)
        np.multiply(zz, _M1, out=zz)
        np.right_shift(zz, s27, out=tt)
        np.bitwise_xor(zz, tt, out=zz)
        np.multiply(zz, _M2, out=zz)
        np.right_shift(zz, s31, out=tt)
        np.bitwise_xor(zz, tt, out=zz)
        np.less(zz, threshold, out=mask[lo : lo + m])
    return mask


# ---------------------------------------------------------------------------------------------- the splits


class _Shard:
    """One token array and where each of its documents lies in it: by an offsets array (prepared shards,
    documents end to end) or by Megatron's byte pointers and sizes of the sequences ``seq_ids`` (binidx)."""

    __slots__ = ("tokens", "offsets", "pointers", "sizes", "seq_ids", "itemsize", "chars", "name", "num_documents",
                 "num_tokens", "_lengths")

    def __init__(self, tokens: np.ndarray, name: str, *, offsets: np.ndarray | None = None,
                 chars: np.ndarray | None = None, pointers: np.ndarray | None = None, sizes: np.ndarray | None = None,
                 seq_ids: np.ndarray | None = None):
        self.tokens, self.name, self.chars = tokens, name, chars
        self.offsets, self.pointers, self.sizes, self.seq_ids = offsets, pointers, sizes, seq_ids
        self.itemsize = tokens.dtype.itemsize
        self._lengths = None
        if offsets is not None:
            self.num_documents, self.num_tokens = len(offsets) - 1, int(offsets[-1])
        else:
            self.num_documents = len(sizes) if seq_ids is None else len(seq_ids)
            if seq_ids is not None:
                self._lengths = sizes[seq_ids]  # an aligned int32 copy, kept for lengths()
            self.num_tokens = int((sizes if seq_ids is None else self._lengths).sum(dtype=np.int64))

    @property
    def contiguous(self) -> bool:
        return self.offsets is not None

    def bounds(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token start and end (in ``tokens``) of the shard's documents ``local``."""
        if self.offsets is not None:
            return self.offsets[local].astype(np.int64), self.offsets[local + 1].astype(np.int64)
        seq = local if self.seq_ids is None else self.seq_ids[local]
        starts = self.pointers[seq] // self.itemsize
        return starts, starts + self.sizes[seq]

    def bound(self, j: int) -> tuple[int, int]:
        """``bounds`` of one document."""
        if self.offsets is not None:
            return int(self.offsets[j]), int(self.offsets[j + 1])
        seq = j if self.seq_ids is None else int(self.seq_ids[j])
        start = int(self.pointers[seq]) // self.itemsize
        return start, start + int(self.sizes[seq])

    def lengths(self) -> np.ndarray:
        if self.offsets is not None:
            return np.diff(self.offsets)
        if self._lengths is None:
            self._lengths = np.array(self.sizes)
        return self._lengths


class TokenSplit:
    """The documents of one split ("train" or "val"), memory-mapped.

    ``document(i)`` and ``tokens(start, stop)`` are random access (by document, and by token position in the
    concatenation of the split's documents, across shards). ``lengths`` (tokens per document) is computed on
    first use (one pass over the offset arrays).
    """

    def __init__(self, name: str, shards: list[_Shard], dtype: np.dtype, num_characters: int | None,
                 source: str):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.source = source
        self._shards = shards
        counts = [s.num_documents for s in shards]
        self._doc_base = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        sizes = [s.num_tokens for s in shards]
        self._token_base = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.num_documents = int(self._doc_base[-1])
        self.num_tokens = int(self._token_base[-1])
        self.num_characters = num_characters
        self._lengths: np.ndarray | None = None
        self._cum: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_documents

    def __repr__(self) -> str:
        return (f"TokenSplit({self.source!r}, {self.name!r}, documents={self.num_documents}, "
                f"tokens={self.num_tokens})")

    @property
    def has_characters(self) -> bool:
        return all(s.chars is not None for s in self._shards) and self.num_characters is not None

    @property
    def fingerprint(self) -> tuple[int, int]:
        """``(num_documents, num_tokens)``: what a packer state is checked against."""
        return self.num_documents, self.num_tokens

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document (int32 when they fit, else int64), in stored order."""
        if self._lengths is None:
            parts = [s.lengths() for s in self._shards]
            lengths = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else np.empty(0, np.int64)
            if lengths.dtype != np.int32 and len(lengths) and lengths.max() < 2**31:
                lengths = lengths.astype(np.int32)
            self._lengths = lengths
        return self._lengths

    def _locate(self, i: int) -> tuple[_Shard, int]:
        if not -self.num_documents <= i < self.num_documents:
            raise IndexError(f"document {i} is out of range: split {self.name!r} has {self.num_documents}")
        i = int(i) % self.num_documents
        k = int(np.searchsorted(self._doc_base, i, side="right")) - 1
        return self._shards[k], i - int(self._doc_base[k])

    def document(self, i: int) -> np.ndarray:
        """The token ids of document ``i`` (a read-only view of the mapped file, storage dtype)."""
        shard, j = self._locate(i)
        start, end = shard.bound(j)
        return shard.tokens[start:end]

    def characters(self, i: int) -> int | None:
        """The character count of document ``i``'s text (None when the data has none: binidx)."""
        shard, j = self._locate(i)
        return None if shard.chars is None else int(shard.chars[j])

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the concatenation of the split's documents (a copy, storage dtype)."""
        start, stop = max(0, int(start)), min(int(stop), self.num_tokens)
        if stop <= start:
            return np.empty(0, dtype=self.dtype)
        if all(s.contiguous for s in self._shards):
            pieces = []
            k = int(np.searchsorted(self._token_base, start, side="right")) - 1
            pos = start
            while pos < stop:
                shard = self._shards[k]
                base = int(self._token_base[k])  # a prepared shard holds its documents end to end from 0
                end = min(stop, int(self._token_base[k + 1]))
                pieces.append(shard.tokens[pos - base : end - base])
                pos = end
                k += 1
            return np.concatenate(pieces) if len(pieces) > 1 else pieces[0].copy()
        if self._cum is None:
            self._cum = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        d0 = int(np.searchsorted(self._cum, start, side="right")) - 1
        d1 = int(np.searchsorted(self._cum, stop, side="left"))
        buf = self.gather(np.arange(d0, d1), None)
        off = start - int(self._cum[d0])
        return buf[off : off + stop - start]

    def gather(self, doc_ids: np.ndarray | Sequence[int], eot_id: int | None) -> np.ndarray:
        """The concatenation of ``[eot_id] + document(i)`` (just ``document(i)`` when ``eot_id`` is None) for
        the documents ``doc_ids``, in that order, as one array of the storage dtype."""
        ids = np.asarray(doc_ids, dtype=np.int64)
        sep = 0 if eot_id is None else 1
        if len(ids) == 0:
            return np.empty(0, dtype=self.dtype)
        if len(self._shards) == 1:
            shard_of = np.zeros(len(ids), dtype=np.int64)
            local = ids
        else:
            shard_of = np.searchsorted(self._doc_base, ids, side="right") - 1
            local = ids - self._doc_base[shard_of]
        if len(self._shards) == 1:
            starts, ends = self._shards[0].bounds(local)
        else:
            starts = np.empty(len(ids), dtype=np.int64)
            ends = np.empty(len(ids), dtype=np.int64)
            for k in np.unique(shard_of):
                sel = shard_of == k
                starts[sel], ends[sel] = self._shards[k].bounds(local[sel])
        lens = ends - starts
        out = np.empty(int(lens.sum()) + sep * len(ids), dtype=self.dtype)
        pos = 0
        shards = self._shards
        for k, s, e in zip(shard_of.tolist(), starts.tolist(), ends.tolist()):
            if sep:
                out[pos] = eot_id
                pos += 1
            out[pos : pos + e - s] = shards[k].tokens[s:e]
            pos += e - s
        return out

    def character_counts(self, start: int, stop: int) -> np.ndarray | None:
        """Character counts of documents ``[start, stop)`` (None for data without them)."""
        if not self.has_characters:
            return None
        start, stop = max(0, start), min(stop, self.num_documents)
        out = []
        for k, shard in enumerate(self._shards):
            lo, hi = int(self._doc_base[k]), int(self._doc_base[k + 1])
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                out.append(np.asarray(shard.chars[a - lo : b - lo], dtype=np.int64))
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def _shard_names(self) -> list[str]:
        return [s.name for s in self._shards]


# ------------------------------------------------------------------------------------------------ the data


class TokenData:
    """Pre-tokenized data: a prepared directory (``kind == "prepared"``) or a Megatron binidx prefix
    (``kind == "binidx"``). Build it with :func:`open_token_data`."""

    kind: str
    path: Path
    manifest: dict[str, Any]
    tokenizer_dir: Path | None
    tokenizer_hash: str | None
    vocab_size: int | None
    eos_token_id: int | None
    val_fraction: float
    seed: int
    dtype: np.dtype

    def split(self, name: str) -> TokenSplit:
        raise NotImplementedError

    def verify(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class PreparedData(TokenData):
    """A directory written by ``spikegpt prepare`` (or :func:`write_synthetic`); see the module docstring."""

    kind = "prepared"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"prepared data manifest {mpath} is unreadable: {type(e).__name__}: {e}") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise ValueError(f"{mpath} is not a {FORMAT!r} manifest (format {got!r})")
        if manifest.get("version") != VERSION:
            raise ValueError(f"{mpath} has format version {manifest.get('version')!r}; this spikegpt reads "
                             f"version {VERSION} (re-run spikegpt prepare)")
        self.manifest = manifest
        try:
            self.dtype = np.dtype(manifest["token_dtype"]).newbyteorder("<")
            self.vocab_size = None if manifest["vocab_size"] is None else int(manifest["vocab_size"])
            self.eos_token_id = None if manifest["eos_token_id"] is None else int(manifest["eos_token_id"])
            self.tokenizer_hash = manifest.get("tokenizer_hash")
            tdir = manifest.get("tokenizer_dir")
            self.tokenizer_dir = None if tdir is None else self.path / tdir
            self.val_fraction = float(manifest["val_fraction"])
            self.seed = int(manifest["seed"])
            splits = manifest["splits"]
            self._splits = {name: self._open_split(name, splits[name]) for name in SPLITS}
        except (KeyError, TypeError) as e:
            raise ValueError(f"prepared data manifest {mpath} is missing or has a bad field: {e!r}") from e

    def _file(self, entry: dict[str, Any]) -> Path:
        path = self.path / entry["name"]
        if not path.is_file():
            raise FileNotFoundError(f"prepared data shard file missing: {path}")
        size = path.stat().st_size
        if size != int(entry["bytes"]):
            raise ValueError(f"prepared data shard file {path} has {size} bytes, the manifest says "
                             f"{entry['bytes']} (truncated or replaced; re-run spikegpt prepare)")
        return path

    def _open_split(self, name: str, info: dict[str, Any]) -> TokenSplit:
        shards = []
        for shard in info["shards"]:
            files = shard["files"]
            tok_path, off_path = self._file(files["tokens"]), self._file(files["offsets"])
            chars_path = self._file(files["characters"]) if "characters" in files else None
            tokens = _map(tok_path, self.dtype)
            offsets = _load_npy(off_path)
            n, t = int(shard["documents"]), int(shard["tokens"])
            if offsets.ndim != 1 or len(offsets) != n + 1 or int(offsets[0]) != 0 or int(offsets[-1]) != t \
                    or len(tokens) != t:
                raise ValueError(f"prepared data shard {off_path} does not match the manifest ({n} documents, "
                                 f"{t} tokens; offsets of length {len(offsets)}, {len(tokens)} tokens stored)")
            chars = _load_npy(chars_path) if chars_path is not None else None
            if chars is not None and len(chars) != n:
                raise ValueError(f"prepared data shard {chars_path} holds {len(chars)} counts for {n} documents")
            shards.append(_Shard(tokens, str(tok_path), offsets=offsets, chars=chars))
        characters = info.get("characters")
        return TokenSplit(name, shards, self.dtype, None if characters is None else int(characters),
                          str(self.path))

    def split(self, name: str) -> TokenSplit:
        if name not in self._splits:
            raise KeyError(f"no split {name!r} in {self.path}; splits: {list(self._splits)}")
        return self._splits[name]

    def files(self) -> list[tuple[str, dict[str, Any]]]:
        """``(split, file entry)`` for every shard file of the manifest."""
        out = []
        for name in SPLITS:
            for shard in self.manifest["splits"][name]["shards"]:
                out += [(name, entry) for entry in shard["files"].values()]
        return out

    def verify(self) -> dict[str, Any]:
        """Check the sha256 and size of every shard file; ``ValueError`` names the first bad one."""
        total = 0
        files = self.files()
        for _, entry in files:
            path = self._file(entry)
            digest = file_sha256(path)
            if digest != entry["sha256"]:
                raise ValueError(f"prepared data shard file {path} fails its checksum (sha256 {digest}, the "
                                 f"manifest says {entry['sha256']}): the file is corrupt; re-run spikegpt prepare")
            total += int(entry["bytes"])
        return {"path": str(self.path), "kind": self.kind, "files": len(files), "bytes": total, "ok": True}


class BinidxData(TokenData):
    """A Megatron ``MMapIndexedDataset`` (``PREFIX.bin`` + ``PREFIX.idx``); see the module docstring."""

    kind = "binidx"

    def __init__(self, prefix: str | os.PathLike, *, seed: int = 0, val_fraction: float = 0.0):
        self.prefix = str(prefix)
        self.path = Path(self.prefix + ".bin")
        self.idx_path = Path(self.prefix + ".idx")
        self.tokenizer_dir = self.tokenizer_hash = self.vocab_size = self.eos_token_id = None
        self.seed, self.val_fraction = int(seed), float(val_fraction)
        with open(self.idx_path, "rb") as f:
            head = f.read(_BINIDX_HEADER.size)
        if len(head) < _BINIDX_HEADER.size or head[:9] != BINIDX_MAGIC:
            raise ValueError(f"{self.idx_path} is not a Megatron binidx index: bad magic {head[:9]!r} "
                             f"(expected {BINIDX_MAGIC!r})")
        _, version, code, n, m = _BINIDX_HEADER.unpack(head)
        if version != BINIDX_VERSION:
            raise ValueError(f"{self.idx_path}: binidx index version {version}, only version 1 is read")
        if code in BINIDX_FLOAT_CODES:
            raise ValueError(f"{self.idx_path}: binidx dtype code {code} is floating point, not token ids")
        if code not in BINIDX_DTYPES:
            raise ValueError(f"{self.idx_path}: unknown binidx dtype code {code} "
                             f"(known: {sorted(BINIDX_DTYPES)})")
        self.dtype = np.dtype(BINIDX_DTYPES[code]).newbyteorder("<")
        need = _BINIDX_HEADER.size + 4 * n + 8 * n + 8 * m
        size = self.idx_path.stat().st_size
        if size < need:
            raise ValueError(f"{self.idx_path} has {size} bytes; its header promises {n} sequences and a "
                             f"document index of {m} ({need} bytes)")
        off = _BINIDX_HEADER.size
        index = np.memmap(self.idx_path, dtype=np.uint8, mode="r")
        self.sizes = np.frombuffer(index, dtype="<i4", count=n, offset=off)
        self.pointers = np.frombuffer(index, dtype="<i8", count=n, offset=off + 4 * n)
        self.doc_idx = np.frombuffer(index, dtype="<i8", count=m, offset=off + 12 * n)
        if not self.path.is_file():
            raise FileNotFoundError(f"binidx data file missing: {self.path} (beside {self.idx_path})")
        bin_size = self.path.stat().st_size
        if bin_size % self.dtype.itemsize:
            raise ValueError(f"{self.path} has {bin_size} bytes, not a whole number of {self.dtype} tokens")
        if n and int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize > bin_size:
            raise ValueError(f"{self.path} has {bin_size} bytes; the index {self.idx_path} points past its end")
        self.data = _map(self.path, self.dtype)
        self.num_sequences = n
        self.manifest = {"format": "megatron-binidx", "prefix": self.prefix, "token_dtype": self.dtype.name,
                         "sequences": n, "doc_idx": m, "seed": self.seed, "val_fraction": self.val_fraction}
        self._splits: dict[str, TokenSplit] = {}
        self._mask: np.ndarray | None = None

    def split(self, name: str) -> TokenSplit:
        if name not in SPLITS:
            raise KeyError(f"no split {name!r} in {self.prefix}; splits: {list(SPLITS)}")
        if name not in self._splits:
            if self.val_fraction <= 0:  # every sequence trains: no index array at all
                ids = None if name == "train" else np.empty(0, dtype=np.int64)
            else:
                if self._mask is None:
                    self._mask = index_validation_mask(self.num_sequences, self.seed, self.val_fraction)
                ids = np.flatnonzero(self._mask if name == "val" else ~self._mask)
            shard = _Shard(self.data, str(self.path), pointers=self.pointers, sizes=self.sizes, seq_ids=ids)
            self._splits[name] = TokenSplit(name, [shard], self.dtype, None, self.prefix)
        return self._splits[name]

    def verify(self) -> dict[str, Any]:
        """Check that every sequence lies inside ``PREFIX.bin`` and the document index is ordered (binidx has
        no checksums); ``ValueError`` names the file."""
        itemsize = self.dtype.itemsize
        ends = self.pointers + self.sizes.astype(np.int64) * itemsize
        if len(self.sizes) and (self.sizes.min() < 0 or self.pointers.min() < 0
                                or int(ends.max()) > len(self.data) * itemsize):
            raise ValueError(f"binidx index {self.idx_path} has sequences outside {self.path}")
        if len(self.doc_idx) and (np.any(np.diff(self.doc_idx) < 0) or int(self.doc_idx[-1]) > self.num_sequences):
            raise ValueError(f"binidx index {self.idx_path} has a document index that is not ordered")
        return {"path": self.prefix, "kind": self.kind, "sequences": self.num_sequences,
                "tokens": int(self.sizes.sum(dtype=np.int64)), "ok": True}


def open_token_data(spec: str | os.PathLike, *, seed: int = 0, val_fraction: float = 0.0) -> TokenData | None:
    """The pre-tokenized data ``spec`` names, or None when it is not pre-tokenized (read it as text then).

    A directory holding ``manifest.json`` is a prepared directory; ``PREFIX`` (or ``PREFIX.bin`` /
    ``PREFIX.idx``) with both ``PREFIX.bin`` and ``PREFIX.idx`` present is a Megatron binidx dataset. ``seed``
    and ``val_fraction`` choose the held-out sequences of binidx data (a prepared directory has its split
    stored: see ``TokenData.val_fraction``). A ``.bin`` / ``.idx`` missing its partner is a
    ``FileNotFoundError`` naming it.
    """
    text = os.path.expanduser(os.fspath(spec))
    if text.startswith("builtin:") or any(c in text for c in "*?["):
        return None
    path = Path(text)
    if path.is_dir():
        return PreparedData(path) if (path / MANIFEST).exists() else None
    prefix = text[:-4] if text.endswith((".bin", ".idx")) else text
    bin_path, idx_path = Path(prefix + ".bin"), Path(prefix + ".idx")
    if bin_path.is_file() and idx_path.is_file():
        return BinidxData(prefix, seed=seed, val_fraction=val_fraction)
    if text.endswith((".bin", ".idx")) and path.is_file():
        missing = idx_path if text.endswith(".bin") else bin_path
        raise FileNotFoundError(f"binidx file {path} has no {missing.name} beside it ({missing} not found)")
    return None


# ---------------------------------------------------------------------------------------------- the packer


def _stream_offsets(lengths: np.ndarray, docs: np.ndarray, sep: int, chunk: int = 1 << 16) -> np.ndarray:
    """``[0, cumsum(lengths[docs] + sep)]`` as int64, gathered in cache-sized chunks (an int32 -> int64
    cumsum is several times slower than an int64 one: the chunk is widened first)."""
    out = np.empty(len(docs) + 1, dtype=np.int64)
    out[0] = 0
    m = min(chunk, len(docs))
    narrow, wide = np.empty(m, dtype=lengths.dtype), np.empty(m, dtype=np.int64)
    acc = 0
    for lo in range(0, len(docs), chunk):
        hi = min(len(docs), lo + chunk)
        part, w = narrow[: hi - lo], wide[: hi - lo]
        np.take(lengths, docs[lo:hi], out=part)
        w[...] = part
        if sep:
            w += sep
        w[0] += acc
        dst = out[lo + 1 : hi + 1]
        np.cumsum(w, out=dst)
        acc = int(dst[-1])
    return out


class TokenPacker:
    """Cut a :class:`TokenSplit` into ``(n, block_len)`` blocks for one rank, resumable from a few integers.

    Epoch ``e`` visits the split's documents in the order ``np.random.default_rng([seed, e]).permutation(n)``;
    rank ``r`` takes ``order[r::world_size]`` (ranks read disjoint documents). Its stream is the
    concatenation of ``[eot_id] + document`` (just ``document`` when ``eot_id`` is None, for binidx data whose
    documents end with their own separator). Block ``b`` of an epoch is stream positions
    ``[b * (L - 1), b * (L - 1) + L)``: consecutive blocks share one token, so each token is a prediction
    target once, as in :class:`spikegpt.train.data.BlockPacker`. When less than a block is left, the epoch
    ends (those last tokens are dropped, under ``block_len`` tokens per epoch and rank) and the next begins.

    The state is ``{"epoch", "block", ...}`` plus the seed, rank, world size and a fingerprint of the split;
    loading it recomputes only that epoch's permutation and cumulative lengths (no document is read).
    """

    def __init__(self, split: TokenSplit, eot_id: int | None, block_len: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if block_len < 2:
            raise ValueError(f"block_len must be >= 2, got {block_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if eot_id is not None and not np.iinfo(split.dtype).min <= int(eot_id) <= np.iinfo(split.dtype).max:
            raise ValueError(f"eot_id {eot_id} does not fit the {split.dtype} token ids of {split.source!r}")
        self.split, self.eot_id, self.block_len = split, eot_id, int(block_len)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self.block = 0
        self._sep = 0 if eot_id is None else 1
        self._cache: tuple[int, np.ndarray, np.ndarray, int] | None = None  # epoch, docs, cum0, blocks
        n = split.num_documents
        if n == 0:
            raise ValueError(f"split {split.name!r} of {split.source!r} has no documents to train on")
        if n < world_size:
            raise ValueError(f"split {split.name!r} of {split.source!r} has {n} documents, fewer than the "
                             f"{world_size} ranks (each rank needs documents of its own)")
        if split.num_tokens + self._sep * n < world_size * self.block_len:
            raise ValueError(
                f"split {split.name!r} of {split.source!r} has {split.num_tokens} tokens in {n} documents: too "
                f"few for one block of {self.block_len} tokens per rank ({world_size} ranks)")

    # ----- state

    def _fingerprint(self) -> dict[str, int]:
        return {"num_documents": self.split.num_documents, "num_tokens": self.split.num_tokens,
                "block_len": self.block_len, "eot_id": -1 if self.eot_id is None else int(self.eot_id)}

    def state_dict(self) -> dict[str, int]:
        """The position after the last block handed out, and what it is valid for (plain ints)."""
        return {"epoch": self.epoch, "block": self.block, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, **self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a packer over the same split, block length, separator, seed
        and ranks; ``ValueError`` says what differs. O(1): nothing is read until the next batch."""
        if not isinstance(state, dict) or "block" not in state or "epoch" not in state:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a TokenPacker state (keys {keys}): was it saved by the text packer? Resume "
                             "with the same data as the run that wrote it")
        mine = self.state_dict()
        for key in ("seed", "rank", "world_size", "num_documents", "num_tokens", "block_len", "eot_id"):
            if key not in state:
                raise ValueError(f"packer state has no {key!r}: not a TokenPacker state")
            if int(state[key]) != mine[key]:
                what = {"num_documents": "the data has changed", "num_tokens": "the data has changed",
                        "world_size": "the number of processes has changed", "rank": "another rank's state",
                        "block_len": "the block length has changed", "eot_id": "the separator has changed",
                        "seed": "the seed has changed"}[key]
                raise ValueError(f"cannot resume the data position: {key} is {state[key]} in the saved state but "
                                 f"{mine[key]} here ({what}; split {self.split.name!r} of {self.split.source!r})")
        epoch, block = int(state["epoch"]), int(state["block"])
        if epoch < 0 or block < 0:
            raise ValueError(f"bad packer state: epoch {epoch}, block {block}")
        self.epoch, self.block = epoch, block
        if self._cache is not None and self._cache[0] != epoch:
            self._cache = None  # (the plan of the same epoch is kept: a rewind within an epoch costs nothing)

    # ----- blocks

    def _epoch_plan(self) -> tuple[np.ndarray, np.ndarray, int]:
        """This rank's documents of the current epoch, the cumulative stream lengths, the number of blocks."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = None  # free the previous epoch's arrays first
            n = self.split.num_documents
            loader = None
            if self.split._lengths is None:  # read the offsets while the permutation is drawn (GIL released)
                loader = threading.Thread(target=lambda: self.split.lengths, name="token-lengths", daemon=True)
                loader.start()
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            docs = order[self.rank :: self.world_size]
            if self.world_size > 1:
                docs = np.ascontiguousarray(docs)
            del order
            if loader is not None:
                loader.join()
            cum0 = _stream_offsets(self.split.lengths, docs, self._sep)
            total = int(cum0[-1])
            step = self.block_len - 1
            blocks = (total - self.block_len) // step + 1 if total >= self.block_len else 0
            if blocks == 0:
                raise ValueError(f"epoch {self.epoch} of rank {self.rank}/{self.world_size} has {total} tokens of "
                                 f"split {self.split.name!r}: less than one block of {self.block_len}")
            self._cache = (self.epoch, docs, cum0, blocks)
        return self._cache[1], self._cache[2], self._cache[3]

    def _stream(self, docs: np.ndarray, cum0: np.ndarray, p0: int, p1: int) -> np.ndarray:
        """Positions ``[p0, p1)`` of this epoch's stream."""
        k0 = int(np.searchsorted(cum0, p0, side="right")) - 1
        k1 = int(np.searchsorted(cum0, p1, side="left"))
        buf = self.split.gather(docs[k0:k1], self.eot_id)
        off = p0 - int(cum0[k0])
        return buf[off : off + p1 - p0]

    def next_batch(self, n: int) -> torch.Tensor:
        """``(n, block_len)`` long tensor of the next ``n`` blocks."""
        L, step = self.block_len, self.block_len - 1
        out = np.empty((n, L), dtype=np.int64)
        filled = 0
        while filled < n:
            docs, cum0, blocks = self._epoch_plan()
            if self.block >= blocks:  # only after loading a state saved at an epoch's very end
                self.epoch, self.block = self.epoch + 1, 0
                continue
            m = min(n - filled, blocks - self.block)
            p0 = self.block * step
            stream = self._stream(docs, cum0, p0, p0 + (m - 1) * step + L)
            s = stream.strides[0]
            out[filled : filled + m] = np.lib.stride_tricks.as_strided(stream, shape=(m, L), strides=(s * step, s))
            filled += m
            self.block += m
            if self.block >= blocks:
                self.epoch, self.block = self.epoch + 1, 0
        return torch.from_numpy(out)

    def next_block(self) -> list[int]:
        """The next ``block_len`` tokens of this rank's stream."""
        return self.next_batch(1)[0].tolist()


# --------------------------------------------------------------------------------------- validation, writers


def validation_documents(data: TokenData, max_tokens: int, decode: Callable[[list[int]], str] | None = None
                         ) -> list[tuple[int | str, list[int]]]:
    """The held-out documents as ``(character count, token ids)``, whole documents in stored order until
    ``max_tokens`` tokens (0 = all). The counts come from the stored index of prepared data; binidx data has
    none, so ``decode`` (token ids -> text) is required there and the count is ``len(decode(ids))``."""
    split = data.split("val")
    need_decode = not split.has_characters
    if need_decode and decode is None and split.num_documents:
        raise ValueError(f"data {data.path} has no character counts ({data.kind}): pass decode to count them")
    out: list[tuple[int | str, list[int]]] = []
    total = 0
    chunk = 1024
    for lo in range(0, split.num_documents, chunk):
        hi = min(split.num_documents, lo + chunk)
        chars = None if need_decode else split.character_counts(lo, hi)
        for i in range(lo, hi):
            ids = split.document(i).tolist()
            out.append((len(decode(ids)) if need_decode else int(chars[i - lo]), ids))
            total += len(ids)
            if max_tokens and total >= max_tokens:
                return out
    return out


def write_binidx(prefix: str | os.PathLike, documents: Iterable[Sequence[int] | np.ndarray],
                 dtype: Any = np.uint16) -> tuple[Path, Path]:
    """Write ``documents`` (token id sequences) as a Megatron binidx pair ``PREFIX.bin`` / ``PREFIX.idx``
    (one sequence per document, ``doc_idx = [0, 1, ..., n]``), as GPT-NeoX's preprocessing does. Returns the
    two paths. ``dtype`` is one of the integer dtypes of :data:`BINIDX_DTYPES`."""
    dt = np.dtype(dtype)
    codes = {np.dtype(v): k for k, v in BINIDX_DTYPES.items()}
    if dt not in codes:
        raise ValueError(f"binidx stores token ids as {sorted(str(np.dtype(v)) for v in BINIDX_DTYPES.values())}, "
                         f"not {dt}")
    prefix = os.fspath(prefix)
    bin_path, idx_path = Path(prefix + ".bin"), Path(prefix + ".idx")
    sizes = []
    with open(bin_path, "wb") as f:
        for doc in documents:
            arr = np.asarray(doc)
            if arr.size and (arr.min() < np.iinfo(dt).min or arr.max() > np.iinfo(dt).max):
                raise ValueError(f"token ids {int(arr.min())}..{int(arr.max())} do not fit {dt}")
            f.write(arr.astype(dt.newbyteorder("<")).tobytes())
            sizes.append(arr.size)
    sizes_arr = np.asarray(sizes, dtype="<i4")
    pointers = np.zeros(len(sizes), dtype="<i8")
    if len(sizes) > 1:
        np.cumsum(sizes_arr[:-1].astype(np.int64) * dt.itemsize, out=pointers[1:])
    doc_idx = np.arange(len(sizes) + 1, dtype="<i8")
    with open(idx_path, "wb") as f:
        f.write(_BINIDX_HEADER.pack(BINIDX_MAGIC, BINIDX_VERSION, codes[dt], len(sizes), len(doc_idx)))
        f.write(sizes_arr.tobytes())
        f.write(pointers.tobytes())
        f.write(doc_idx.tobytes())
    return bin_path, idx_path


def shard_entry(directory: Path, stem: str, tokens_sha256: str, token_bytes: int, offsets: np.ndarray,
                characters: np.ndarray) -> dict[str, Any]:
    """Write a shard's index arrays (``STEM.offsets.npy``, ``STEM.chars.npy``) beside its token file
    ``STEM.bin`` (already written, with its sha256) and return its manifest entry."""
    files = {"tokens": {"name": f"{stem}.bin", "bytes": int(token_bytes), "sha256": tokens_sha256}}
    for key, suffix, arr in (("offsets", "offsets", offsets), ("characters", "chars", characters)):
        name = f"{stem}.{suffix}.npy"
        np.save(directory / name, np.ascontiguousarray(arr, dtype=np.int64), allow_pickle=False)
        files[key] = {"name": name, "bytes": (directory / name).stat().st_size,
                      "sha256": file_sha256(directory / name)}
    return {"documents": len(offsets) - 1, "tokens": int(offsets[-1]), "characters": int(np.sum(characters)),
            "files": files}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (sorted keys, so two equal preparations give equal files)."""
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def write_synthetic(directory: str | os.PathLike, num_documents: int, mean_len: float, vocab_size: int,
                    seed: int = 0, *, shard_tokens: int = 1 << 28, val_documents: int = 0) -> Path:
    """For benchmarks and tests: a prepared directory of random documents, written straight with numpy.

    ``num_documents`` training documents (and ``val_documents`` held-out ones) with geometric lengths of mean
    ``mean_len`` (at least 1 token), random ids below ``vocab_size - 1``; id ``vocab_size - 1`` is the eos
    id. Characters are 4 per token. There is no tokenizer (``tokenizer_dir`` is None). Returns the path.
    """
    if num_documents < 0 or mean_len < 1 or vocab_size < 2:
        raise ValueError("write_synthetic needs num_documents >= 0, mean_len >= 1 and vocab_size >= 2")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"output directory {out} is not empty")
    rng = np.random.default_rng(seed)
    dtype = token_dtype(vocab_size)
    splits = {}
    chunk_docs = 1 << 20
    for name, count in (("train", num_documents), ("val", val_documents)):
        lengths = rng.geometric(1.0 / mean_len, size=count).astype(np.int64) if mean_len > 1 \
            else np.ones(count, dtype=np.int64)
        cum = np.cumsum(lengths, dtype=np.int64)
        shards, k, lo = [], 0, 0
        while lo < count:
            # a shard closes at the first document that brings it to shard_tokens tokens (as prepare does)
            base = int(cum[lo - 1]) if lo else 0
            hi = min(count, int(np.searchsorted(cum, base + shard_tokens, side="left")) + 1)
            stem = f"{name}-{k:05d}"
            h = hashlib.sha256()
            with open(out / f"{stem}.bin", "wb") as f:
                for a in range(lo, hi, chunk_docs):
                    b = min(hi, a + chunk_docs)
                    toks = rng.integers(0, vocab_size - 1, size=int(lengths[a:b].sum()), dtype=dtype)
                    raw = toks.astype(dtype.newbyteorder("<")).tobytes()
                    h.update(raw)
                    f.write(raw)
            offsets = np.concatenate([[0], np.cumsum(lengths[lo:hi], dtype=np.int64)])
            token_bytes = int(offsets[-1]) * dtype.itemsize
            shards.append(shard_entry(out, stem, h.hexdigest(), token_bytes, offsets, lengths[lo:hi] * 4))
            lo, k = hi, k + 1
        splits[name] = {"documents": count, "tokens": int(lengths.sum()), "characters": int(lengths.sum()) * 4,
                        "shards": shards}
    write_manifest(out, {
        "format": FORMAT, "version": VERSION, "tokenizer_hash": None, "tokenizer_dir": None,
        "tokenizer": {"name": "synthetic"}, "vocab_size": int(vocab_size), "eos_token_id": int(vocab_size - 1),
        "token_dtype": dtype.name, "source": {"data": f"synthetic:{num_documents}x{mean_len}", "seed": seed},
        "seed": 0, "val_fraction": 0.0, "malformed_records": 0, "shard_tokens": int(shard_tokens),
        "splits": splits,
    })
    return out
