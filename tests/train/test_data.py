import inspect
import itertools
import json
import logging
import textwrap

import pytest
import zstandard
from train_helpers import make_documents, write_jsonl

from spikegpt.train.builtin_corpus import python_docs
from spikegpt.train.data import BlockPacker, TextSource, builtin_text, is_validation, validation_documents

BAD_LINES = [
    b"{not json\n",
    b'{"text": "bad \xff byte"}\n',
    b'{"text": ""}\n',
    b'{"text": 42}\n',
    b'{"other": "no text field"}\n',
    b'["an", "array"]\n',
]


def _mixed_jsonl_bytes(docs):
    good = [json.dumps({"text": d}).encode() + b"\n" for d in docs]
    out = []
    for i, line in enumerate(good):  # a bad line after every good one, then a blank line
        out.append(line)
        if i < len(BAD_LINES):
            out.append(BAD_LINES[i])
    out.append(b"\n")
    return b"".join(out)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.zst"])
def test_malformed_records_are_skipped_counted_and_warned_once(tmp_path, caplog, suffix):
    docs = make_documents(10)
    raw = _mixed_jsonl_bytes(docs)
    path = tmp_path / f"d{suffix}"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw) if suffix.endswith(".zst") else raw)
    src = TextSource(str(path))
    with caplog.at_level(logging.WARNING, logger="spikegpt.train.data"):
        texts = list(src.texts())
        texts_again = list(src.texts())
    assert texts == docs == texts_again
    assert src.malformed == len(BAD_LINES)
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 1
    assert f"{path}:2" in warnings[0].getMessage()  # the first bad record is named


def test_empty_file_gives_no_documents_and_a_clear_packer_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    src = TextSource(str(path))
    assert list(src.texts()) == []
    packer = BlockPacker(src, lambda t: list(t.encode()), 256, 8)
    with pytest.raises(ValueError, match="no training documents"):
        packer.next_block()


def test_text_units(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("para one\nline two\n\n\npara two\n\nbad\n", encoding="utf-8")
    assert list(TextSource(str(path), text_unit="paragraph").texts()) == ["para one\nline two", "para two", "bad"]
    assert list(TextSource(str(path), text_unit="line").texts()) == ["para one", "line two", "para two", "bad"]
    assert list(TextSource(str(path), text_unit="document").texts()) == [
        "para one\nline two\n\n\npara two\n\nbad"
    ]


def test_parquet_and_directory_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_documents(5)
    pq.write_table(pa.table({"text": docs[:3] + [None], "id": [0, 1, 2, 3]}), tmp_path / "a.parquet")
    src = TextSource(str(tmp_path / "a.parquet"))
    assert list(src.texts()) == docs[:3] and src.malformed == 1
    d = tmp_path / "dir"
    d.mkdir()
    write_jsonl(d / "b.jsonl", docs[3:])
    write_jsonl(d / "a.jsonl", docs[:3])
    assert list(TextSource(str(d)).texts()) == docs  # files in name order


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        TextSource(str(tmp_path / "nothere.jsonl"))
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-dataset"):
        TextSource("no-such-org/no-such-dataset")  # HF_HUB_OFFLINE=1 in tests
    with pytest.raises(ValueError, match="builtin:nope"):
        TextSource("builtin:nope")


def test_validation_split_is_fixed_by_the_seed_and_order_free():
    docs = make_documents(400)
    val0 = {d for d in docs if is_validation(d, 0, 0.25)}
    assert val0 == {d for d in reversed(docs) if is_validation(d, 0, 0.25)}
    assert 60 <= len(val0) <= 140  # ~100 expected; binomial sd ~8.7
    val1 = {d for d in docs if is_validation(d, 1, 0.25)}
    assert val1 != val0
    assert not any(is_validation(d, 0, 0.0) for d in docs)


def test_validation_documents_respect_budget_and_split(tmp_path):
    docs = make_documents(200)
    src = TextSource(str(write_jsonl(tmp_path / "c.jsonl", docs)))
    enc = lambda t: list(t.encode())  # noqa: E731
    val = validation_documents(src, 3, 0.2, 0, enc)
    assert [t for t, _ in val] == [d for d in docs if is_validation(d, 3, 0.2)]
    small = validation_documents(src, 3, 0.2, 500, enc)
    assert sum(len(ids) for _, ids in small[:-1]) < 500 <= sum(len(ids) for _, ids in small)


def _packer(src, rank=0, world=1, block=16, val_fraction=0.0, seed=0):
    return BlockPacker(src, lambda t: list(t.encode()), 256, block, seed=seed, val_fraction=val_fraction,
                       shuffle_buffer=1000, rank=rank, world_size=world)


def test_packing_long_document_and_exact_token_coverage(tmp_path):
    long_doc = "x" * 100 + " the end"
    docs = ["short one", long_doc, "tail doc"]
    src = TextSource(str(write_jsonl(tmp_path / "p.jsonl", docs)))
    packer = _packer(src, block=16)
    blocks = [packer.next_block() for _ in range(9)]
    assert all(len(b) == 16 for b in blocks)
    # consecutive blocks share exactly one token; together they are the stream [eot] d [eot] d ...
    stream = blocks[0] + [t for b in blocks[1:] for t in b[1:]]
    for a, b in zip(blocks, blocks[1:]):
        assert a[-1] == b[0]
    shuffled = [t for t in src.texts(shuffle_seed=0, buffer_size=1000, epoch=0)]
    expected = [t for d in shuffled for t in [256, *d.encode()]]
    assert stream[: len(expected)] == expected
    assert sorted(shuffled) == sorted(docs)


def test_ranks_read_disjoint_documents_covering_the_epoch(tmp_path):
    docs = make_documents(30)
    src = TextSource(str(write_jsonl(tmp_path / "r.jsonl", docs)))
    seen = []
    for rank in range(2):
        p = _packer(src, rank=rank, world=2, val_fraction=0.2)
        epoch0 = itertools.takewhile(lambda item: item[0] == 0, p._doc_stream(0, 0))
        seen.append([text for _, _, text in epoch0])
    assert not set(seen[0]) & set(seen[1])
    train_docs = {d for d in docs if not is_validation(d, 0, 0.2)}
    assert set(seen[0]) | set(seen[1]) == train_docs


def test_packer_resumes_exactly_across_epochs(tmp_path):
    src = TextSource(str(write_jsonl(tmp_path / "e.jsonl", make_documents(6, max_words=25))))
    a = _packer(src, block=24)
    first = [a.next_block() for _ in range(5)]
    state = json.loads(json.dumps(a.state_dict()))  # plain data
    rest = [a.next_block() for _ in range(150)]  # runs through several epochs
    assert a.position.epoch >= 2
    b = _packer(src, block=24)
    b.load_state_dict(state)
    assert [b.next_block() for _ in range(150)] == rest
    assert first != rest[:5]


def test_builtin_corpus_holds_pydoc_topics_and_stdlib_docstrings():
    import json as json_module
    import pydoc_data.topics

    docs = python_docs()
    assert len(docs) > 300 and sum(map(len, docs)) > 1_000_000
    assert pydoc_data.topics.topics["assert"].strip() in docs
    ref = inspect.cleandoc(json_module.dumps.__doc__)
    assert any(ref in d for d in docs)
    src = TextSource("builtin:python-docs")
    assert tuple(src.texts()) == docs


def test_builtin_text_is_the_documents_separated_by_blank_lines():
    text = builtin_text("builtin:python-docs")
    docs = python_docs()
    assert text.startswith(docs[0] + "\n\n") and text.endswith("\n\n" + docs[-1])
    assert len(text) == sum(map(len, docs)) + 2 * (len(docs) - 1)
    with pytest.raises(ValueError, match="unknown built-in corpus 'builtin:nosuch'"):
        builtin_text("builtin:nosuch")
    with pytest.raises(ValueError, match="'python-docs' is not a built-in corpus"):
        builtin_text("python-docs")


def test_docstring_extraction_order():
    from spikegpt.train.builtin_corpus import module_docstrings

    source = textwrap.dedent('''
        """Module doc."""
        def f():
            """F doc."""
        class C:
            """C doc."""
            def m(self):
                """M doc."""
    ''').encode()
    assert module_docstrings(source) == "Module doc.\n\nF doc.\n\nC doc.\n\nM doc."


def test_hub_records_use_text_field_and_count_malformed(monkeypatch):
    """The Hub branch (load_dataset(..., streaming=True)) without network: load_dataset is replaced by a
    local iterable dataset of records shaped like a Hub dataset's."""
    import datasets

    calls = {}

    def fake_load_dataset(name, config=None, split=None, streaming=False, revision=None):
        calls.update(name=name, config=config, split=split, streaming=streaming, revision=revision)
        body = ["first doc", "", None, "second doc"]
        return datasets.Dataset.from_dict({"body": body, "id": [1, 2, 3, 4]}).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = TextSource("some-org/corpus", data_config="en", split="validation", revision="v1", text_field="body")
    assert calls == {"name": "some-org/corpus", "config": "en", "split": "validation", "streaming": True,
                     "revision": "v1"}
    assert list(src.texts()) == ["first doc", "second doc"] and src.malformed == 2
    wrong = TextSource("some-org/corpus", text_field="text")
    with pytest.raises(ValueError, match="has no field 'text'.*'body'"):
        list(wrong.texts())
