"""``generate(prompt_B, state=S_A)`` continues S_A, the state after text A: the reference is always the same
``generate`` on the whole text A + B (greedy tokens, scores and logits; beams; sampling), and for ``forward``
the whole-text forward."""

import pytest
import torch

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM

V = 61
EXACT = dict(rtol=1e-9, atol=1e-9)  # float64
DICT = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2)).double().eval()


def ids_for(B, n, seed):
    return torch.randint(0, V, (B, n), generator=torch.Generator().manual_seed(seed))


def left_padded(rows, width):
    """(ids, mask) of the given 1-D rows, left-padded to ``width`` with token 0."""
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def state_after(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask, use_cache=True).state


def assert_same_generation(got, ref, prompt_len_ref, prompt_len_got):
    """Same new tokens, and the same per-step scores and raw logits."""
    assert torch.equal(got.sequences[:, prompt_len_got:], ref.sequences[:, prompt_len_ref:])
    assert len(got.scores) == len(ref.scores)
    for a, b in zip(got.scores + got.logits, ref.scores + ref.logits):
        torch.testing.assert_close(a, b, **EXACT)


def test_forward_from_a_state_equals_the_tail_of_the_whole_text(lm):
    A, B = ids_for(2, 17, seed=1), ids_for(2, 9, seed=2)
    with torch.no_grad():
        whole = lm(torch.cat([A, B], 1), use_cache=True)
        rest = lm(B, state=state_after(lm, A), use_cache=True)
    torch.testing.assert_close(rest.logits, whole.logits[:, -9:], **EXACT)
    for a, b in zip(rest.state.tensors(), whole.state.tensors()):
        torch.testing.assert_close(a, b, **EXACT)


def test_greedy_from_a_state_equals_greedy_on_the_whole_text(lm):
    A, B = ids_for(1, 20, seed=3), ids_for(1, 6, seed=4)
    kw = dict(max_new_tokens=8, do_sample=False, **DICT)
    ref = lm.generate(torch.cat([A, B], 1), **kw)
    S = state_after(lm, A)
    calls = []
    hook = lm.model.register_forward_pre_hook(
        lambda m, a, k: calls.append((tuple(k["input_ids"].shape), k["state"] is not None)), with_kwargs=True)
    try:
        got = lm.generate(B, state=S, **kw)
    finally:
        hook.remove()
    assert_same_generation(got, ref, 26, 6)
    assert calls[0] == ((1, 6), True)  # the whole prompt B, from the state, in one parallel call
    assert all(c == ((1, 1), True) for c in calls[1:])


@pytest.mark.parametrize("mask_covers", ["prompt-only", "past-and-prompt"])
def test_padded_batch_of_two_from_a_state(lm, mask_covers):
    """Rows of different lengths, A and B both left-padded; the reference reads A + B with padding inside."""
    a_rows = [ids_for(1, 15, seed=5)[0], ids_for(1, 9, seed=6)[0]]
    b_rows = [ids_for(1, 4, seed=7)[0], ids_for(1, 7, seed=8)[0]]
    A, mask_a = left_padded(a_rows, 15)
    B, mask_b = left_padded(b_rows, 7)
    kw = dict(max_new_tokens=6, do_sample=False, **DICT)
    ref = lm.generate(torch.cat([A, B], 1), attention_mask=torch.cat([mask_a, mask_b], 1), **kw)
    mask = mask_b if mask_covers == "prompt-only" else torch.cat([mask_a, mask_b], 1)
    got = lm.generate(B, attention_mask=mask, state=state_after(lm, A, mask_a), **kw)
    assert_same_generation(got, ref, 22, 7)
    for b, rows in enumerate(zip(a_rows, b_rows)):  # and each row as if alone
        alone = lm.generate(torch.cat(rows)[None], **kw)
        assert torch.equal(got.sequences[b, 7:], alone.sequences[0, len(rows[0]) + len(rows[1]):])


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
def test_beam_search_from_a_state(lm, use_cache):
    A, B = ids_for(2, 12, seed=9), ids_for(2, 5, seed=10)
    kw = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False, use_cache=use_cache,
              return_dict_in_generate=True, output_scores=True)
    ref = lm.generate(torch.cat([A, B], 1), **kw)
    got = lm.generate(B, state=state_after(lm, A), **kw)
    assert got.sequences.shape == (4, 11)
    assert torch.equal(got.sequences, ref.sequences[:, 12:])
    torch.testing.assert_close(got.sequences_scores, ref.sequences_scores, **EXACT)


def test_sampling_several_sequences_per_prompt_from_a_state(lm):
    A, B = ids_for(2, 12, seed=11), ids_for(2, 5, seed=12)
    kw = dict(max_new_tokens=6, do_sample=True, top_k=10, num_return_sequences=3)
    torch.manual_seed(3)
    ref = lm.generate(torch.cat([A, B], 1), **kw)
    torch.manual_seed(3)
    got = lm.generate(B, state=state_after(lm, A), **kw)
    assert torch.equal(got, ref[:, 12:])


def test_uncached_generation_from_a_state_rereads_the_text_from_that_state(lm):
    A, B = ids_for(2, 12, seed=13), ids_for(2, 5, seed=14)
    S = state_after(lm, A)
    kw = dict(max_new_tokens=6, do_sample=False, **DICT)
    cached = lm.generate(B, state=S, **kw)
    uncached = lm.generate(B, state=S, use_cache=False, **kw)
    assert_same_generation(uncached, cached, 5, 5)


def test_prompt_as_embeddings_from_a_state(lm):
    A, B = ids_for(2, 12, seed=15), ids_for(2, 5, seed=16)
    S = state_after(lm, A)
    kw = dict(max_new_tokens=5, do_sample=False, attention_mask=torch.ones_like(B))
    by_ids = lm.generate(B, state=S, **kw)
    by_emb = lm.generate(inputs_embeds=lm.get_input_embeddings()(B).detach(), state=S, **kw)
    assert torch.equal(by_emb, by_ids[:, 5:])


def test_chunked_prefill_from_a_state(lm):
    A, B = ids_for(1, 10, seed=17), ids_for(1, 23, seed=18)
    kw = dict(max_new_tokens=5, do_sample=False, **DICT)
    ref = lm.generate(torch.cat([A, B], 1), prefill_chunk_size=0, **kw)
    got = lm.generate(B, state=state_after(lm, A), prefill_chunk_size=4, **kw)
    assert_same_generation(got, ref, 33, 23)


def test_a_state_of_another_batch_size_is_an_error(lm):
    S = state_after(lm, ids_for(3, 4, seed=19))
    with pytest.raises(ValueError, match="state.att_shift has shape .* batch size"):
        lm.generate(ids_for(2, 5, seed=20), state=S, max_new_tokens=2)
