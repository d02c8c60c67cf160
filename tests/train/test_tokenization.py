import pytest
from train_helpers import make_documents
from transformers import AutoTokenizer

from spikegpt.train.tokenization import (
    EOT,
    build_tokenizer,
    byte_tokenizer,
    char_tokenizer,
    encoder,
    load_tokenizer,
    train_bpe_tokenizer,
)

TEXT = "Héllo wörld\n\n  x = 1  # 😀\ttabs"


def _reload(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    return AutoTokenizer.from_pretrained(tmp_path)


def test_byte_tokenizer_ids_are_the_utf8_bytes(tmp_path):
    tok = _reload(byte_tokenizer(), tmp_path)
    assert len(tok) == 257 and tok.eos_token == EOT and tok.eos_token_id == 256
    ids = encoder(tok)(TEXT)
    assert ids == list(TEXT.encode("utf-8"))
    assert tok.decode(ids) == TEXT


def test_char_tokenizer_roundtrip_and_unknowns(tmp_path):
    docs = make_documents(20) + [TEXT]
    tok = _reload(char_tokenizer(docs, vocab_size=1000), tmp_path)
    chars = set("".join(docs))
    assert len(tok) == len(chars) + 2 and tok.eos_token_id == 0
    ids = encoder(tok)(TEXT)
    assert len(ids) == len(TEXT) and tok.decode(ids) == TEXT
    small = char_tokenizer(docs, vocab_size=10)  # 8 most frequent characters
    assert len(small) == 10
    ids = encoder(small)("zzz")
    assert ids == [small.unk_token_id] * 3


def test_bpe_tokenizer_compresses_roundtrips_and_reloads(tmp_path):
    docs = make_documents(200)
    tok = train_bpe_tokenizer(docs, vocab_size=400)
    assert 257 < len(tok) <= 400 and tok.convert_ids_to_tokens(0) == EOT and tok.eos_token_id == 0
    again = _reload(tok, tmp_path)
    for text in docs[:5] + [TEXT]:
        ids = encoder(tok)(text)
        assert encoder(again)(text) == ids
        assert again.decode(ids) == text
    sample = " ".join(docs[:20])
    assert len(encoder(tok)(sample)) < len(sample.encode()) / 2  # merges learned from the words above


def test_build_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="pass texts"):
        build_tokenizer("bpe")
    with pytest.raises(ValueError, match="vocab_size >= 258"):
        train_bpe_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(FileNotFoundError, match="no-such/tokenizer"):
        load_tokenizer("no-such/tokenizer")  # HF_HUB_OFFLINE=1 in tests
    byte_tokenizer().save_pretrained(tmp_path)
    assert build_tokenizer(str(tmp_path)).eos_token_id == 256  # a local directory
