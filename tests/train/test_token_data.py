"""Pre-tokenized data: the Megatron binidx reader against the public format, the packer against a pure-Python
reference (1 and 2 ranks, epochs, exact O(1) resume), validation documents, synthetic directories."""

import json
import re
import struct

import numpy as np
import pytest
import torch
from train_helpers import make_documents, write_jsonl

from spikegpt.train.config import load_config
from spikegpt.train.data import is_validation
from spikegpt.train.prepare import prepare
from spikegpt.train.token_data import (
    TokenPacker,
    index_validation_mask,
    open_token_data,
    validation_documents,
    write_binidx,
    write_synthetic,
)

# ------------------------------------------------------------------------------------------- references


def hand_binidx(prefix, docs, code, fmt, doc_idx=None, magic=b"MMIDIDX\x00\x00", version=1):
    """A binidx pair written with struct only, from the published layout (not with the code under test)."""
    size = struct.calcsize("<" + fmt)
    data = b"".join(struct.pack(f"<{len(d)}{fmt}", *d) for d in docs)
    pointers, p = [], 0
    for d in docs:
        pointers.append(p)
        p += len(d) * size
    doc_idx = list(range(len(docs) + 1)) if doc_idx is None else doc_idx
    idx = magic + struct.pack("<Q", version) + struct.pack("<B", code) + struct.pack("<Q", len(docs))
    idx += struct.pack("<Q", len(doc_idx)) + struct.pack(f"<{len(docs)}i", *[len(d) for d in docs])
    idx += struct.pack(f"<{len(docs)}q", *pointers) + struct.pack(f"<{len(doc_idx)}q", *doc_idx)
    with open(f"{prefix}.bin", "wb") as f:
        f.write(data)
    with open(f"{prefix}.idx", "wb") as f:
        f.write(idx)


def splitmix64_py(x):
    m = 2**64 - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def reference_blocks(docs, eot, block_len, seed=0, rank=0, world=1, epochs=3):
    """Blocks of one rank, pure Python: epoch order default_rng([seed, epoch]), [eot] + doc, overlap one."""
    out = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(docs))
        stream = []
        for i in order[rank::world]:
            stream += ([] if eot is None else [eot]) + [int(t) for t in docs[i]]
        b = 0
        while b * (block_len - 1) + block_len <= len(stream):
            out.append(stream[b * (block_len - 1) : b * (block_len - 1) + block_len])
            b += 1
    return out


def take(packer, sizes):
    blocks = []
    for n in sizes:
        batch = packer.next_batch(n)
        assert batch.shape == (n, packer.block_len) and batch.dtype == torch.long
        blocks += batch.tolist()
    return blocks


def random_docs(n, seed=0, vocab=1000, max_len=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(1, max_len))).tolist() for _ in range(n)]


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared directory (byte tokenizer) of 60 documents and its training / validation texts."""
    root = tmp_path_factory.mktemp("prepared")
    docs = make_documents(60, seed=3)
    corpus = write_jsonl(root / "corpus.jsonl", docs)
    config = load_config(None, ["--data", str(corpus), "--tokenizer", "byte", "--val_fraction", "0.2",
                                "--seed", "5"])
    prepare(config, root / "data", shard_tokens=700, progress=False)
    train = [d for d in docs if not is_validation(d, 5, 0.2)]
    val = [d for d in docs if is_validation(d, 5, 0.2)]
    return root / "data", train, val


# ---------------------------------------------------------------------------------------------- binidx


@pytest.mark.parametrize(("code", "fmt", "dtype"), [(8, "H", np.uint16), (4, "i", np.int32)])
def test_binidx_reader_reads_the_published_layout(tmp_path, code, fmt, dtype):
    docs = random_docs(25, seed=code, vocab=60000 if fmt == "H" else 2**31 - 1)
    hand_binidx(tmp_path / "hand", docs, code, fmt)
    for spec in (tmp_path / "hand", f"{tmp_path / 'hand'}.bin", f"{tmp_path / 'hand'}.idx"):
        data = open_token_data(str(spec))
        assert data.kind == "binidx" and data.tokenizer_dir is None and data.tokenizer_hash is None
        assert data.vocab_size is None and data.eos_token_id is None
        split = data.split("train")
        assert split.dtype == np.dtype(dtype) and split.num_documents == 25
        assert [split.document(i).tolist() for i in range(25)] == docs
        assert split.lengths.tolist() == [len(d) for d in docs]
        assert split.characters(0) is None and not split.has_characters
        flat = [t for d in docs for t in d]
        assert split.num_tokens == len(flat) and split.tokens(7, 93).tolist() == flat[7:93]
        assert data.verify()["ok"]
    # our writer gives the same bytes as the hand-written files
    write_binidx(tmp_path / "ours", docs, dtype)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"hand{ext}").read_bytes()


def test_binidx_doc_idx_of_grouped_sequences_is_accepted(tmp_path):
    docs = random_docs(6, seed=1)
    hand_binidx(tmp_path / "g", docs, 8, "H", doc_idx=[0, 2, 6])  # 2 documents of 2 and 4 sequences
    data = open_token_data(tmp_path / "g")
    assert data.split("train").num_documents == 6 and data.doc_idx.tolist() == [0, 2, 6]


def test_binidx_errors_name_the_file(tmp_path):
    docs = random_docs(4)
    hand_binidx(tmp_path / "m", docs, 8, "H", magic=b"NOTANIDX\x00")
    with pytest.raises(ValueError, match=r"m\.idx.*magic"):
        open_token_data(tmp_path / "m")
    hand_binidx(tmp_path / "v", docs, 8, "H", version=2)
    with pytest.raises(ValueError, match=r"v\.idx.*version 2"):
        open_token_data(tmp_path / "v")
    hand_binidx(tmp_path / "f", docs, 7, "f")
    with pytest.raises(ValueError, match=r"f\.idx.*floating point"):
        open_token_data(tmp_path / "f")
    hand_binidx(tmp_path / "u", docs, 9, "H")
    with pytest.raises(ValueError, match=r"u\.idx.*unknown binidx dtype code 9"):
        open_token_data(tmp_path / "u")
    hand_binidx(tmp_path / "t", docs, 8, "H")
    raw = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match=r"t\.bin"):
        open_token_data(tmp_path / "t")
    (tmp_path / "lonely.bin").write_bytes(b"\x00\x01")
    with pytest.raises(FileNotFoundError, match=r"lonely\.idx"):
        open_token_data(tmp_path / "lonely.bin")
    # not pre-tokenized at all: None (the caller reads text)
    write_jsonl(tmp_path / "c.jsonl", ["x"])
    assert open_token_data(tmp_path / "c.jsonl") is None
    assert open_token_data(tmp_path) is None
    assert open_token_data("builtin:python-docs") is None
    assert open_token_data("some-org/some-dataset") is None


def test_binidx_validation_split_is_a_keyed_hash_of_the_index(tmp_path):
    docs = random_docs(400, seed=2)
    write_binidx(tmp_path / "d", docs, np.uint16)
    data = open_token_data(tmp_path / "d", seed=7, val_fraction=0.25)
    key = splitmix64_py(7)
    expect_val = [i for i in range(400) if splitmix64_py(i ^ key) / 2.0**64 < 0.25]
    val, train = data.split("val"), data.split("train")
    assert 60 < len(expect_val) < 140
    assert [val.document(j).tolist() for j in range(val.num_documents)] == [docs[i] for i in expect_val]
    rest = [docs[i] for i in range(400) if i not in set(expect_val)]
    assert [train.document(j).tolist() for j in range(train.num_documents)] == rest
    flat = [t for d in rest for t in d]
    assert train.tokens(100, 2000).tolist() == flat[100:2000]
    # chunked vectorised mask = the pure-Python hash, chunk boundaries included
    mask = index_validation_mask(150_000, 7, 0.25)
    probe = [0, 1, 65535, 65536, 65537, 131071, 131072, 149999, *range(1000, 150_000, 997)]
    assert [bool(mask[i]) for i in probe] == [splitmix64_py(i ^ key) / 2.0**64 < 0.25 for i in probe]
    assert abs(mask.mean() - 0.25) < 0.01
    # stable: the same seed gives the same split, another seed another
    again = open_token_data(tmp_path / "d", seed=7, val_fraction=0.25).split("val")
    assert again.lengths.tolist() == val.lengths.tolist()
    other = open_token_data(tmp_path / "d", seed=8, val_fraction=0.25).split("val")
    assert other.lengths.tolist() != val.lengths.tolist()


def test_packer_over_binidx_adds_no_separator_and_validation_decodes(tmp_path):
    docs = random_docs(30, seed=4)
    write_binidx(tmp_path / "d", docs, np.int32)
    data = open_token_data(tmp_path / "d", val_fraction=0.3, seed=1)
    key = splitmix64_py(1)
    held = [i for i in range(30) if splitmix64_py(i ^ key) / 2.0**64 < 0.3]
    train_docs = [docs[i] for i in range(30) if i not in held]
    packer = TokenPacker(data.split("train"), None, 9, seed=2)
    assert take(packer, [4, 3, 40, 5]) == reference_blocks(train_docs, None, 9, seed=2)[:52]
    with pytest.raises(ValueError, match="decode"):
        validation_documents(data, 0)
    decode = lambda ids: "".join(chr(65 + t % 26) for t in ids)  # noqa: E731
    got = validation_documents(data, 0, decode=decode)
    assert got == [(len(docs[i]), docs[i]) for i in held]


# ---------------------------------------------------------------------------------------------- packer


@pytest.mark.parametrize("block_len", [2, 17, 64])
def test_packer_blocks_equal_the_reference_over_epochs(prepared, block_len):
    path, train, _ = prepared
    data = open_token_data(path)
    docs = [list(t.encode("utf-8")) for t in train]
    packer = TokenPacker(data.split("train"), data.eos_token_id, block_len, seed=11)
    ref = reference_blocks(docs, 256, block_len, seed=11, epochs=3)
    sizes = [1, 5, 3, 64, 7]
    sizes += [50] * ((len(ref) - sum(sizes) - 2) // 50)
    got = take(packer, sizes)
    assert len(got) > len(ref) * 2 // 3 and got == ref[: len(got)]
    assert [packer.next_block(), packer.next_block()] == ref[len(got) : len(got) + 2]


def _doc_numbers(blocks):
    stream = blocks[0] + [t for b in blocks[1:] for t in b[1:]]  # consecutive blocks share one token
    text = bytes(t for t in stream if t < 256).decode("utf-8")
    return re.findall(r"Document (\d+):", text)


def test_two_ranks_read_disjoint_documents_as_the_reference(prepared):
    path, train, _ = prepared
    data = open_token_data(path)
    docs = [list(t.encode("utf-8")) for t in train]
    seen = []
    for rank in (0, 1):
        packer = TokenPacker(data.split("train"), data.eos_token_id, 33, seed=4, rank=rank, world_size=2)
        ref = reference_blocks(docs, 256, 33, seed=4, rank=rank, world=2, epochs=1)
        got = take(packer, [len(ref)])
        assert got == ref
        assert packer.state_dict()["epoch"] == 1 and packer.state_dict()["block"] == 0
        seen.append(set(_doc_numbers(got)))
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    numbers = {re.match(r"Document (\d+):", t).group(1) for t in train}
    assert seen[0] | seen[1] <= numbers and len(seen[0] | seen[1]) >= len(numbers) - 3  # tails dropped


def test_exact_resume_reads_nothing_it_skips(prepared, monkeypatch):
    path, train, _ = prepared
    docs = [list(t.encode()) for t in train]
    first = TokenPacker(open_token_data(path).split("train"), 256, 400, seed=9)
    ref = reference_blocks(docs, 256, 400, seed=9, epochs=7)
    per_epoch = len(reference_blocks(docs, 256, 400, seed=9, epochs=1))
    assert 21 < per_epoch < 60 and len(ref) > 125  # what follows crosses epoch boundaries
    take(first, [7, 7, 7])
    state = json.loads(json.dumps(first.state_dict()))  # plain ints survive JSON
    assert all(type(v) is int for v in state.values())

    split = open_token_data(path).split("train")
    gathered = []
    real_gather = split.gather

    def counting_gather(doc_ids, eot_id):
        gathered.append(len(doc_ids))
        return real_gather(doc_ids, eot_id)

    monkeypatch.setattr(split, "gather", counting_gather)
    monkeypatch.setattr(split, "document", lambda i: pytest.fail("the packer reads documents one by one"))
    second = TokenPacker(split, 256, 400, seed=9)
    second.load_state_dict(state)
    assert gathered == []  # loading is O(1): nothing read
    nxt = take(second, [1])
    assert nxt == take(first, [1]) == [ref[21]]
    assert sum(gathered) <= 400 // min(map(len, docs)) + 2  # the documents of one block, no more
    # and the rest follows exactly, over epoch boundaries
    assert take(second, [13, 50, 9, 31]) == take(first, [13, 50, 9, 31]) == ref[22:125]


def test_rewinding_the_same_packer_replays_its_blocks(prepared):
    path, _, _ = prepared
    packer = TokenPacker(open_token_data(path).split("train"), 256, 300, seed=2)
    take(packer, [5])
    state = packer.state_dict()
    ahead = take(packer, [4, 60])  # runs into the next epoch
    assert packer.state_dict()["epoch"] >= 1
    packer.load_state_dict(state)  # what a prefetching loader does when it ran ahead
    assert take(packer, [64]) == ahead
    packer.load_state_dict(state)  # within the cached epoch
    assert take(packer, [2]) == ahead[:2]


def test_resume_at_an_epoch_end_and_mismatches(prepared):
    path, train, _ = prepared
    data = open_token_data(path)
    split = data.split("train")
    ref = reference_blocks([list(t.encode()) for t in train], 256, 25, seed=0, epochs=2)
    per_epoch = len(reference_blocks([list(t.encode()) for t in train], 256, 25, seed=0, epochs=1))
    packer = TokenPacker(split, 256, 25)
    take(packer, [per_epoch])
    state = packer.state_dict()
    assert (state["epoch"], state["block"]) == (1, 0)
    again = TokenPacker(split, 256, 25)
    again.load_state_dict({**state, "epoch": 0, "block": per_epoch})  # the end of epoch 0 = the start of 1
    assert take(again, [3]) == ref[per_epoch : per_epoch + 3]

    for key, value, needle in [("world_size", 2, "number of processes"), ("rank", 1, "rank"),
                               ("num_documents", split.num_documents + 1, "data has changed"),
                               ("num_tokens", 5, "data has changed"), ("block_len", 26, "block length"),
                               ("eot_id", -1, "separator"), ("seed", 3, "seed")]:
        with pytest.raises(ValueError, match=needle):
            TokenPacker(split, 256, 25).load_state_dict({**state, key: value})
    with pytest.raises(ValueError, match="not a TokenPacker state"):
        TokenPacker(split, 256, 25).load_state_dict({"epoch": 0, "docs": 3, "buffer": [1, 2]})


def test_packer_refuses_splits_too_small(prepared, tmp_path):
    path, _, _ = prepared
    data = open_token_data(path)
    with pytest.raises(ValueError, match="too few"):
        TokenPacker(data.split("train"), 256, data.split("train").num_tokens + 100)
    write_synthetic(tmp_path / "s", 3, 2, 100, seed=0)
    with pytest.raises(ValueError, match="fewer than the 4 ranks"):
        TokenPacker(open_token_data(tmp_path / "s").split("train"), 99, 2, world_size=4)
    with pytest.raises(ValueError, match="has no documents"):
        TokenPacker(open_token_data(tmp_path / "s").split("val"), 99, 2)
    with pytest.raises(ValueError, match="eot_id 70000 does not fit the uint16"):
        TokenPacker(data.split("train"), 70000, 8)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        TokenPacker(data.split("train"), 256, 8, rank=2, world_size=2)


# ----------------------------------------------------------------------------------- validation, synthetic


def test_validation_documents_of_prepared_data(prepared):
    path, _, val = prepared
    data = open_token_data(path)
    got = validation_documents(data, 0)
    assert got == [(len(t), list(t.encode("utf-8"))) for t in val]
    budget = len(val[0].encode()) + 1
    assert validation_documents(data, budget) == got[:2]  # whole documents until the budget is reached


def test_synthetic_directory(tmp_path):
    path = write_synthetic(tmp_path / "syn", 5000, 12, 70000, seed=1, shard_tokens=20000, val_documents=50)
    data = open_token_data(path)
    train = data.split("train")
    assert data.kind == "prepared" and train.dtype == np.uint32 and data.eos_token_id == 69999
    assert train.num_documents == 5000 and data.split("val").num_documents == 50
    assert len(data.manifest["splits"]["train"]["shards"]) == pytest.approx(train.num_tokens / 20000, abs=1)
    assert 10 < train.num_tokens / 5000 < 14 and train.lengths.min() >= 1
    whole = np.concatenate([train.document(i) for i in range(5000)])
    assert whole.max() < 69999 and np.array_equal(train.tokens(0, train.num_tokens), whole)
    assert train.characters(17) == 4 * len(train.document(17))
    assert data.verify()["files"] == 3 * len(data.manifest["splits"]["train"]["shards"]) + 3
    with pytest.raises(FileExistsError):
        write_synthetic(tmp_path / "syn", 10, 3, 100)
