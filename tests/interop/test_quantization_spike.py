"""spikegpt.interop.quantization, scheme "spike-int8": exact int8 products of the spike counts of a spike-driven model.

References, none of them the code under test:

- the integer product in float64, ``(c @ W_q^T) * s`` from the layer's own int8 weight and scale: exact but for
  the one fp32 rounding of the output (relative 2^-24, where ``|W_q c| < 2^24`` as in these layers);
- the layer's original fp32 weight W: ``|W - s W_q| <= s / 2`` per weight, hence ``|y - W c| <= (s / 2) sum|c|``
  per output (the weight-rounding bound; ``s / 2`` plus ``s * 2^-16``, since torchao divides ``W / s`` in fp32,
  |W / s| <= 128, and s itself is an fp32 value: each adds at most ``128 * 2^-24`` steps);
- torchao's own linear on the same ``Int8Tensor`` weight (its static-activation path, activation scale 1);
- the float64 model whose Linear weights are replaced by ``s W_q``: the quantised model computes it (at these
  shapes fp32 and fp64 give the same counts);
- a tiny model trained here on a task it learns exactly: quantised, it keeps its predictions.

Whole-model logits of an untrained spike-driven model are not compared with fp32 beyond that: the codes are
discontinuous, so the rounding of the weights flips some counts, and at random init the logits then move by tens
of percent (see the module docstring of spikegpt.interop.quantization).
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import assert_one_line_error, run
from torch import nn

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.interop import quantization
from spikegpt.interop.quantization import QuantizedLinear, quantization_scheme, quantize, spike_linears
from spikegpt.spike_coding import SpikeEncoder

V, C, L = 128, 64, 2
HALF_STEP = 0.5 + 2**-16  # in units of the scale s (see the module docstring)
PER_BLOCK = ("att.key", "att.value", "att.receptance", "att.output", "ffn.key", "ffn.receptance", "ffn.value")


def tiny(code="int3", spiking=True, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, hidden_size=C, num_hidden_layers=L, context_length=64, spiking=spiking,
               spike_inputs=code)
    cfg.update(kw)
    return SpikeGPTForCausalLM(SpikeGPTConfig(**cfg)).eval()


def q(model, **kw):
    return quantize(copy.deepcopy(model), "spike-int8", **kw)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))


def quantised_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def reference(layer, c):
    """``(c @ W_q^T) * s`` in float64 from the layer's int8 weight and fp32 scale."""
    w = layer.weight
    return (c.double() @ w.qdata.double().T) * w.scale.double().reshape(-1)


def counts(shape, lo, gen):
    """Integer counts in [lo, lo + 255] as floats, including both ends."""
    c = torch.randint(lo, lo + 256, shape, generator=gen).float()
    if c.numel() >= 2:
        c.view(-1)[:2] = torch.tensor([lo, lo + 255], dtype=c.dtype)
    return c


def test_the_spike_reading_layers_get_int8_weights_within_half_a_step():
    model = tiny()
    qm = q(model)
    want = {f"model.blocks.{l}.{p}" for l in range(L) for p in PER_BLOCK} | {"head"}
    assert set(spike_linears(model)) == want == set(quantised_layers(qm))
    from torchao.quantization import Int8Tensor

    ref = dict(model.named_modules())
    for name, m in quantised_layers(qm).items():
        w = m.weight
        assert isinstance(w, Int8Tensor) and w.qdata.dtype == torch.int8, name
        assert w.qdata.shape == (m.out_features, m.in_features) and w.scale.numel() == m.out_features  # per channel
        s = w.scale.double().reshape(-1, 1)
        err = (ref[name].weight.double() - w.qdata.double() * s).abs()
        assert bool((err <= s * HALF_STEP).all()), name
        assert err.max() > s.min() / 4  # rounded
        assert m.spike_offset == 128  # int3 counts can be negative
    assert type(qm.model.emb.weight) is nn.Parameter and qm.model.emb.weight.dtype == torch.float32
    assert all(type(e.gain) is nn.Parameter for e in qm.modules() if isinstance(e, SpikeEncoder))
    assert set(qm.state_dict()) == set(model.state_dict())
    assert quantization_scheme(qm) == "spike-int8"
    assert {m.spike_offset for m in quantised_layers(q(tiny("binary"))).values()} == {0}  # 0/1 spikes: no offset
    assert {m.spike_offset for m in quantised_layers(q(tiny("lif"))).values()} == {0}
    keep = q(model, quantize_head=False)
    assert type(keep.head) is nn.Linear and keep.head.weight.dtype == torch.float32
    assert len(quantised_layers(keep)) == 7 * L


@pytest.mark.parametrize("code", ["int3", "binary"])
def test_layer_is_the_integer_product(code):
    """Any M (0, 1, many), 2-D and 3-D inputs, strided views, both ends of the count range: one fp32 rounding."""
    qm = q(tiny(code))
    gen = torch.Generator().manual_seed(2)
    for name in ("model.blocks.0.att.key", "model.blocks.1.ffn.value", "head"):
        layer = dict(qm.named_modules())[name]
        lo = -layer.spike_offset
        K = layer.in_features
        wide = counts((3, 9, 2 * K), lo, gen)
        single = torch.empty_strided((1, K), (1, 1)).copy_(counts((1, K), lo, gen))
        inputs = [counts((1, 1, K), lo, gen), counts((2, 7, K), lo, gen), counts((37, K), lo, gen),
                  torch.zeros(1, 0, K), wide[:, 1:, ::2],  # a strided view
                  single]  # (1, K) of strides (1, 1), which torch._int_mm gets wrong
        assert inputs[-1].stride() == (1, 1)
        for c in inputs:
            with torch.no_grad():
                y = layer(c)
            ref = reference(layer, c)
            assert y.shape == (*c.shape[:-1], layer.out_features) and y.dtype == torch.float32
            assert bool(((y.double() - ref).abs() <= ref.abs() * 2**-24).all()), (name, tuple(c.shape))


def test_both_integer_kernels_give_the_same_product_and_copies_rebuild_theirs(monkeypatch):
    """Rows > 1 run oneDNN's quantised linear (prepacked weight, offset and scales inside), one row ``torch._int_mm``:
    the same exact sums, so equal outputs; without oneDNN every M runs ``torch._int_mm``. A model whose packed
    weights exist (after a call) deep-copies (an opaque oneDNN tensor would not); the copy packs its own and computes
    the same."""
    qm = q(tiny("int3"))
    layer = qm.model.blocks[0].ffn.key
    c = counts((9, layer.in_features), -128, torch.Generator().manual_seed(5))
    with torch.no_grad():
        onednn = layer(c)
        rows = torch.cat([layer(c[i : i + 1]) for i in range(c.shape[0])])
    assert "_onednn_packed" in layer.__dict__  # the oneDNN path ran
    assert torch.equal(onednn, rows)
    clone = copy.deepcopy(qm)
    assert "_onednn_packed" not in clone.model.blocks[0].ffn.key.__dict__
    with torch.no_grad():
        assert torch.equal(clone.model.blocks[0].ffn.key(c), onednn)
    monkeypatch.setattr(quantization, "_onednn_qlinear_available", lambda: False)
    fresh = q(tiny("int3")).model.blocks[0].ffn.key
    with torch.no_grad():
        assert torch.equal(fresh(c), onednn)
    assert "_onednn_packed" not in fresh.__dict__


def test_bf16_model():
    """A bf16 model's layers return the integer product rounded to bf16 (the fp32 product's rounding first)."""
    qm = q(tiny().to(torch.bfloat16))
    layer = qm.model.blocks[0].ffn.key
    c = counts((2, 5, layer.in_features), -128, torch.Generator().manual_seed(3)).to(torch.bfloat16)
    with torch.no_grad():
        y = layer(c)
    assert y.dtype == torch.bfloat16
    ref = reference(layer, c.float())
    assert bool(((y.double() - ref).abs() <= ref.abs() * (2**-8 + 2**-23)).all())


@pytest.mark.parametrize("code", ["int3", "int127", "lif"])
def test_layer_is_within_the_weight_rounding_bound_of_its_fp32_layer(code):
    model = tiny(code)
    qm = q(model)
    ref = dict(model.named_modules())
    lo, hi = {"int3": (-3, 3), "int127": (-127, 127), "lif": (0, 1)}[code]
    gen = torch.Generator().manual_seed(4)
    worst = 0.0
    for name, layer in quantised_layers(qm).items():
        c = torch.randint(lo, hi + 1, (3, 4, layer.in_features), generator=gen).float()
        with torch.no_grad():
            y = layer(c).double()
        exact = F.linear(c.double(), ref[name].weight.double())
        bound = layer.weight.scale.double().reshape(-1) * HALF_STEP * c.abs().sum(-1, keepdim=True).double()
        err = (y - exact).abs()
        assert bool((err <= bound + exact.abs() * 2**-23).all()), name
        assert err.max() > 0  # the weights were rounded
        worst = max(worst, float((err / bound).max().detach()))
    assert 0.05 < worst <= 1.0  # the bound is not loose by orders of magnitude


def test_torchao_own_linear_computes_the_same():
    """torchao's static-activation int8 path (scale 1: the integer inputs as they are) on the same weights."""
    qm = q(tiny())
    c = counts((2, 6, C), -128, torch.Generator().manual_seed(5))
    for name in ("model.blocks.0.att.receptance", "head"):
        layer = dict(qm.named_modules())[name]
        with torch.no_grad():
            ours, theirs = layer(c), F.linear(c, layer.weight)  # the torchao tensor's own dispatch
        torch.testing.assert_close(ours, theirs, rtol=2**-22, atol=0)


def dequantised_fp64(model, qmodel):
    out = copy.deepcopy(model).double()
    qmods = dict(qmodel.named_modules())
    with torch.no_grad():
        for name, m in out.named_modules():
            if isinstance(qmods.get(name), QuantizedLinear):
                w = qmods[name].weight
                m.weight.copy_(w.qdata.double() * w.scale.double().reshape(-1, 1))
    return out


@pytest.mark.parametrize("spiking", [True, False], ids=["spiking", "nonspiking"])
@pytest.mark.parametrize("code", ["int3", "binary", "lif"])
def test_model_computes_what_its_weights_say_on_integer_counts(ids, code, spiking):
    """The quantised model equals the fp64 model with the rounded weights; every quantised layer reads integers in
    its code's range (so the cast to int8 is exact), checked by a hook here and by check_inputs=True."""
    model = tiny(code, spiking=spiking, seed=3)
    qm = q(model, check_inputs=True)
    seen = []

    def record(mod, args):
        seen.append((mod, args[0].detach().clone()))

    ranges = {m: lo for m, lo in spike_linears(qm).values()}
    hooks = [m.register_forward_pre_hook(record) for m in ranges]
    with torch.no_grad():
        out = qm(ids).logits
    for h in hooks:
        h.remove()
    assert {m for m, _ in seen} == set(ranges)
    hi = 1 if code in ("binary", "lif") else 3
    for m, c in seen:
        assert bool((c == c.round()).all())
        assert int(c.min()) >= ranges[m] and int(c.max()) <= hi and c.abs().sum() > 0
    with torch.no_grad():
        ref = dequantised_fp64(model, qm)(ids).logits
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("code", ["int3", "lif"])
def test_spiking_model_generates_and_keeps_fp32_state(ids, code):
    qm = q(tiny(code))
    with torch.no_grad():
        out = qm.generate(ids[:1, :5], max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 11) and bool((out[:, :5] == ids[:1, :5]).all()) and int(out.max()) < V
        # greedy decoding by hand from the carried state gives the same tokens
        o = qm(ids[:1, :5], use_cache=True)
        state, tok, mine = o.state, o.logits[:, -1].argmax(-1, keepdim=True), []
        for _ in range(6):
            mine.append(tok)
            o = qm(tok, state=state, use_cache=True)
            state, tok = o.state, o.logits[:, -1].argmax(-1, keepdim=True)
        assert torch.equal(torch.cat(mine, 1), out[:, 5:])
        state = qm(ids, use_cache=True).state
    for f in ("wkv_num", "wkv_den", "wkv_max", "att_mem", "ffn_mem"):
        assert getattr(state, f).dtype == torch.float32, f
    assert state.att_shift.dtype == torch.float32
    if code == "lif":
        assert state.enc_mem.dtype == torch.float32 and state.head_mem.dtype == torch.float32


def test_trained_model_keeps_its_predictions():
    """A 1-block int3 model trained to follow a fixed permutation (next = perm[token]) predicts it exactly;
    quantised it keeps >= 97% of its argmax predictions and its loss within 0.05 nats."""
    g = torch.Generator().manual_seed(0)
    vocab = 32
    perm = torch.randperm(vocab, generator=g)

    def batch(B, T, gen):
        x = torch.empty(B, T, dtype=torch.long)
        x[:, 0] = torch.randint(0, vocab, (B,), generator=gen)
        for t in range(1, T):
            x[:, t] = perm[x[:, t - 1]]
        return x

    torch.manual_seed(0)
    model = SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=1,
                                               spike_inputs="int3"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        x = batch(8, 32, g)
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x = batch(4, 32, torch.Generator().manual_seed(5))
    qm = q(model, check_inputs=True)
    with torch.no_grad():
        a, b = model(x).logits[:, :-1], qm(x).logits[:, :-1]
    target = x[:, 1:]
    assert (a.argmax(-1) == target).float().mean() > 0.95  # it learned the task
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.97
    la, lb = F.cross_entropy(a.transpose(1, 2), target), F.cross_entropy(b.transpose(1, 2), target)
    assert abs(la - lb) < 0.05
    assert (a - b).abs().max() > 1e-4  # quantised, not the same model


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"spike-driven model.*spike_inputs='none'.*use 'int8'"):
        quantize(tiny("none"), "spike-int8")
    with pytest.raises(ValueError, match=r"spike_inputs=None"):
        quantize(nn.Sequential(nn.Linear(4, 4)), "spike-int8")
    with pytest.raises(ValueError, match="fp32 or bf16 model"):
        quantize(tiny().double(), "spike-int8")
    done = q(tiny())
    with pytest.raises(ValueError, match="already quantised"):
        quantize(done, "spike-int8")
    with pytest.raises(ValueError, match="already quantised"):
        quantize(done, "int8")
    with pytest.raises(ValueError, match=r"2 <= in_features <= 66311.*wrong values for 1.* has 1$"):
        quantize(tiny(hidden_size=1, vocab_size=8), "spike-int8")
    monkeypatch.setattr(quantization, "_model_device_dtype", lambda m: (torch.device("cuda"), torch.float32))
    with pytest.raises(ValueError, match="'spike-int8' is not supported on device 'cuda'"):
        quantize(tiny(), "spike-int8")
    monkeypatch.undo()
    checked = q(tiny(), check_inputs=True)
    layer, binary = checked.model.blocks[0].att.key, q(tiny("binary"), check_inputs=True).head
    for bad, lin, rng in ((0.5, layer, r"\[-128, 127\]"), (128.0, layer, r"\[-128, 127\]"),
                          (-1.0, binary, r"\[0, 255\]"), (float("nan"), layer, "")):
        x = torch.zeros(1, 2, lin.in_features)
        x[0, 1, 3] = bad
        with pytest.raises(ValueError, match=r"integer spike counts in " + rng):
            lin(x)
    with pytest.raises(ValueError, match="input of shape"):
        layer(torch.zeros(1, 2, C + 1))
    for name in [n for n in sys.modules if n == "torchao" or n.startswith("torchao.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'spikegpt\[deploy\]'"):
        quantize(tiny(), "spike-int8")


def test_saving_is_refused_and_the_fp32_model_requantises_the_same(ids, tmp_path):
    model = tiny()
    qm = q(model)
    with pytest.raises(ValueError, match="for inference.*save the fp32 model"):
        qm.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()
    model.save_pretrained(tmp_path / "fp32")  # the original still saves
    again = quantize(SpikeGPTForCausalLM.from_pretrained(tmp_path / "fp32"), "spike-int8")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, qm(ids).logits)


def test_cli_generate_quantize_spike_int8(capsys, tmp_path):
    from spikegpt.train.tokenization import char_tokenizer

    tok = char_tokenizer(["abcdefghijklmnopqrstuvwxyz ."], 32)
    for code in ("int3", "none"):
        d = tmp_path / code
        tiny(code, vocab_size=len(tok), eos_token_id=tok.eos_token_id).save_pretrained(d)
        tok.save_pretrained(d)
    code, out, err = run(capsys, "generate", tmp_path / "int3", "the cat", "--greedy", "--max-new-tokens", 6,
                         "--quantize", "spike-int8", "--no-stream", "--quiet")
    assert code == 0, err
    model = quantize(SpikeGPTForCausalLM.from_pretrained(tmp_path / "int3"), "spike-int8")
    enc = tok("the cat", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        want = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.strip("\n") == tok.decode(want[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    code, _, err = run(capsys, "generate", tmp_path / "none", "the cat", "--quantize", "spike-int8")
    assert_one_line_error(code, err, "--quantize spike-int8", "spike_inputs='none'")
    code, out, err = run(capsys, "generate", tmp_path / "none", "the cat", "--greedy", "--max-new-tokens", 6,
                         "--quantize", "int8-dynamic", "--no-stream", "--quiet")
    assert code == 0, err
    model = quantize(SpikeGPTForCausalLM.from_pretrained(tmp_path / "none"), "int8-dynamic")
    with torch.no_grad():
        want = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.strip("\n") == tok.decode(want[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    from spikegpt.tools.cli import QUANTIZE_SCHEMES

    assert QUANTIZE_SCHEMES == quantization.SCHEMES  # the CLI offers every scheme
