"""SpikeGPT model: exact against an independent reference, parallel == recurrent, padding, HF contract."""

import os

import pytest
import torch
from reference_model import reference_logits, to_original_layout
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.modeling_layers import GradientCheckpointingLayer

from spikegpt import (
    SpikeGPTConfig,
    SpikeGPTForCausalLM,
    SpikeGPTForSequenceClassification,
    SpikeGPTModel,
    SpikeGPTState,
)
from spikegpt.modeling_spikegpt import LIF, causal_lm_loss


def make_model(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=61, hidden_size=40, num_hidden_layers=4)
    cfg.update(kw)
    return SpikeGPTForCausalLM(SpikeGPTConfig(**cfg)).to(dtype).eval()


def ids_for(model, B, T, seed=1):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def firing_rates(model, ids):
    rates = []
    hooks = [m.register_forward_hook(lambda m, i, o: rates.append(o[0].float().mean().item()))
             for m in model.modules() if isinstance(m, LIF)]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return rates


def recurrent_logits(model, ids, state=None):
    logits = []
    for t in range(ids.shape[1]):
        out = model(ids[:, t : t + 1], state=state, use_cache=True)
        state = out.state
        logits.append(out.logits)
    return torch.cat(logits, 1), state


@pytest.mark.parametrize("spiking", [True, False], ids=["spiking", "rwkv4"])
def test_parallel_matches_independent_reference(spiking):
    model = make_model(spiking=spiking)
    ids = ids_for(model, 2, 24)
    with torch.no_grad():
        logits = model(ids).logits
    sd = to_original_layout(model)
    for b in range(2):
        ref = reference_logits(sd, ids[b].tolist(), spiking=spiking)
        torch.testing.assert_close(logits[b], ref, rtol=1e-9, atol=1e-9)


def test_neurons_fire_at_init():
    model = make_model()
    rates = firing_rates(model, ids_for(model, 2, 64))
    assert all(0.01 <= r <= 0.5 for r in rates), rates


def test_recurrent_equals_parallel_fp64():
    model = make_model(num_hidden_layers=5)
    ids = ids_for(model, 2, 210)
    assert all(0.01 <= r <= 0.5 for r in firing_rates(model, ids))
    with torch.no_grad():
        par = model(ids, use_cache=True)
        rec, st = recurrent_logits(model, ids)
    assert (par.logits - rec).abs().max().item() <= 1e-9
    for a, b in zip(par.state.tensors(), st.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_recurrent_equals_parallel_fp32_argmax():
    model = make_model(num_hidden_layers=5, dtype=torch.float32)
    ids = ids_for(model, 2, 210)
    assert all(0.01 <= r <= 0.5 for r in firing_rates(model, ids))
    with torch.no_grad():
        par = model(ids).logits
        rec, _ = recurrent_logits(model, ids)
    agree = (par.argmax(-1) == rec.argmax(-1)).float().mean().item()
    assert agree >= 0.99, agree


def test_prefix_state_continues_whole_sequence():
    model = make_model()
    ids = ids_for(model, 3, 60)
    with torch.no_grad():
        whole = model(ids, use_cache=True)
        first = model(ids[:, :23], use_cache=True)
        rest = model(ids[:, 23:], state=first.state, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), whole.logits, rtol=1e-10, atol=1e-10)
    for a, b in zip(rest.state.tensors(), whole.state.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_left_padded_batch_equals_rows_alone():
    model = make_model()
    lengths = [17, 9, 12]
    T = max(lengths)
    rows = [ids_for(model, 1, n, seed=10 + i) for i, n in enumerate(lengths)]
    batch = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, T - r.shape[1]:] = r[0]
        mask[i, T - r.shape[1]:] = 1
    with torch.no_grad():
        out = model(batch, attention_mask=mask, use_cache=True)
        for i, r in enumerate(rows):
            alone = model(r, use_cache=True)
            torch.testing.assert_close(out.logits[i, T - r.shape[1]:], alone.logits[0], rtol=1e-10, atol=1e-10)
            for a, b in zip(out.state.tensors(), alone.state.tensors()):
                torch.testing.assert_close(a[:, i], b[:, 0], rtol=1e-10, atol=1e-10)


def test_any_padding_pattern_with_incoming_state():
    """Padding anywhere (not only on the left), continuing a state: real positions are untouched."""
    model = make_model()
    ids = ids_for(model, 2, 40)
    with torch.no_grad():
        st = model(ids_for(model, 2, 15, seed=7), use_cache=True).state
        mask = torch.rand(2, 40, generator=torch.Generator().manual_seed(3)) > 0.35
        out = model(ids, attention_mask=mask.long(), state=st, use_cache=True)
        for b in range(2):
            keep = mask[b].nonzero()[:, 0]
            alone = model(ids[b : b + 1, keep], state=st.index_select(torch.tensor([b])), use_cache=True)
            torch.testing.assert_close(out.logits[b, keep], alone.logits[0], rtol=1e-10, atol=1e-10)
            for a, c in zip(out.state.tensors(), alone.state.tensors()):
                torch.testing.assert_close(a[:, b], c[:, 0], rtol=1e-10, atol=1e-10)


def test_hidden_states_convention():
    model = make_model()
    ids = ids_for(model, 2, 11)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == model.config.num_hidden_layers + 1
    assert set(hs[0].unique().tolist()) <= {0.0, 1.0}  # the binary embedding, before LN0
    expected = (model.model.emb.weight[ids] >= 0).double()
    torch.testing.assert_close(hs[0], expected)
    # the last entry is the residual stream before LNout
    torch.testing.assert_close(model.head(model.model.ln_out(hs[-1])), out.logits)


def test_nonspiking_embedding_is_real_valued():
    model = make_model(spiking=False)
    with torch.no_grad():
        hs = model(ids_for(model, 1, 5), output_hidden_states=True).hidden_states
    assert len(hs[0].unique()) > 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dtypes_run_and_train(dtype):
    model = make_model(dtype=dtype).train()
    ids = ids_for(model, 2, 20)
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert out.logits.dtype == dtype
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradient_checkpointing_is_transformers_layer_recompute_with_same_gradients():
    """Blocks are ``GradientCheckpointingLayer``s: ``gradient_checkpointing_enable`` recomputes each block in the
    backward pass (its inner modules run twice) and the gradients are those of the plain backward."""
    model = make_model(dtype=torch.float64).train()
    assert all(isinstance(b, GradientCheckpointingLayer) for b in model.model.blocks)
    runs = []
    for block in model.model.blocks:
        block.att.register_forward_hook(lambda *a: runs.append(1))
    ids = ids_for(model, 2, 20)
    model(ids, labels=ids).loss.backward()
    g1 = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert len(runs) == model.config.num_hidden_layers
    runs.clear()
    model.zero_grad()
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)  # 5.24 / 5.17
    enable()
    assert all(b.gradient_checkpointing for b in model.model.blocks)
    model(ids, labels=ids).loss.backward()
    assert len(runs) == 2 * model.config.num_hidden_layers  # forward, then again in the backward
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g1[n], msg=n)


def test_loss_is_shifted_cross_entropy_and_ignores_minus_100():
    model = make_model()
    ids = ids_for(model, 2, 12)
    labels = ids.clone()
    labels[0, 5] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    logp = torch.log_softmax(out.logits, -1)
    terms = [-logp[b, t, labels[b, t + 1]] for b in range(2) for t in range(11) if labels[b, t + 1] != -100]
    torch.testing.assert_close(out.loss, torch.stack(terms).mean().float())


def test_l2wrap_gradient_closed_form():
    logits = torch.randn(2, 6, 9, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 9, (2, 6))
    coef = 1e-2
    loss = causal_lm_loss(logits, labels, l2wrap_coef=coef)
    loss.backward()
    g = logits.grad.clone()
    logits.grad = None
    causal_lm_loss(logits, labels).backward()
    extra = g - logits.grad
    lg = logits.detach()[:, :-1]
    expected = torch.zeros_like(lg)
    top = lg.max(-1, keepdim=True)
    expected.scatter_(-1, top.indices, top.values * coef / 10)  # 10 = positions that count
    torch.testing.assert_close(extra[:, :-1], expected)
    assert (extra[:, -1] == 0).all()


def test_save_load_bit_identical_and_auto_classes(tmp_path):
    model = make_model(dtype=torch.float32)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ids = ids_for(model, 2, 15)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SpikeGPTForCausalLM)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SpikeGPTConfig)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, SpikeGPTModel)
    assert SpikeGPTModel._no_split_modules == ["SpikeGPTBlock"]


def test_kernel_backend_is_not_saved(tmp_path):
    """A machine's kernel choice does not travel with the model: saved with "triton", loaded on CPU, it runs."""
    model = make_model(dtype=torch.float32, kernel_backend="triton")
    model.save_pretrained(tmp_path)
    assert "kernel_backend" not in (tmp_path / "config.json").read_text()
    loaded = SpikeGPTForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.kernel_backend is None
    ids = ids_for(model, 1, 5)
    with torch.no_grad():  # the saved model on Triton (the interpreter here), the loaded one on PyTorch
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def _loss_logits_state_grads(model, ids, mask, state, call=None):
    """One training-style call of ``call`` (default: ``model``) with a padding mask and an incoming state:
    (loss, logits, state, gradients of ``model``'s parameters)."""
    model.zero_grad(set_to_none=True)
    out = (model if call is None else call)(ids, attention_mask=mask, labels=ids, state=state, use_cache=True)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.loss.detach(), out.logits.detach(), out.state, grads


# The Triton-backend tests run on CPU through the interpreter; benchmarks/gpu_check.sh runs them on CUDA.
DEVICE = torch.device(os.environ.get("SPIKEGPT_TEST_DEVICE", "cpu"))


def _compile_inputs(model):
    ids = ids_for(model, 2, 9)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # a left-padded row
    state = SpikeGPTState.empty(model.config, 2, dtype=torch.float32)
    state.att_mem.uniform_(0, 1, generator=torch.Generator().manual_seed(3))  # a mid-sequence membrane
    return ids.to(DEVICE), mask.to(DEVICE), state.to(DEVICE)


@pytest.mark.parametrize("backend", ["triton", "triton_chunked"])
def test_triton_backend_model_matches_torch_backend(backend):
    """A Triton ``kernel_backend`` (the Triton interpreter here) gives the PyTorch path's loss, logits, state
    and every parameter gradient, with padding and an incoming state."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=23, hidden_size=12, num_hidden_layers=2)
    results = []
    for name in ("torch", backend):
        torch.manual_seed(0)
        model = SpikeGPTForCausalLM(SpikeGPTConfig(kernel_backend=name, **cfg)).to(DEVICE)
        results.append(_loss_logits_state_grads(model, *_compile_inputs(model)))
    (l0, y0, s0, g0), (l1, y1, s1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(s1.tensors(), s0.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("backend", ["torch", "triton", "triton_chunked"])
def test_torch_compile_traces_whole_model_without_graph_breaks(backend):
    """``torch.compile(model, fullgraph=True)`` (which raises at any graph break) traces the whole causal LM,
    ops included, forward and backward, and matches eager."""
    torch.manual_seed(0)
    model = SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=23, hidden_size=12, num_hidden_layers=2,
                                               kernel_backend=backend)).to(DEVICE)
    inputs = _compile_inputs(model)
    eager = _loss_logits_state_grads(model, *inputs)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got = _loss_logits_state_grads(model, *inputs, call=compiled)
    torch.testing.assert_close(got[0], eager[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], eager[1], rtol=1e-6, atol=1e-6)
    for a, b in zip(got[2].tensors(), eager[2].tensors()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for n in eager[3]:
        torch.testing.assert_close(got[3][n], eager[3][n], rtol=1e-5, atol=1e-6, msg=n)


# ------------------------------------------------------------------ the Hugging Face contract


def test_head_classes_load_a_base_model_checkpoint_and_report_the_fresh_head(tmp_path):
    """A ``SpikeGPTModel`` checkpoint loads into the head classes: the base weights are the checkpoint's, the
    head is initialised (at its documented scale) and listed in ``missing_keys``, as transformers does."""
    base = make_model(dtype=torch.float32).model
    base.save_pretrained(tmp_path)
    lm, info = SpikeGPTForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == {"head.weight"} and not info["unexpected_keys"]
    ids = ids_for(lm, 2, 9)
    with torch.no_grad():
        assert torch.equal(lm.model(ids).last_hidden_state, base(ids).last_hidden_state)
    C = lm.config.hidden_size
    assert abs(lm.head.weight.std().item() - 0.5 / C**0.5) < 0.1 * 0.5 / C**0.5  # N(0, 0.5/sqrt(C)), not garbage
    clf, info = SpikeGPTForSequenceClassification.from_pretrained(tmp_path, num_labels=3, output_loading_info=True)
    assert set(info["missing_keys"]) == {"score.weight"}


def test_a_truncated_checkpoint_of_the_same_class_is_refused_naming_the_keys(tmp_path):
    model = make_model(dtype=torch.float32)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["head.weight"], weights["model.blocks.1.att.key.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing from the checkpoint: head.weight, model.blocks.1.att.key.weight"):
        SpikeGPTForCausalLM.from_pretrained(tmp_path)


def test_loading_errors_name_the_missing_or_broken_file(tmp_path):
    model = make_model(dtype=torch.float32)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"m/config.json not found"):
        SpikeGPTForCausalLM.from_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "cut")
    f = tmp_path / "cut" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut/model.safetensors \(truncated or corrupt"):
        SpikeGPTForCausalLM.from_pretrained(tmp_path / "cut")
    model.save_pretrained(tmp_path / "ok")
    with pytest.raises(ValueError, match=r"wrong shape: head.weight \(checkpoint \(61, 40\), model \(61, 48\)\)"):
        SpikeGPTForCausalLM.from_pretrained(
            tmp_path / "ok", config=SpikeGPTConfig(vocab_size=61, hidden_size=48, num_hidden_layers=4))


def test_shift_labels_and_num_items_in_batch_follow_transformers():
    """``shift_labels`` are already shifted (position t predicts shift_labels[:, t]); ``num_items_in_batch``
    turns the mean into sum / num_items (transformers' loss convention under gradient accumulation)."""
    model = make_model()
    ids = ids_for(model, 2, 12)
    shifted = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)
    with torch.no_grad():
        by_labels = model(ids, labels=ids)
        by_shift = model(ids, shift_labels=shifted)
        summed = model(ids, labels=ids, num_items_in_batch=7)
    logp = torch.log_softmax(by_labels.logits.double(), -1)
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None]).sum()
    torch.testing.assert_close(by_shift.loss.double(), nll / 22)
    torch.testing.assert_close(by_labels.loss.double(), nll / 22)
    torch.testing.assert_close(summed.loss.double(), nll / 7)
    with pytest.raises(ValueError, match="exactly one of labels and shift_labels"):
        model(ids, labels=ids, shift_labels=shifted)


def test_inputs_embeds_equal_input_ids_in_forward_and_generate():
    """``inputs_embeds`` are rows of the embedding table; the binary step applies to them as to E[idx]."""
    model = make_model(dtype=torch.float32)
    ids = ids_for(model, 2, 9)
    emb = model.get_input_embeddings()(ids)
    with torch.no_grad():
        assert torch.equal(model(inputs_embeds=emb).logits, model(ids).logits)
    mask = torch.ones_like(ids)
    by_ids = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    by_emb = model.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(by_emb, by_ids[:, ids.shape[1]:])  # decoder-only generate returns only the new tokens
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(ids, inputs_embeds=emb)
    with pytest.raises(ValueError, match=r"inputs_embeds must be a \(batch, seq_len, 40\)"):
        model(inputs_embeds=emb[..., :5])


def test_attention_mask_over_past_and_new_tokens_with_a_state():
    """With a state, a mask covering past + new tokens (transformers' convention with a cache) is read by its
    last T columns; without a state it must match the input."""
    model = make_model()
    ids = ids_for(model, 2, 11)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        whole = model(ids, attention_mask=mask, use_cache=True)
        first = model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        rest = model(ids[:, 6:], attention_mask=mask, state=first.state, use_cache=True)
    torch.testing.assert_close(rest.logits, whole.logits[:, 6:], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids[:, 6:], attention_mask=mask)  # no state: must be (2, 5)
    with pytest.raises(ValueError, match="only 0"):
        model(ids, attention_mask=mask * 2)


def test_torch_export_of_the_one_token_step_with_a_state_in_and_out():
    """``torch.export`` takes the state as an input and returns it (SpikeGPTState is a pytree node); the exported
    step equals eager, and continuing with its state equals the eager continuation."""
    model = make_model(dtype=torch.float32)

    class Step(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, ids, state):
            out = self.lm(input_ids=ids, state=state, use_cache=True)
            return out.logits, out.state

    ids = ids_for(model, 2, 8)
    with torch.no_grad():
        state = model(ids, use_cache=True).state
        nxt = ids_for(model, 2, 1, seed=5)
        exported = torch.export.export(Step(model), (nxt, state)).module()
        got_logits, got_state = exported(nxt, state)
        want_logits, want_state = Step(model)(nxt, state)
        assert isinstance(got_state, SpikeGPTState)
        assert torch.equal(got_logits, want_logits)
        assert all(torch.equal(a, b) for a, b in zip(got_state.tensors(), want_state.tensors()))
        again, _ = exported(nxt, got_state)
        assert torch.equal(again, Step(model)(nxt, want_state)[0])


def test_bad_inputs_raise_clear_errors():
    model = make_model()
    ids = ids_for(model, 2, 4)
    cases = [
        ((torch.tensor([[1, 2, 61]]),), {}, "token id 61, outside the vocabulary"),
        ((torch.tensor([[-1, 2]]),), {}, "token id -1, outside the vocabulary"),
        ((torch.tensor([1, 2, 3]),), {}, "rank 1"),
        ((torch.tensor([[1.0, 2.0]]),), {}, "integer tensor"),
        ((torch.zeros(0, 4, dtype=torch.long),), {}, "batch size 0"),
        ((torch.zeros(2, 0, dtype=torch.long),), {}, "seq_len = 0"),
        ((ids,), {"labels": torch.full((2, 4), 61)}, "labels contains 61, outside the vocabulary"),
        ((ids,), {"labels": ids[:, :3]}, r"labels must have shape \(batch, seq_len\)"),
        ((ids,), {"attention_mask": torch.ones(2, 5)}, "attention_mask"),
        ((ids,), {"attentionmask": torch.ones(2, 4)}, "unexpected keyword arguments"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            model(*args, **kwargs)
    st = model(ids, use_cache=True).state
    with pytest.raises(ValueError, match="batch size"):
        model(ids_for(model, 3, 4), state=st)
    other = make_model(hidden_size=24)
    with pytest.raises(ValueError, match="different model"):
        model(ids, state=other(ids_for(other, 2, 4), use_cache=True).state)
    with pytest.raises(ValueError, match=r"state.att_shift is torch.float32 but a torch.float64 model needs"):
        model(ids, state=st.to(dtype=torch.float32))
    with pytest.raises(ValueError, match="state must be a SpikeGPTState"):
        model(ids, state=st.tensors())
    with pytest.raises(ValueError, match="no attention weights"):
        model(ids, output_attentions=True)
