"""Spike-driven SpikeGPT (``spike_inputs``): every Linear reads spike counts, and every rule of the model holds."""

import pytest
import torch
from reference_model import reference_logits, to_original_layout

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM, SpikeGPTState
from spikegpt.interop.export import OneTokenStep, export_step
from spikegpt.interop.rwkv import from_rwkv, state_to_rwkv, to_rwkv
from spikegpt.spike_coding import SpikeEncoder

CODES = ["lif", "binary", "ternary", "int3", "int7"]


def make_model(spike_inputs, seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=47, hidden_size=24, num_hidden_layers=3, spike_inputs=spike_inputs)
    cfg.update(kw)
    return SpikeGPTForCausalLM(SpikeGPTConfig(**cfg)).to(dtype).eval()


def ids_for(model, B, T, seed=1):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def code_activity(model, ids):
    """{encoder path: fraction of nonzero counts} over one forward."""
    seen = {}

    def hook(name):
        def record(module, args, out):
            seen[name] = out[0].ne(0).double().mean().item()
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, SpikeEncoder)]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return seen


def recurrent(model, ids, state=None):
    outs = []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            o = model(ids[:, t : t + 1], state=state, use_cache=True)
            state = o.state
            outs.append(o.logits)
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("spiking", [True, False])
@pytest.mark.parametrize("code", CODES)
def test_parallel_matches_independent_reference_with_codes_that_fire(code, spiking):
    model = make_model(code, spiking=spiking)
    ids = ids_for(model, 2, 20)
    activity = code_activity(model, ids)
    assert len(activity) == 3 * 7 + 1  # seven Linear inputs per block and the head
    assert all(0.01 < a < 0.99 for a in activity.values()), activity
    with torch.no_grad():
        logits = model(ids).logits
    sd = to_original_layout(model)
    for b in range(2):
        ref = reference_logits(sd, ids[b].tolist(), spiking=spiking, spike_inputs=code)
        torch.testing.assert_close(logits[b], ref, rtol=1e-9, atol=1e-9)


def test_none_is_the_published_model_exactly():
    torch.manual_seed(0)
    b = SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=47, hidden_size=24, num_hidden_layers=3)).double().eval()
    a = make_model("none")
    assert a.state_dict().keys() == b.state_dict().keys()
    assert not any(isinstance(m, SpikeEncoder) for m in a.modules())
    ids = ids_for(a, 2, 16)
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    assert a(ids, use_cache=True).state.names() == b(ids, use_cache=True).state.names()
    assert a(ids, use_cache=True).state.enc_mem is None


@pytest.mark.parametrize("code", CODES)
def test_recurrent_and_chunked_equal_parallel_fp64(code):
    model = make_model(code)
    ids = ids_for(model, 2, 70)
    with torch.no_grad():
        par = model(ids, use_cache=True)
        chunked = model(ids, use_cache=True, prefill_chunk_size=16)
    rec, st = recurrent(model, ids)
    assert (par.logits - rec).abs().max().item() <= 1e-9
    assert (par.logits - chunked.logits).abs().max().item() <= 1e-9
    assert par.state.names() == st.names() == chunked.state.names()
    for a, b, c in zip(par.state.tensors(), st.tensors(), chunked.state.tensors()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(c, a, rtol=1e-9, atol=1e-9)
    if code == "lif":
        assert st.enc_mem.shape == (3, 2, 6 * 24 + 4 * 24) and st.head_mem.shape == (1, 2, 24)
        assert st.enc_mem.abs().sum() > 0 and st.head_mem.abs().sum() > 0


@pytest.mark.parametrize("code", ["lif", "int3"])
def test_padding_holds_every_state_and_rows_equal_alone(code):
    model = make_model(code)
    lengths = [15, 8, 11]
    T = max(lengths)
    with torch.no_grad():
        st = model(ids_for(model, 3, 9, seed=5), use_cache=True).state
        rows = [ids_for(model, 1, n, seed=10 + i) for i, n in enumerate(lengths)]
        batch = torch.zeros(3, T, dtype=torch.long)
        mask = torch.zeros(3, T, dtype=torch.long)
        for i, r in enumerate(rows):  # right-, left- and mid-padded rows
            pos = [torch.arange(n) for n in (r.shape[1],)][0] + (0 if i == 0 else T - r.shape[1] if i == 1 else 2)
            batch[i, pos] = r[0]
            mask[i, pos] = 1
        out = model(batch, attention_mask=mask, state=st, use_cache=True)
        for i, r in enumerate(rows):
            keep = mask[i].nonzero()[:, 0]
            alone = model(r, state=st.index_select(torch.tensor([i])), use_cache=True)
            torch.testing.assert_close(out.logits[i, keep], alone.logits[0], rtol=1e-10, atol=1e-10)
            for a, b in zip(out.state.tensors(), alone.state.tensors()):
                torch.testing.assert_close(a[:, i], b[:, 0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("code", ["lif", "ternary"])
def test_save_load_generate_and_saved_states(code, tmp_path):
    model = make_model(code, dtype=torch.float32)
    model.model.blocks[1].att.codes["value"].gain.data.fill_(0.7)  # a trained-looking gain travels too
    model.save_pretrained(tmp_path / "m")
    loaded = SpikeGPTForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.spike_inputs == code
    ids = ids_for(model, 1, 12)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # generate (greedy) == the argmax loop over the whole-text forward
    out = loaded.generate(ids, max_new_tokens=6, do_sample=False)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)
    # a saved state continues the text exactly
    with torch.no_grad():
        first = model(ids[:, :7], use_cache=True)
        first.state.save(tmp_path / "s.safetensors", config=model.config, tokens=7)
        st = SpikeGPTState.load(tmp_path / "s.safetensors", config=loaded.config, dtype=torch.float32)
        rest = loaded(ids[:, 7:], state=st).logits
        assert torch.equal(rest, model(ids).logits[:, 7:])


def test_states_of_other_models_are_refused():
    lif, plain = make_model("lif"), make_model("none")
    ids = ids_for(lif, 1, 5)
    with torch.no_grad():
        s_lif, s_plain = lif(ids, use_cache=True).state, plain(ids, use_cache=True).state
    with pytest.raises(ValueError, match="enc_mem is missing"):
        lif(ids, state=s_plain)
    with pytest.raises(ValueError, match="enc_mem is set, but this model has no LIF spike codes"):
        plain(ids, state=s_lif)
    with pytest.raises(ValueError, match="different fields"):
        SpikeGPTState.cat([s_lif, s_plain])
    with pytest.raises(ValueError, match="spike codes"):
        state_to_rwkv(s_lif)


@pytest.mark.parametrize("bad", ["int0", "int128", "int03", "quaternary", "LIF", 3, None])
def test_config_refuses_unknown_codes_naming_the_field(bad):
    with pytest.raises(ValueError, match="spike_inputs"):
        SpikeGPTConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, spike_inputs=bad)


def test_converting_an_rwkv4_model_with_spike_inputs():
    """from_rwkv(..., spike_inputs=) keeps the RWKV-4 weights and adds codes at their init: the reference with the
    same weights and codes gives its logits; from_pretrained of a code-less checkpoint does the same."""
    teacher = make_model("none", spiking=False)
    student = from_rwkv(to_rwkv(teacher), spiking=False, spike_inputs="int3", dtype=torch.float64)
    assert student.config.spike_inputs == "int3"
    gains = [float(p.detach()) for n, p in student.named_parameters() if n.endswith(".gain")]
    assert len(gains) == 22 and gains == pytest.approx([1.8 / 3**0.5] * 22)
    ids = ids_for(student, 1, 14)
    with torch.no_grad():
        got = student(ids).logits[0]
    ref = reference_logits(to_original_layout(student), ids[0].tolist(), spiking=False, spike_inputs="int3")
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    for k, v in to_original_layout(teacher).items():  # the converted weights are the teacher's
        torch.testing.assert_close(to_original_layout(student)[k], v)


def test_loading_a_checkpoint_without_codes_adds_them_but_a_partial_one_is_refused(tmp_path):
    plain = make_model("none", dtype=torch.float32)
    plain.save_pretrained(tmp_path / "plain")
    coded = SpikeGPTForCausalLM.from_pretrained(tmp_path / "plain", spike_inputs="ternary")
    assert coded.head_code is not None and float(coded.head_code.gain.detach()) == pytest.approx(1.8)
    coded.save_pretrained(tmp_path / "coded")
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "coded" / "model.safetensors")
    del sd["model.blocks.0.att.codes.key.gain"]
    save_file(sd, tmp_path / "coded" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.blocks.0.att.codes.key.gain"):
        SpikeGPTForCausalLM.from_pretrained(tmp_path / "coded")


def test_triton_backend_matches_torch_with_lif_codes():
    """The LIF codes run through the lif op's dispatch: Triton (the interpreter here) == PyTorch, with padding,
    an incoming state, and every gradient."""
    results = []
    for backend in ("torch", "triton"):
        model = make_model("lif", dtype=torch.float32, hidden_size=8, num_hidden_layers=2, vocab_size=19,
                           kernel_backend=backend).train()
        ids = ids_for(model, 2, 6)
        mask = torch.ones(2, 6, dtype=torch.long)
        mask[1, :2] = 0
        with torch.no_grad():
            st = model(ids_for(model, 2, 3, seed=9), use_cache=True).state
        out = model(ids, attention_mask=mask, state=st, labels=ids, use_cache=True)
        out.loss.backward()
        results.append((out.logits.detach(), out.state, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (y0, s0, g0), (y1, s1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(s1.tensors(), s0.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-5, msg=n)


def test_export_runs_stateless_codes_and_refuses_lif():
    model = make_model("int3", dtype=torch.float32)
    ep = export_step(model)
    ids = ids_for(model, 1, 1)
    st = SpikeGPTState.empty(model.config, 1)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(ids, st)[0], OneTokenStep(model)(ids, st)[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="spike_inputs='lif'"):
        export_step(make_model("lif", dtype=torch.float32))


def test_training_learns_the_gains():
    """Every code's gain gets a gradient (the surrogate reaches it) and a few steps lower the loss."""
    model = make_model("int3", dtype=torch.float32).train()
    ids = ids_for(model, 4, 24)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs() > 0 for n, p in model.named_parameters() if n.endswith("gain"))
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
