"""generate(): every decoding strategy against an argmax / manual loop over full parallel forwards."""

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast, TextStreamer

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM

TEXT = "the quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture(scope="module")
def tok():
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=300, min_frequency=1, special_tokens=["<|eot|>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|eot|>", pad_token="<|eot|>")


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = SpikeGPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3)
    return SpikeGPTForCausalLM(cfg).double().eval()


def prompt(model, B=1, T=7, seed=1):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def argmax_loop(model, ids, n, penalty=None):
    cur = ids
    for _ in range(n):
        with torch.no_grad():
            logits = model(cur).logits[:, -1].clone()
        if penalty is not None:
            for b in range(cur.shape[0]):
                seen = cur[b].unique()
                lg = logits[b, seen]
                logits[b, seen] = torch.where(lg < 0, lg * penalty, lg / penalty)
        cur = torch.cat([cur, logits.argmax(-1, keepdim=True)], 1)
    return cur


def test_greedy_equals_argmax_loop_and_prefill_is_parallel(model):
    ids = prompt(model, B=2)
    calls = []
    hook = model.model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(tuple((args[0] if args else kwargs["input_ids"]).shape)), with_kwargs=True
    )
    try:
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    finally:
        hook.remove()
    assert torch.equal(out, argmax_loop(model, ids, 12))
    assert calls[0] == (2, 7) and all(c == (2, 1) for c in calls[1:])  # prefill once, then one token per step


def test_use_cache_false_same_tokens(model):
    ids = prompt(model, B=2)
    a = model.generate(ids, max_new_tokens=10, do_sample=False)
    b = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


def test_beam_search_cached_equals_uncached(model):
    ids = prompt(model, B=2)
    kw = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=False)
    a = model.generate(ids, **kw)
    b = model.generate(ids, **kw, use_cache=False)
    assert a.shape == (4, 15) and torch.equal(a, b)


def test_beam_search_with_one_beam_is_greedy(model):
    ids = prompt(model)
    assert torch.equal(model.generate(ids, max_new_tokens=8, num_beams=1), argmax_loop(model, ids, 8))


def test_sampling_is_reproducible_and_cache_independent(model):
    ids = prompt(model, B=2)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    torch.manual_seed(5)
    a = model.generate(ids, **kw)
    torch.manual_seed(5)
    b = model.generate(ids, **kw, use_cache=False)
    assert torch.equal(a, b)
    torch.manual_seed(6)
    c = model.generate(ids, max_new_tokens=10, do_sample=True, top_k=1)
    assert torch.equal(c, argmax_loop(model, ids, 10))  # top-k 1 sampling is greedy


def test_repetition_penalty_equals_manual(model):
    ids = prompt(model)
    out = model.generate(ids, max_new_tokens=10, do_sample=False, repetition_penalty=1.7)
    assert torch.equal(out, argmax_loop(model, ids, 10, penalty=1.7))


def test_eos_stops_generation(model):
    ids = prompt(model)
    free = argmax_loop(model, ids, 6)
    eos = int(free[0, 7 + 3])
    first = (free[0, 7:] == eos).nonzero()[0, 0].item()
    out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    assert out.shape[1] == 7 + first + 1 and int(out[0, -1]) == eos


def test_stop_strings_and_streamer(model, tok, capsys):
    ids = tok("the quick", return_tensors="pt").input_ids
    free = argmax_loop(model, ids, 12)
    new_text = tok.decode(free[0, ids.shape[1]:])
    stop = new_text[4:7]
    # the shortest continuation whose text contains the stop string
    n = next(n for n in range(1, 13) if stop in tok.decode(free[0, ids.shape[1] : ids.shape[1] + n]))
    out = model.generate(ids, max_new_tokens=12, do_sample=False, stop_strings=[stop], tokenizer=tok,
                         attention_mask=torch.ones_like(ids))
    assert torch.equal(out, free[:, : ids.shape[1] + n])
    capsys.readouterr()
    streamer = TextStreamer(tok, skip_prompt=True)
    out = model.generate(ids, max_new_tokens=6, do_sample=False, streamer=streamer,
                         attention_mask=torch.ones_like(ids))
    printed = capsys.readouterr().out
    assert printed.strip() == tok.decode(out[0, ids.shape[1]:]).strip()


def test_left_padded_batched_generation_equals_rows_alone(model):
    rows = [prompt(model, T=n, seed=20 + n) for n in (4, 9, 6)]
    T = 9
    batch = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, T - r.shape[1]:] = r[0]
        mask[i, T - r.shape[1]:] = 1
    out = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False)
    for i, r in enumerate(rows):
        alone = model.generate(r, max_new_tokens=10, do_sample=False)
        assert torch.equal(out[i, T - r.shape[1]:], alone[0])


def test_return_dict_in_generate_scores(model):
    ids = prompt(model)
    out = model.generate(ids, max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_scores=True)
    assert len(out.scores) == 5
    full = model(out.sequences).logits
    torch.testing.assert_close(out.scores[0][0].double(), full[0, 6], rtol=1e-5, atol=1e-5)


def test_dict_outputs_of_generate_carry_hidden_states(model):
    """``output_hidden_states=True, return_dict_in_generate=True``: per step, the L + 1 hidden states of the
    positions that step computed (the whole prompt, then one token), equal to a parallel forward's."""
    ids = prompt(model, B=2)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                         output_hidden_states=True, return_dict_in_generate=True)
    L, T = model.config.num_hidden_layers, ids.shape[1]
    assert len(out.hidden_states) == 4 and all(len(step) == L + 1 for step in out.hidden_states)
    with torch.no_grad():
        full = model(out.sequences[:, :-1], output_hidden_states=True).hidden_states
    for layer in range(L + 1):
        torch.testing.assert_close(out.hidden_states[0][layer], full[layer][:, :T], rtol=1e-9, atol=1e-9)
        for step in range(1, 4):
            torch.testing.assert_close(out.hidden_states[step][layer], full[layer][:, T + step - 1 : T + step],
                                       rtol=1e-9, atol=1e-9)
