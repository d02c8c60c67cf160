import math

import pytest
import torch
from train_helpers import write_jsonl

import spikegpt
from spikegpt.train.evaluate import evaluate_model
from spikegpt.train.evaluation import build_streams, stream_nats
from spikegpt.train.tokenization import byte_tokenizer

DOCS = [
    "Spiking neurons fire: the membrane charges, crosses 1.0 and resets. " * 3 + "Ünïcödé ends it.",
    "A short second document.",
]


def _model(seed=0, spiking=True):
    torch.manual_seed(seed)
    cfg = spikegpt.SpikeGPTConfig(vocab_size=257, hidden_size=32, num_hidden_layers=2, spiking=spiking,
                                  eos_token_id=256, context_length=16)
    return spikegpt.SpikeGPTForCausalLM(cfg).eval()


def _direct_nats(model, text):
    """Loss of one full-length forward over [eot] + bytes(text), times the number of predictions."""
    ids = torch.tensor([[256, *text.encode("utf-8")]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    return float(loss) * (ids.shape[1] - 1), ids.shape[1] - 1


def test_build_streams_balances_and_counts_characters():
    docs = [("aaaa", [1] * 4), ("bb", [2] * 2), ("c", [3]), ("ddd", [4] * 3)]
    s = build_streams(docs, eot_id=0, n_streams=2)
    assert sorted(map(len, s.streams)) == [7, 7]
    assert sorted(t for st in s.streams for t in st) == sorted([0] * 4 + [1] * 4 + [2] * 2 + [3] + [4] * 3)
    assert s.characters == 4 + 2 + 1 + 3 + 2  # + one separator per stream holding two documents
    assert all(st[0] == 0 for st in s.streams)


@pytest.mark.parametrize("spiking", [True, False])
def test_windowed_state_carrying_equals_one_long_forward(spiking):
    model = _model(spiking=spiking)
    streams = [[256, *d.encode()] for d in DOCS]
    nats, count = stream_nats(model, streams, window=16, batch_size=2)  # several windows, padded batch
    ref = [_direct_nats(model, d) for d in DOCS]
    assert count == sum(n for _, n in ref)
    assert nats == pytest.approx(sum(x for x, _ in ref), rel=1e-5)


def test_evaluate_on_a_saved_model_equals_the_direct_loss(tmp_path):
    model = _model(seed=1)
    model.save_pretrained(tmp_path / "m")
    byte_tokenizer().save_pretrained(tmp_path / "m")
    data = write_jsonl(tmp_path / "d.jsonl", DOCS)
    out = evaluate_model(str(tmp_path / "m"), str(data), window=16, batch_size=2, progress=False)
    ref = [_direct_nats(model, d) for d in DOCS]
    nats, count = sum(x for x, _ in ref), sum(n for _, n in ref)
    chars = sum(len(d) for d in DOCS)  # one document per stream: no separators
    assert out["tokens"] == count and out["characters"] == chars and out["documents"] == 2
    assert out["loss"] == pytest.approx(nats / count, rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(nats / count), rel=1e-5)
    assert out["bpc"] == pytest.approx(nats / math.log(2) / chars, rel=1e-5)
    # one stream: the documents laid end to end, longest first, separated by the end-of-text token
    one = evaluate_model(str(tmp_path / "m"), str(data), window=16, batch_size=1, progress=False)
    joined = [256, *DOCS[0].encode(), 256, *DOCS[1].encode()]
    with torch.no_grad():
        ids = torch.tensor([joined])
        loss = float(model(input_ids=ids, labels=ids).loss)
    assert one["loss"] == pytest.approx(loss, rel=1e-5) and one["characters"] == chars + 1
