"""Tokenizers for pretraining: a Hub tokenizer, byte- or character-level, or a byte-level BPE trained here.

Every tokenizer built here is a ``transformers.PreTrainedTokenizerFast`` backed by a ``tokenizers`` object,
so ``save_pretrained(dir)`` followed by ``AutoTokenizer.from_pretrained(dir)`` gives it back with no custom
code. Each has an end-of-text token (``<|endoftext|>``, its ``eos_token``) that separates documents.
Decoding never inserts spaces (``clean_up_tokenization_spaces=False``), so ``decode(encode(text)) == text``
for byte-level tokenizers.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOT = "<|endoftext|>"
UNK = "<unk>"
BUILT_TOKENIZERS = ("bpe", "byte", "char")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (ByteLevel's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _wrap(tok: Tokenizer, **special: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOT, bos_token=EOT, clean_up_tokenization_spaces=False, **special
    )


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: token id b is the byte b (0-255), id 256 is the end-of-text token."""
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    vocab[EOT] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return _wrap(tok)


def char_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Character-level tokenizer over the ``vocab_size - 2`` most frequent characters of ``texts``.

    Id 0 is the end-of-text token, id 1 ``<unk>`` (any character outside the vocabulary), then the
    characters by decreasing frequency (ties by code point).
    """
    if vocab_size < 3:
        raise ValueError(f"a character tokenizer needs vocab_size >= 3, got {vocab_size}")
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(text)
    if not counts:
        raise ValueError("cannot build a character tokenizer: the training text is empty")
    chars = sorted(counts, key=lambda c: (-counts[c], ord(c)))[: vocab_size - 2]
    vocab = {EOT: 0, UNK: 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOT, UNK])
    return _wrap(tok, unk_token=UNK)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style pre-tokenisation) trained with ``tokenizers`` on ``texts``.

    Id 0 is the end-of-text token, ids 1-256 the byte alphabet, then merges up to ``vocab_size`` (fewer when
    the text has fewer pairs seen ``min_frequency`` times).
    """
    if vocab_size < 258:
        raise ValueError(f"a byte-level BPE needs vocab_size >= 258 (EOT + 256 bytes + 1 merge), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer from the Hub or a local directory, which must define an end-of-text (eos) token."""
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:  # offline, unknown name, missing files: say which tokenizer failed
        where = "directory" if os.path.isdir(name_or_path) else "Hub tokenizer"
        raise FileNotFoundError(f"{where} {name_or_path!r} could not be loaded: {type(e).__name__}: {e}") from e
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no eos token to separate documents")
    return tok


def build_tokenizer(kind: str, texts: Iterable[str] | None = None, vocab_size: int = 4096) -> PreTrainedTokenizerBase:
    """The tokenizer a recipe asks for: ``"bpe"`` / ``"char"`` (trained on ``texts``), ``"byte"``, or a Hub
    name / local directory."""
    if kind == "byte":
        return byte_tokenizer()
    if kind in ("bpe", "char"):
        if texts is None:
            raise ValueError(f"tokenizer {kind!r} is trained on the training split: pass texts")
        if kind == "bpe":
            return train_bpe_tokenizer(texts, vocab_size)
        return char_tokenizer(texts, vocab_size)
    return load_tokenizer(kind)


def encoder(tokenizer: PreTrainedTokenizerBase):
    """A fast ``text -> list[int]`` without special tokens (the underlying ``tokenizers`` object when there is
    one, which skips transformers' per-call overhead and length warnings)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return lambda text: backend.encode(text, add_special_tokens=False).ids
    return lambda text: tokenizer.encode(text, add_special_tokens=False)
