"""``batch_invariant=True``: a row's outputs are bit-identical (float32, CPU) whatever else is in the batch and
however it is padded, in parallel mode and in generation, on a model whose neurons fire."""

import torch

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM, SpikeGPTForSequenceClassification
from spikegpt.recording import record_spikes

LENGTHS = (37, 5, 70)


def model_pair(cls=SpikeGPTForCausalLM, **kw):
    """The same weights twice: batch_invariant on (the batched runs) and off (the rows alone)."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, hidden_size=64, num_hidden_layers=3, **kw)
    a = cls(SpikeGPTConfig(**cfg, batch_invariant=True)).eval()
    b = cls(SpikeGPTConfig(**cfg)).eval()
    b.load_state_dict(a.state_dict())
    return a, b


def rows(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (1, n), generator=g) for n in LENGTHS]


def left_padded(rs, pad=0):
    T = max(r.shape[1] for r in rs)
    ids = torch.full((len(rs), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rs), T, dtype=torch.long)
    for i, r in enumerate(rs):
        ids[i, T - r.shape[1]:], mask[i, T - r.shape[1]:] = r[0], 1
    return ids, mask


def test_the_test_model_fires():
    _, alone = model_pair()
    with record_spikes(alone) as rec, torch.no_grad():
        alone(rows()[2])
    rates = [r for name, r in rec.rates().items() if name.endswith("_lif")]
    assert all(0.01 <= r <= 0.5 for r in rates), rates


def test_parallel_mode_rows_are_bit_identical_to_rows_alone():
    batched, alone = model_pair()
    rs = rows()
    ids, mask = left_padded(rs)
    with torch.no_grad():
        out = batched(ids, attention_mask=mask, use_cache=True, output_hidden_states=True)
        for i, r in enumerate(rs):
            want = alone(r, use_cache=True, output_hidden_states=True)
            real = mask[i].bool()
            assert torch.equal(out.logits[i, real], want.logits[0]), i
            assert all(torch.equal(h[i, real], w[0]) for h, w in zip(out.hidden_states, want.hidden_states))
            assert all(torch.equal(a[:, i], b[:, 0]) for a, b in zip(out.state.tensors(), want.state.tensors()))
            assert (out.logits[i, ~real] == 0).all()  # padded positions carry nothing


def test_any_padding_pattern_and_an_incoming_state():
    batched, alone = model_pair()
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 97, (3, 50), generator=g)
    mask = torch.rand(3, 50, generator=g) > 0.3
    with torch.no_grad():
        state = alone(torch.randint(0, 97, (3, 20), generator=g), use_cache=True).state
        out = batched(ids, attention_mask=mask.long(), state=state, use_cache=True)
        for i in range(3):
            want = alone(ids[i : i + 1, mask[i]], state=state.index_select(torch.tensor([i])), use_cache=True)
            assert torch.equal(out.logits[i, mask[i]], want.logits[0])
            assert all(torch.equal(a[:, i], b[:, 0]) for a, b in zip(out.state.tensors(), want.state.tensors()))


def test_generation_rows_are_bit_identical_to_rows_alone():
    batched, alone = model_pair(pad_token_id=0)
    rs = rows(seed=1)
    ids, mask = left_padded(rs)
    kw = dict(max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_logits=True)
    out = batched.generate(ids, attention_mask=mask, **kw)
    for i, r in enumerate(rs):
        want = alone.generate(r, attention_mask=torch.ones_like(r), **kw)
        assert torch.equal(out.sequences[i, ids.shape[1]:], want.sequences[0, r.shape[1]:]), i
        assert all(torch.equal(a[i], b[0]) for a, b in zip(out.logits, want.logits)), i


def test_sequence_classification_rows_are_bit_identical():
    batched, alone = model_pair(SpikeGPTForSequenceClassification, num_labels=3)
    rs = rows(seed=2)
    ids, mask = left_padded(rs)
    with torch.no_grad():
        got = batched(ids, attention_mask=mask).logits
        for i, r in enumerate(rs):
            assert torch.equal(got[i], alone(r).logits[0])


def test_all_padding_rows_and_batches_keep_their_state():
    batched, _ = model_pair()
    ids = torch.randint(0, 97, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1] = 0
    with torch.no_grad():
        state = batched(ids, use_cache=True).state
        out = batched(ids, attention_mask=mask, state=state, use_cache=True)
        assert all(torch.equal(a[:, 1], b[:, 1]) for a, b in zip(out.state.tensors(), state.tensors()))
        out = batched(ids, attention_mask=torch.zeros_like(mask), state=state, use_cache=True)
        assert all(torch.equal(a, b) for a, b in zip(out.state.tensors(), state.tensors()))
