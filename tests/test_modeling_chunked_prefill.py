"""Chunked prefill: a long no-grad forward runs in chunks of ``prefill_chunk_size`` tokens carrying the state.

The reference is always the same call unchunked (``prefill_chunk_size=0``): one parallel forward, itself tested
against an independent implementation in ``test_modeling_spikegpt.py``.
"""

import json

import pytest
import torch

from spikegpt import (
    SpikeGPTConfig,
    SpikeGPTForCausalLM,
    SpikeGPTForSequenceClassification,
    SpikeGPTModel,
    SpikeGPTState,
)
from spikegpt.configuration_spikegpt import DEFAULT_PREFILL_CHUNK_SIZE, RUNTIME_FIELDS

V, T = 61, 40
EXACT = dict(rtol=1e-9, atol=1e-9)  # float64


def make(cls=SpikeGPTForCausalLM, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2)
    cfg.update(kw)
    return cls(SpikeGPTConfig(**cfg)).to(dtype).eval()


@pytest.fixture(scope="module")
def lm():
    return make()


def ids_for(B, n, seed=1):
    return torch.randint(0, V, (B, n), generator=torch.Generator().manual_seed(seed))


def masks():
    """(name, (2, T) mask): padding patterns where chunks of 7 tokens are all padding for a row or for all."""
    left = torch.ones(2, T, dtype=torch.long)
    left[1, :23] = 0  # row 1: three whole chunks of padding, then a partial one
    middle = torch.ones(2, T, dtype=torch.long)
    middle[0, 14:28] = 0  # row 0: chunks [14, 21) and [21, 28) are all padding
    middle[1, ::3] = 0
    everyone = torch.ones(2, T, dtype=torch.long)
    everyone[:, 7:21] = 0  # a chunk that is padding for every row
    return [("no-mask", None), ("left-padding", left), ("padding-chunks-in-the-middle", middle),
            ("chunk-padded-for-all-rows", everyone)]


def a_state(model, B=2):
    with torch.no_grad():
        return model(ids_for(B, 9, seed=7), use_cache=True).state


def assert_states_close(a, b, **tol):
    for name, x, y in zip(("att_shift", "ffn_shift", "wkv_num", "wkv_den", "wkv_max", "att_mem", "ffn_mem"),
                          a.tensors(), b.tensors()):
        torch.testing.assert_close(x, y, msg=name, **tol)


def both(model, chunk=7, **kw):
    """(unchunked, chunked) outputs of the same no-grad call."""
    with torch.no_grad():
        return model(prefill_chunk_size=0, **kw), model(prefill_chunk_size=chunk, **kw)


@pytest.mark.parametrize("name,mask", masks(), ids=[n for n, _ in masks()])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "continuing-a-state"])
def test_causal_lm_chunked_equals_unchunked_fp64(lm, name, mask, with_state):
    ids = ids_for(2, T)
    state = a_state(lm) if with_state else None
    ref, got = both(lm, input_ids=ids, attention_mask=mask, state=state, labels=ids, use_cache=True,
                    output_hidden_states=True)
    torch.testing.assert_close(got.logits, ref.logits, **EXACT)
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-12, atol=0)  # the loss of the same logits
    assert_states_close(got.state, ref.state, **EXACT)
    assert len(got.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(got.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, **EXACT)


def test_mask_over_past_and_new_tokens_with_a_state(lm):
    """With a state, a (B, past + T) mask (transformers' convention) is read by its last T columns, chunked too."""
    ids, mask = ids_for(2, T), masks()[2][1]
    past = torch.ones(2, 9, dtype=torch.long)
    ref, got = both(lm, input_ids=ids, attention_mask=torch.cat([past, mask], 1), state=a_state(lm), use_cache=True)
    with torch.no_grad():
        plain = lm(ids, attention_mask=mask, state=a_state(lm), use_cache=True, prefill_chunk_size=0)
    for out in (ref, got):
        torch.testing.assert_close(out.logits, plain.logits, **EXACT)
        assert_states_close(out.state, plain.state, **EXACT)


@pytest.mark.parametrize("chunk", [1, 5, 16, 39], ids=lambda c: f"chunk-{c}")
def test_base_model_chunked_equals_unchunked_with_inputs_embeds(chunk):
    model = make(SpikeGPTModel)
    ids = ids_for(2, T)
    emb = model.get_input_embeddings()(ids).detach()
    mask = masks()[2][1]
    ref, got = both(model, chunk, inputs_embeds=emb, attention_mask=mask, use_cache=True, output_hidden_states=True)
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, **EXACT)
    assert_states_close(got.state, ref.state, **EXACT)
    for a, b in zip(got.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, **EXACT)
    with torch.no_grad():  # input_ids give the same as their embedding rows, chunked too
        by_ids = model(ids, attention_mask=mask, prefill_chunk_size=chunk)
    torch.testing.assert_close(by_ids.last_hidden_state, got.last_hidden_state, **EXACT)


def test_fp32_chunked_within_rounding_of_unchunked():
    model = make(dtype=torch.float32)
    ids = ids_for(2, T)
    mask = masks()[1][1]
    ref, got = both(model, 8, input_ids=ids, attention_mask=mask, labels=ids, use_cache=True)
    torch.testing.assert_close(got.logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-6, atol=1e-6)
    assert_states_close(got.state, ref.state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keep", [1, 3, 9, T + 5], ids=lambda k: f"keep-{k}")
def test_logits_to_keep_computes_only_the_last_k_positions(lm, keep):
    """Only the kept positions reach the head, and the stack sees one chunk at a time: no per-token output of
    an earlier chunk is computed into a (B, T, ...) tensor."""
    ids = ids_for(2, T)
    mask = masks()[1][1]
    with torch.no_grad():
        ref = lm(ids, attention_mask=mask, use_cache=True, prefill_chunk_size=0)
    head_rows, stack_lengths = [], []
    hooks = [lm.head.register_forward_hook(lambda m, i, o: head_rows.append(i[0].shape[1])),
             lm.model.register_forward_hook(lambda m, i, o: stack_lengths.append(o.last_hidden_state.shape[1]))]
    try:
        with torch.no_grad():
            got = lm(ids, attention_mask=mask, use_cache=True, logits_to_keep=keep, prefill_chunk_size=7)
    finally:
        for h in hooks:
            h.remove()
    k = min(keep, T)
    assert got.logits.shape == (2, k, V)
    torch.testing.assert_close(got.logits, ref.logits[:, -k:], **EXACT)
    assert_states_close(got.state, ref.state, **EXACT)
    assert sum(head_rows) == k
    assert stack_lengths == [7] * 5 + [5]


def test_loss_shift_crosses_chunk_boundaries(lm):
    """labels, shift_labels and num_items_in_batch, with -100 on both sides of chunk boundaries: the chunked
    loss equals the unchunked one and a hand-written cross-entropy over the whole sequence."""
    ids = ids_for(2, T)
    labels = ids.clone()
    labels[0, 7] = labels[1, 14] = labels[0, 13] = -100  # around the boundaries of chunks of 7
    ref, got = both(lm, input_ids=ids, labels=labels)
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-12, atol=0)
    lg = ref.logits[:, :-1].reshape(-1, V).float()
    manual = torch.nn.functional.cross_entropy(lg, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(got.loss, manual, rtol=1e-6, atol=0)
    shift = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    ref, got = both(lm, input_ids=ids, shift_labels=shift, num_items_in_batch=50)
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-12, atol=0)


def test_batch_invariant_mode_chunks_each_row_alone():
    model = make(batch_invariant=True)
    ids = ids_for(2, T)
    mask = masks()[2][1]
    ref, got = both(model, input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=4)
    torch.testing.assert_close(got.logits, ref.logits, **EXACT)
    assert_states_close(got.state, ref.state, **EXACT)
    with torch.no_grad():  # still bit-identical to each row alone (chunked alike)
        for b in range(2):
            real = mask[b].nonzero()[:, 0]
            alone = model(ids[b : b + 1, real], use_cache=True, logits_to_keep=4, prefill_chunk_size=7)
            cols = real[real >= T - 4] - (T - 4)  # the row's real positions among the last 4
            assert torch.equal(got.logits[b, cols], alone.logits[0, -len(cols):])
            for x, y in zip(got.state.tensors(), alone.state.tensors()):
                assert torch.equal(x[:, b], y[:, 0])


def test_sequence_classification_reads_a_chunked_stack():
    """The classifier's stack chunks by the config (its forward takes no chunk argument)."""
    clf = make(SpikeGPTForSequenceClassification, num_labels=3, prefill_chunk_size=0)
    ids, mask = ids_for(2, T), masks()[1][1]
    with torch.no_grad():
        ref = clf(ids, attention_mask=mask, use_cache=True)
        clf.config.prefill_chunk_size = 7
        got = clf(ids, attention_mask=mask, use_cache=True)
    torch.testing.assert_close(got.logits, ref.logits, **EXACT)
    assert_states_close(got.state, ref.state, **EXACT)


def test_forwards_that_record_gradients_are_not_chunked(lm):
    """Training keeps the one parallel call: with autograd on, neither the config nor the argument chunks."""
    calls = []
    hook = lm.model.register_forward_hook(lambda m, i, o: calls.append(o.last_hidden_state.shape[1]))
    try:
        lm.config.prefill_chunk_size = 4
        out = lm(ids_for(2, T), labels=ids_for(2, T), prefill_chunk_size=4)
        assert out.loss.requires_grad and calls == [T]
        with torch.no_grad():
            lm(ids_for(2, T))
        assert calls == [T] + [4] * 10  # the config's size, without gradients
    finally:
        hook.remove()
        lm.config.prefill_chunk_size = DEFAULT_PREFILL_CHUNK_SIZE


def test_generate_prefills_in_chunks_and_gives_the_same_tokens_and_scores(lm):
    ids = ids_for(2, T)
    mask = masks()[1][1]
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, return_dict_in_generate=True,
              output_scores=True, output_logits=True)
    ref = lm.generate(ids, prefill_chunk_size=0, **kw)
    lengths = []
    hook = lm.model.register_forward_hook(lambda m, i, o: lengths.append(o.last_hidden_state.shape[1]))
    try:
        got = lm.generate(ids, prefill_chunk_size=16, **kw)  # transformers' generation-config field
    finally:
        hook.remove()
    assert lengths == [16, 16, 8] + [1] * 4
    assert torch.equal(got.sequences, ref.sequences)
    for a, b in zip(got.scores + got.logits, ref.scores + ref.logits):
        torch.testing.assert_close(a, b, **EXACT)
    lm.config.prefill_chunk_size = 6
    try:  # the config's size
        assert torch.equal(lm.generate(ids, **kw).sequences, ref.sequences)
    finally:
        lm.config.prefill_chunk_size = DEFAULT_PREFILL_CHUNK_SIZE


def test_short_inputs_take_the_one_call_path_bit_for_bit(lm):
    ids = ids_for(2, T)
    with torch.no_grad():
        assert torch.equal(lm(ids, prefill_chunk_size=T).logits, lm(ids, prefill_chunk_size=0).logits)
        assert torch.equal(lm(ids).logits, lm(ids, prefill_chunk_size=0).logits)  # default 1024 > T


@pytest.mark.parametrize("bad", [-1, 2.5, "8", True], ids=["negative", "float", "string", "bool"])
def test_bad_chunk_sizes_are_errors_naming_the_field(lm, bad):
    with pytest.raises(ValueError, match="SpikeGPTConfig.prefill_chunk_size must be None or an integer >= 0"):
        SpikeGPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, prefill_chunk_size=bad)
    with pytest.raises(ValueError, match="prefill_chunk_size must be None .* or an integer >= 0"), torch.no_grad():
        lm(ids_for(1, 5), prefill_chunk_size=bad)


def test_chunk_size_is_a_runtime_field_not_saved(tmp_path):
    assert "prefill_chunk_size" in RUNTIME_FIELDS
    assert SpikeGPTConfig().prefill_chunk_size == DEFAULT_PREFILL_CHUNK_SIZE == 1024
    for off in (0, None):
        assert SpikeGPTConfig(prefill_chunk_size=off).prefill_chunk_size == off
    model = make(prefill_chunk_size=16)
    model.save_pretrained(tmp_path)
    assert "prefill_chunk_size" not in json.loads((tmp_path / "config.json").read_text())
    loaded = SpikeGPTForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.prefill_chunk_size == DEFAULT_PREFILL_CHUNK_SIZE
    state = SpikeGPTState.empty(model.config, 1, dtype=torch.float64)
    with torch.no_grad():  # and a state from a chunked run continues an unchunked one
        a = model(ids_for(1, T), state=state, use_cache=True).state
        b = model(ids_for(1, T), state=state, use_cache=True, prefill_chunk_size=0).state
    assert_states_close(a, b, **EXACT)
