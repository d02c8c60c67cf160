"""``spikegpt prepare``: the prepared directory against independent counts and encodings, shards, checksums,
reproducible output, refusals, and the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import TINY_RECIPE, make_documents, write_jsonl
from transformers import AutoTokenizer

from spikegpt.tools.cli import main as cli_main
from spikegpt.train.config import load_config
from spikegpt.train.data import is_validation
from spikegpt.train.prepare import main as prepare_main
from spikegpt.train.prepare import prepare
from spikegpt.train.token_data import open_token_data, tokenizer_hash
from spikegpt.train.tokenization import build_tokenizer, byte_tokenizer, encoder

SEED, FRACTION = 3, 0.25


def config_for(corpus, **extra):
    settings = {"data": corpus, "tokenizer": "byte", "val_fraction": FRACTION, "seed": SEED, **extra}
    return load_config(None, [x for k, v in settings.items() for x in (f"--{k}", str(v))])


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = make_documents(90, seed=1)
    docs[5] = "Document 5: naïve café – ünïcödé ✓ " + docs[5]  # characters != bytes
    return write_jsonl(root / "corpus.jsonl", docs), docs


@pytest.fixture(scope="module")
def byte_data(corpus, tmp_path_factory):
    path, _ = corpus
    out = tmp_path_factory.mktemp("byte") / "data"
    summary = prepare(config_for(path), out, shard_tokens=1500, progress=False)
    return out, summary


def test_manifest_counts_match_an_independent_count(corpus, byte_data):
    _, docs = corpus
    out, summary = byte_data
    train = [d for d in docs if not is_validation(d, SEED, FRACTION)]
    val = [d for d in docs if is_validation(d, SEED, FRACTION)]
    assert train and val
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "spikegpt-tokens" and m["version"] == 1
    assert m["vocab_size"] == 257 and m["eos_token_id"] == 256 and m["token_dtype"] == "uint16"
    assert m["seed"] == SEED and m["val_fraction"] == FRACTION and m["source"]["data"] == str(corpus[0])
    for name, texts in (("train", train), ("val", val)):
        split = m["splits"][name]
        assert split["documents"] == summary["documents"][name] == len(texts)
        assert split["tokens"] == summary["tokens"][name] == sum(len(t.encode("utf-8")) for t in texts)
        assert split["characters"] == sum(len(t) for t in texts)
        assert sum(s["documents"] for s in split["shards"]) == len(texts)
        for shard in split["shards"]:
            for entry in shard["files"].values():
                assert (out / entry["name"]).stat().st_size == entry["bytes"] and len(entry["sha256"]) == 64
    assert len(m["splits"]["train"]["shards"]) >= 5  # 1500-token shards
    # the tokenizer is saved and is the one the hash names
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert m["tokenizer_hash"] == tokenizer_hash(tok) == tokenizer_hash(byte_tokenizer())


def test_documents_and_token_ranges_across_shards(corpus, byte_data):
    _, docs = corpus
    out, _ = byte_data
    train = [d for d in docs if not is_validation(d, SEED, FRACTION)]
    data = open_token_data(out)
    split = data.split("train")
    assert data.kind == "prepared" and data.tokenizer_dir == out / "tokenizer"
    assert split.num_documents == len(train)
    for i, text in enumerate(train):
        assert split.document(i).tolist() == list(text.encode("utf-8"))
        assert split.characters(i) == len(text)
    assert split.lengths.tolist() == [len(t.encode()) for t in train]
    flat = [b for t in train for b in t.encode("utf-8")]
    shards = data.manifest["splits"]["train"]["shards"]
    boundary = shards[0]["tokens"] + shards[1]["tokens"]  # start of the third shard
    for start, stop in [(0, 10), (boundary - 7, boundary + 9), (shards[0]["tokens"] - 1, boundary + 1),
                        (100, len(flat)), (len(flat) - 3, len(flat) + 50)]:
        assert split.tokens(start, stop).tolist() == flat[start:stop]
    val = [d for d in docs if is_validation(d, SEED, FRACTION)]
    vsplit = data.split("val")
    assert [vsplit.document(i).tolist() for i in range(vsplit.num_documents)] == [list(t.encode()) for t in val]


def test_verify_detects_corruption_and_naming_the_shard(byte_data, tmp_path):
    out, _ = byte_data
    assert open_token_data(out).verify()["ok"]
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, raw in tree(out).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(raw)
    victim = copy / "train-00002.bin"
    raw = bytearray(victim.read_bytes())
    raw[11] ^= 0x01
    victim.write_bytes(bytes(raw))
    data = open_token_data(copy)  # same size: opens fine
    with pytest.raises(ValueError, match=r"train-00002\.bin.*checksum"):
        data.verify()
    victim.write_bytes(bytes(raw[:-2]))
    with pytest.raises(ValueError, match=r"train-00002\.bin has \d+ bytes"):
        open_token_data(copy)
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=r"train-00002\.bin"):
        open_token_data(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest\.json is unreadable"):
        open_token_data(copy)
    (copy / "manifest.json").write_text(json.dumps({"format": "spikegpt-tokens", "version": 99}))
    with pytest.raises(ValueError, match=r"manifest\.json has format version 99"):
        open_token_data(copy)


def test_prepare_again_gives_identical_files(corpus, byte_data, tmp_path):
    out, _ = byte_data
    prepare(config_for(corpus[0]), tmp_path / "again", shard_tokens=1500, progress=False)
    assert tree(tmp_path / "again") == tree(out)


def test_bpe_tokenizer_as_the_trainer_builds_it(corpus, tmp_path):
    path, docs = corpus
    config = config_for(path, tokenizer="bpe", tokenizer_vocab_size=300)
    summary = prepare(config, tmp_path / "bpe", batch_docs=7, progress=False)
    train = [d for d in docs if not is_validation(d, SEED, FRACTION)]
    tok = build_tokenizer("bpe", iter(train), 300)  # trained here, independently, on the training split
    encode = encoder(tok)
    data = open_token_data(tmp_path / "bpe")
    split = data.split("train")
    assert data.tokenizer_hash == tokenizer_hash(tok) and data.vocab_size == len(tok) == 300
    assert data.eos_token_id == tok.eos_token_id == 0
    assert [split.document(i).tolist() for i in range(split.num_documents)] == [encode(t) for t in train]
    assert summary["tokens"]["train"] == sum(len(encode(t)) for t in train)
    prepare(config, tmp_path / "bpe2", batch_docs=50, progress=False)
    assert tree(tmp_path / "bpe2") == tree(tmp_path / "bpe")


def test_refusals_leave_everything_intact(corpus, byte_data, tmp_path):
    path, _ = corpus
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="busy"):
        prepare(config_for(path), busy, progress=False)
    assert os.listdir(busy) == ["keep.txt"] and (busy / "keep.txt").read_text() == "mine"
    empty_dir = tmp_path / "empty_ok"
    empty_dir.mkdir()
    prepare(config_for(path), empty_dir, progress=False)  # an empty directory is filled
    assert (empty_dir / "manifest.json").is_file()
    # no training documents: an error, and nothing left behind
    write_jsonl(tmp_path / "none.jsonl", [])
    with pytest.raises(ValueError, match="no training documents"):
        prepare(config_for(tmp_path / "none.jsonl"), tmp_path / "out_none", progress=False)
    # already tokenized data
    with pytest.raises(ValueError, match="already tokenized"):
        prepare(config_for(byte_data[0]), tmp_path / "out_again", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["busy", "empty_ok", "none.jsonl"]


def test_an_interrupted_prepare_leaves_no_directory(corpus, tmp_path, monkeypatch):
    import spikegpt.train.prepare as prepare_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "write_manifest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(config_for(corpus[0]), tmp_path / "out", progress=False)
    assert os.listdir(tmp_path) == []


def test_command_line_prints_a_json_summary_and_verifies(corpus, tmp_path, capsys):
    path, docs = corpus
    code = cli_main(["prepare", "--config", str(TINY_RECIPE), "--data", str(path), "--tokenizer", "byte",
                     "--output", str(tmp_path / "cli"), "--shard_tokens", "4096", "--progress", "false",
                     "--num_threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    held = sum(is_validation(d, 0, 0.05) for d in docs)  # the recipe's seed and val_fraction
    assert summary["documents"] == {"train": len(docs) - held, "val": held}
    assert summary["tokens"]["train"] + summary["tokens"]["val"] == sum(len(d.encode()) for d in docs)
    assert summary["malformed_records"] == 0 and summary["tokens_per_s"] > 0
    report = prepare_main(["--verify", str(tmp_path / "cli")])
    assert report["ok"] and report["files"] == 3 * (summary["shards"]["train"] + summary["shards"]["val"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    code = cli_main(["prepare", "--config", str(TINY_RECIPE), "--data", str(path), "--output", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().startswith("spikegpt: error:") and "cli" in err
    with pytest.raises(SystemExit):
        prepare_main(["--data", str(path)])  # no --config: a usage error
    assert "--config is required" in capsys.readouterr().err


def test_token_data_does_not_import_datasets():
    code = ("import sys, spikegpt, spikegpt.train.token_data; "
            "print([m for m in sys.modules if m.split('.')[0] == 'datasets'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_prepared_shards_are_plain_arrays(byte_data):
    """The layout is usable without this package: raw uint16 + int64 .npy offsets."""
    out, _ = byte_data
    m = json.loads((out / "manifest.json").read_text())
    shard = m["splits"]["train"]["shards"][1]
    tokens = np.fromfile(out / shard["files"]["tokens"]["name"], dtype="<u2")
    offsets = np.load(out / shard["files"]["offsets"]["name"])
    chars = np.load(out / shard["files"]["characters"]["name"])
    assert offsets[0] == 0 and offsets[-1] == len(tokens) == shard["tokens"] and len(chars) == shard["documents"]
    first = bytes(tokens[offsets[0] : offsets[1]].astype(np.uint8)).decode("utf-8")
    assert first.startswith("Document ") and len(first) == chars[0]
