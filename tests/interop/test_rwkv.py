"""spikegpt.interop.rwkv: RWKV-4 -> SpikeGPT conversion against Hugging Face's RwkvForCausalLM (the reference).

All comparisons run in float64 on random RWKV models (every parameter randomised, so that no init symmetry
hides a swapped name). HF's CPU WKV casts the keys to float32 (``key[:, t].float()``) and keeps its default
state in float32, so against unmodified HF the logits agree to about |k| * 2^-24 relative; the exact
comparisons (1e-10) run HF with that one cast removed (``_wkv_float64`` below, HF's loop otherwise verbatim)
and with a float64 initial state.
"""

from __future__ import annotations

import pytest
import torch
from interop_helpers import spike_totals
from reference_model import loop_lif
from transformers import RwkvConfig, RwkvForCausalLM
from transformers.models.rwkv import modeling_rwkv

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM, SpikeGPTState
from spikegpt.interop.rwkv import (
    branch_outputs,
    calibrate_lif_scales,
    firing_rates,
    from_rwkv,
    hf_to_original,
    state_from_rwkv,
    state_to_rwkv,
    to_rwkv,
)

SHAPES = {  # name: (vocab, hidden, layers, intermediate)
    "V50-C16-L2": (50, 16, 2, None),
    "V37-C24-L3-F40": (37, 24, 3, 40),
    "V64-C8-L7-F16": (64, 8, 7, 16),
}


def _wkv_float64(time_decay, time_first, key, value, state=None, return_state=False):
    """HF's ``rwkv_linear_attention_cpu`` without its float32 cast of the keys (state in the keys' dtype)."""
    _, seq_length, _ = key.size()
    output = torch.zeros_like(key)
    if state is None:
        num_state = torch.zeros_like(key[:, 0])
        den_state = torch.zeros_like(key[:, 0])
        max_state = torch.zeros_like(key[:, 0]) - 1e38
    else:
        num_state, den_state, max_state = state
    time_decay = -torch.exp(time_decay)
    for t in range(seq_length):
        current_key = key[:, t]
        current_value = value[:, t]
        max_for_output = torch.maximum(max_state, current_key + time_first)
        e1 = torch.exp(max_state - max_for_output)
        e2 = torch.exp(current_key + time_first - max_for_output)
        output[:, t] = (e1 * num_state + e2 * current_value) / (e1 * den_state + e2)
        max_for_state = torch.maximum(max_state + time_decay, current_key)
        e1 = torch.exp(max_state + time_decay - max_for_state)
        e2 = torch.exp(current_key - max_for_state)
        num_state = e1 * num_state + e2 * current_value
        den_state = e1 * den_state + e2
        max_state = max_for_state
    if return_state or state is not None:
        state = [num_state, den_state, max_state]
    return output, state


@pytest.fixture
def exact_hf(monkeypatch):
    monkeypatch.setattr(modeling_rwkv, "rwkv_linear_attention_cpu", _wkv_float64)


def random_rwkv(V, C, L, F=None, rescale_every=0, seed=0, **kw) -> RwkvForCausalLM:
    torch.manual_seed(seed)
    cfg = RwkvConfig(vocab_size=V, hidden_size=C, num_hidden_layers=L, intermediate_size=F, rescale_every=rescale_every,
                     context_length=64, **kw)
    hf = RwkvForCausalLM(cfg).double()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "time_mix" in name:
                p.uniform_(0, 1)
            elif "time_decay" in name or "time_first" in name or "embeddings" in name:
                p.normal_(0, 1)
            elif "ln" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            else:
                p.normal_(0, 1 / p.shape[1] ** 0.5)
    return hf.eval()


def hf_empty_state(hf, B) -> list[torch.Tensor]:
    """HF's fresh state in float64 (HF's own default keeps the WKV part in float32)."""
    c = hf.config
    s = [torch.zeros(B, c.hidden_size, c.num_hidden_layers, dtype=torch.float64) for _ in range(5)]
    s[4] -= 1e30
    return s


def ids_for(V, B=2, T=9, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def assert_close(a, b, rtol=1e-10):
    scale = max(float(b.abs().max()), 1.0)
    assert float((a - b).abs().max()) <= rtol * scale, float((a - b).abs().max())


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_parallel_logits_equal_hf(shape, exact_hf):
    V, C, L, F = shape
    hf = random_rwkv(V, C, L, F)
    model = from_rwkv(hf, spiking=False)
    assert model.dtype == torch.float64 and not model.config.spiking
    ids = ids_for(V)
    with torch.no_grad():
        assert_close(model(ids).logits, hf(ids, use_cache=False).logits)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_parallel_logits_match_unmodified_hf(shape):
    V, C, L, F = shape
    hf = random_rwkv(V, C, L, F)
    model = from_rwkv(hf, spiking=False)
    ids = ids_for(V)
    with torch.no_grad():
        # HF rounds every key to float32 before exponentiating: relative error up to |k| * 2^-24 per term
        assert_close(model(ids).logits, hf(ids, use_cache=False).logits, rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_recurrent_mode_and_state_equal_hf(shape, exact_hf):
    """One token at a time with the state carried. HF's single-token path broadcasts (B, C) against (B, 1, C)
    into (B, B, C) when B > 1 (transformers 5.24), so HF runs each batch row on its own."""
    V, C, L, F = shape
    hf = random_rwkv(V, C, L, F)
    model = from_rwkv(hf, spiking=False)
    ids = ids_for(V, T=6)
    hs, ms = [hf_empty_state(hf, 1) for _ in range(2)], None
    with torch.no_grad():
        for t in range(ids.shape[1]):
            mo = model(ids[:, t : t + 1], state=ms, use_cache=True)
            ms = mo.state
            for b in range(2):
                ho = hf(ids[b : b + 1, t : t + 1], state=hs[b], use_cache=True)
                hs[b] = ho.state
                assert_close(mo.logits[b : b + 1], ho.logits)
                for a, h in zip(state_to_rwkv(ms.index_select(torch.tensor([b]))), hs[b]):
                    assert_close(a, h)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_state_continues_across_implementations(shape, exact_hf):
    """A prefix run by one implementation, its state translated, the rest run by the other = HF in one pass."""
    V, C, L, F = shape
    hf = random_rwkv(V, C, L, F)
    model = from_rwkv(hf, spiking=False)
    ids = ids_for(V, T=10)
    with torch.no_grad():
        full = hf(ids, use_cache=False).logits
        h_pre = hf(ids[:, :4], state=hf_empty_state(hf, 2), use_cache=True)
        m_rest = model(ids[:, 4:], state=state_from_rwkv(h_pre.state), use_cache=True)
        assert_close(m_rest.logits, full[:, 4:])
        m_pre = model(ids[:, :7], use_cache=True)
        h_rest = hf(ids[:, 7:], state=state_to_rwkv(m_pre.state), use_cache=True)
        assert_close(h_rest.logits, full[:, 7:])
        assert_close(m_pre.logits, full[:, :7])


def _layer_norms_with_rescaled_eps(model: SpikeGPTForCausalLM, every: int) -> None:
    """Give every LayerNorm the eps that HF's inference rescaling amounts to: LN_eps(x / s) = LN_{eps s^2}(x)."""
    blocks = model.model.blocks
    for l, block in enumerate(blocks):
        s2 = 4.0 ** (l // every)
        block.ln1.eps *= s2
        block.ln2.eps *= s2
    model.model.ln_out.eps *= 4.0 ** (len(blocks) // every)


@pytest.mark.parametrize("every", [1, 2, 3])
def test_rescale_every(every, exact_hf):
    """HF's inference halves the stream every ``rescale_every`` layers (and divides att.output / ffn.value):
    exactly our model with the LayerNorm eps scaled by 4 per halving; with the uniform eps (what from_rwkv
    builds: RWKV-4 as trained) the logits differ only by that eps effect."""
    V, C, L, F = 40, 16, 5, None
    hf = random_rwkv(V, C, L, F, rescale_every=every)
    trained = {k: v.clone() for k, v in hf.state_dict().items()}
    ids = ids_for(V)
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits  # this forward rescales HF's weights in place
        assert hf.rwkv.layers_are_rescaled
        model = from_rwkv(hf, spiking=False)  # undoes HF's in-place rescaling
        again = from_rwkv(trained, spiking=False)
        for k, v in model.state_dict().items():
            assert torch.equal(v, again.state_dict()[k]), k
        plain = model(ids).logits
        _layer_norms_with_rescaled_eps(model, every)
        assert_close(model(ids).logits, ref)
        # the uniform-eps model: HF's LN of block k sees eps * 4^k on the unscaled stream, a relative change of
        # about (4^k - 1) * eps / (2 var) in its output (var ~ 1 here); allow twice the largest eps, 4^kmax eps
        kmax = L // every
        assert_close(plain, ref, rtol=2 * 4.0**kmax * 1e-5)
        # and it is HF without the rescaling, exactly
        hf0 = random_rwkv(V, C, L, F, rescale_every=0)
        for k, v in hf0.state_dict().items():
            assert torch.equal(v, trained[k]), k
        assert_close(plain, hf0(ids, use_cache=False).logits)


def test_logits_independent_of_rescaling_in_unmodified_hf_only_through_eps():
    """With eps -> 0 the rescaling is an identity: HF rescaled == our model, unmodified HF (float32 keys)."""
    hf = random_rwkv(40, 16, 6, None, rescale_every=2, layer_norm_epsilon=0.0)
    model = from_rwkv(hf, spiking=False)
    ids = ids_for(40)
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits
        # HF's ln_out keeps nn.LayerNorm's default eps 1e-5 whatever the config says: it sees the stream
        # divided by 2^3 after 6 layers, i.e. eps 64e-5 on the unscaled stream
        model.model.ln_out.eps = 1e-5 * 4.0**3
        assert_close(model(ids).logits, ref, rtol=1e-6)


def test_spiking_conversion_keeps_weights_and_applies_overrides():
    hf = random_rwkv(50, 16, 2)
    a = from_rwkv(hf, spiking=False)
    b = from_rwkv(hf, tau=3.0, threshold=0.5, dropout=0.1, eos_token_id=7)
    assert b.config.spiking and b.config.tau == 3.0 and b.config.threshold == 0.5 and b.config.dropout == 0.1
    assert b.config.eos_token_id == 7 and a.config.eos_token_id == hf.config.eos_token_id
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    ids = ids_for(50)
    with torch.no_grad():
        out = b(ids, output_hidden_states=True)
    assert set(out.hidden_states[0].unique().tolist()) <= {0.0, 1.0}  # binary embedding
    # no parameter of the source is shared with the converted model
    hf_ptrs = {p.data_ptr() for p in hf.parameters()}
    assert not any(p.data_ptr() in hf_ptrs for p in b.parameters())


def test_weights_round_trip_spikegpt_rwkv_spikegpt():
    torch.manual_seed(0)
    cfg = SpikeGPTConfig(vocab_size=45, hidden_size=24, num_hidden_layers=3, intermediate_size=56, tau=2.5,
                         threshold=0.8, eos_token_id=3, bos_token_id=3)
    model = SpikeGPTForCausalLM(cfg)
    hf = to_rwkv(model)
    assert isinstance(hf, RwkvForCausalLM) and hf.config.rescale_every == 0
    back = from_rwkv(hf, tau=2.5, threshold=0.8)
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "tau", "threshold",
                "spiking", "eos_token_id", "bos_token_id"):
        assert getattr(back.config, key) == getattr(cfg, key), key


def test_to_rwkv_logits_equal_for_a_nonspiking_model(exact_hf):
    torch.manual_seed(1)
    model = SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, spiking=False))
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        ids = ids_for(30)
        assert_close(to_rwkv(model)(ids, use_cache=False).logits, model(ids).logits)


def test_sources_pth_directory_and_state_dicts_agree(tmp_path):
    hf = random_rwkv(50, 16, 2)
    ref = from_rwkv(hf, spiking=False)
    original = {k: v.clone() for k, v in hf_to_original(hf.state_dict()).items()}
    assert original["blocks.1.att.time_mix_k"].shape == (1, 1, 16)
    torch.save(original, tmp_path / "rwkv4.pth")
    hf.save_pretrained(tmp_path / "hf")
    for src in (tmp_path / "rwkv4.pth", str(tmp_path / "hf"), original, hf.state_dict()):
        got = from_rwkv(src, spiking=False)
        assert got.config.num_hidden_layers == 2 and got.config.hidden_size == 16 and got.config.vocab_size == 50
        for k, v in ref.state_dict().items():
            assert torch.equal(v, got.state_dict()[k]), (src, k)


def test_state_translation_round_trip_and_membranes():
    g = torch.Generator().manual_seed(0)
    hs = [torch.randn(3, 8, 4, generator=g, dtype=torch.float64) for _ in range(5)]
    st = state_from_rwkv(hs)
    assert isinstance(st, SpikeGPTState) and st.att_shift.shape == (4, 3, 8)
    assert torch.equal(st.att_shift[2, 1], hs[1][1, :, 2]) and torch.equal(st.ffn_shift[2, 1], hs[0][1, :, 2])
    for a, b in zip(state_to_rwkv(st), hs):
        assert torch.equal(a, b)
    st.att_mem[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="membrane"):
        state_to_rwkv(st)
    with pytest.raises(ValueError, match="five"):
        state_from_rwkv(hs[:4])


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="attention_hidden_size"):
        from_rwkv(random_rwkv(50, 16, 2, attention_hidden_size=8))
    hf = random_rwkv(50, 16, 2)
    with pytest.raises(ValueError, match="unknown SpikeGPTConfig"):
        from_rwkv(hf, treshold=1.0)
    with pytest.raises(ValueError, match="hidden_size"):
        from_rwkv(hf, hidden_size=32)
    with pytest.raises(ValueError, match="RwkvForCausalLM"):
        from_rwkv(hf.rwkv)
    with pytest.raises(ValueError, match="must be"):
        from_rwkv(12)
    with pytest.raises(FileNotFoundError):
        from_rwkv(tmp_path / "missing.pth")
    SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1)).save_pretrained(
        tmp_path / "sg")
    with pytest.raises(ValueError, match="spikegpt"):
        from_rwkv(tmp_path / "sg")
    with pytest.raises(ValueError, match="unexpected key"):
        from_rwkv({**hf.state_dict(), "rwkv.blocks.0.attention.ln_x.weight": torch.ones(16)})


BRANCH_SITES = [f"model.blocks.{l}.{b}_lif" for l in (0, 1) for b in ("att", "ffn")]


def test_branch_outputs_are_the_residual_updates_of_a_non_spiking_model():
    """Non-spiking, each block adds its two branch outputs to the stream: hidden state l+1 - hidden state l
    (after LN0 in block 0) is the sum of the two recorded LIF inputs of block l, batches stacked along N."""
    teacher = from_rwkv(random_rwkv(30, 8, 2), spiking=False)
    batches = [ids_for(30, B=2, T=7, seed=s) for s in (5, 6)]
    ys = branch_outputs(teacher, batches)
    assert list(ys) == BRANCH_SITES and all(y.shape == (4, 7, 8) and y.dtype == torch.float64 for y in ys.values())
    with torch.no_grad():
        hs = [teacher(ids, output_hidden_states=True).hidden_states for ids in batches]
    for l in (0, 1):
        prev = torch.cat([h[l] for h in hs])
        if l == 0:
            prev = teacher.model.blocks[0].ln0(prev)
        update = torch.cat([h[l + 1] for h in hs]) - prev
        got = ys[f"model.blocks.{l}.att_lif"] + ys[f"model.blocks.{l}.ffn_lif"]
        torch.testing.assert_close(got, update, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at least one batch"):
        branch_outputs(teacher, [])


def test_calibration_picks_the_best_gain_per_channel():
    """Against a brute-force search with the loop LIF above."""
    hf = random_rwkv(30, 8, 2)
    teacher = from_rwkv(hf, spiking=False)
    student = from_rwkv(hf, spiking=True)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    batches = [ids_for(30, B=2, T=12, seed=s) for s in (3, 4)]
    grid = torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    ys = branch_outputs(teacher, batches)
    gains = calibrate_lif_scales(student, teacher, batches, scales=grid)
    assert list(gains) == BRANCH_SITES
    for name, y in ys.items():
        y = y.double()
        errs = []
        for a in grid.tolist():  # (N, T, C) -> the loop runs (T, C) per sequence
            s = torch.stack([loop_lif(a * y[n], 2.0, 1.0, 0.0) for n in range(y.shape[0])])
            errs.append((s - y).square().mean(dim=(0, 1)))
        errs = torch.stack(errs)  # (G, C)
        chosen = errs.gather(0, (grid[:, None] == gains[name].double()[None]).double().argmax(0)[None])[0]
        assert torch.allclose(chosen, errs.min(dim=0).values, rtol=0, atol=1e-12), name
    # the only change: rows of the Linear feeding each LIF (att.output / ffn.value) scaled by its gains
    feeds = {f"model.blocks.{l}.{lin}.weight": f"model.blocks.{l}.{b}_lif"
             for l in (0, 1) for b, lin in (("att", "att.output"), ("ffn", "ffn.value"))}
    for k, v in student.state_dict().items():
        if k in feeds:
            assert torch.allclose(v, before[k] * gains[feeds[k]].double()[:, None], rtol=1e-15, atol=0), k
        else:
            assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="non-spiking"):
        calibrate_lif_scales(student, student, batches)


def test_firing_rates():
    """Against the test's own counts: the embedding's ones from E[idx], the LIFs' spikes from spike_totals."""
    hf = random_rwkv(30, 8, 2)
    student = from_rwkv(hf)
    ids = ids_for(30)
    rates = firing_rates(student, ids)
    assert list(rates) == ["model.emb_spike", *BRANCH_SITES, "mean"]
    emb = student.model.emb.weight[ids]
    assert rates["model.emb_spike"] == pytest.approx(float((emb >= 0).double().mean()), abs=1e-12)
    for name, (spikes, n) in zip(BRANCH_SITES, spike_totals(student, ids)):
        assert rates[name] == pytest.approx(spikes / n, abs=1e-12)
    assert rates["mean"] == pytest.approx(sum(rates[n] for n in BRANCH_SITES) / 4)
    with pytest.raises(ValueError, match="spiking"):
        firing_rates(from_rwkv(hf, spiking=False), ids)
