"""SpikeGPT model: exact against an independent reference, parallel == recurrent, padding, HF contract."""

import os

import pytest
import torch
from reference_model import reference_logits, to_original_layout
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM, SpikeGPTModel, SpikeGPTState
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


def test_gradient_checkpointing_same_gradients():
    model = make_model(dtype=torch.float64).train()
    ids = ids_for(model, 2, 20)
    model(ids, labels=ids).loss.backward()
    g1 = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model(ids, labels=ids).loss.backward()
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


def test_bad_inputs_raise_clear_errors(tmp_path):
    model = make_model()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, 61]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="rank"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        model(torch.tensor([[1.0, 2.0]]))
    st = model(ids_for(model, 2, 4), use_cache=True).state
    with pytest.raises(ValueError, match="batch size"):
        model(ids_for(model, 3, 4), state=st)
    other = make_model(hidden_size=24)
    st_other = other(ids_for(other, 2, 4), use_cache=True).state
    with pytest.raises(ValueError, match="different model"):
        model(ids_for(model, 2, 4), state=st_other)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids_for(model, 2, 4), attention_mask=torch.ones(2, 5))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="wrong shape"):
        SpikeGPTForCausalLM.from_pretrained(tmp_path, config=SpikeGPTConfig(vocab_size=61, hidden_size=48,
                                                                              num_hidden_layers=4))
    with pytest.raises(ValueError, match="surrogate"):
        SpikeGPTConfig(surrogate="nope")
    with pytest.raises(ValueError, match="kernel_backend"):
        SpikeGPTConfig(kernel_backend="cuda")


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


def test_state_helpers():
    model = make_model()
    st = SpikeGPTState.empty(model.config, 3, dtype=torch.float64)
    assert st.batch_size == 3 and st.num_layers == 4 and st.hidden_size == 40
    sel = st.index_select(torch.tensor([2, 0]))
    assert sel.batch_size == 2
    assert st.repeat_interleave(2).batch_size == 6


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
