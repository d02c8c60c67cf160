"""What makes a CPU decode step cheap without changing what it computes: the "fp32" weight layout and the grouped
per-token rounding of int8-dynamic layers that share an input width.

- "fp32" keeps every weight's shape and values and stores it transposed: the model must give the plain model's
  logits to fp32 rounding (the matmul sums in another order), save as the plain model does, and leave a head tied to
  the embedding alone (the embedding reads rows of it).
- ``QuantizedLinear.forward_group`` rounds the inputs of several int8-dynamic layers in one pass; the rounding is
  per row, so each layer must get bit for bit what it gets when called alone; with hooks on a layer (or inputs
  that do not fit) it must call the layers one by one, so the hooks run and the errors are the layer's own.
"""

from __future__ import annotations

import copy

import pytest
import torch
from interop_helpers import tiny_model
from torch import nn

from spikegpt import SpikeGPTForCausalLM
from spikegpt.interop.quantization import QuantizedLinear, quantization_scheme, quantize


def tiny(**kw):
    return tiny_model(**{"vocab_size": 128, "hidden_size": 64, "spiking": False, **kw})


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("spiking", [False, True], ids=["rwkv4", "spiking"])
def test_fp32_layout_keeps_values_and_logits(spiking, ids):
    plain = tiny(spiking=spiking)
    laid = quantize(copy.deepcopy(plain), "fp32")
    assert quantization_scheme(laid) == "fp32"
    pairs = [(m, dict(laid.named_modules())[n]) for n, m in plain.named_modules() if isinstance(m, nn.Linear)]
    assert len(pairs) == 1 + 2 * 7
    for a, b in pairs:
        assert b.weight.shape == a.weight.shape and torch.equal(b.weight, a.weight)
        assert b.weight.stride() == (1, a.weight.shape[0])  # stored transposed
        assert type(b) is nn.Linear and isinstance(b.weight, nn.Parameter)
    with torch.no_grad():
        ref, out = plain(ids), laid(ids)
        torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
        # the recurrent mode too (a decode step reads one row)
        st = laid(ids[:, :6], use_cache=True).state
        step = laid(ids[:, 6:7], state=st, use_cache=True).logits
        torch.testing.assert_close(step, ref.logits[:, 6:7], rtol=1e-4, atol=1e-5)


def test_fp32_layout_saves_as_the_plain_model(ids, tmp_path):
    plain = tiny()
    quantize(copy.deepcopy(plain), "fp32").save_pretrained(tmp_path)
    back = SpikeGPTForCausalLM.from_pretrained(tmp_path).eval()
    for (n, a), (_, b) in zip(plain.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    assert back.model.blocks[0].att.key.weight.is_contiguous()  # loaded in the usual layout


def test_fp32_layout_leaves_a_tied_head_and_refuses_other_dtypes():
    tied = tiny(tie_word_embeddings=True)
    assert tied.head.weight is tied.model.emb.weight
    quantize(tied, "fp32")
    assert tied.model.emb.weight.is_contiguous()  # the embedding still reads contiguous rows
    assert not tied.model.blocks[0].att.key.weight.is_contiguous()
    with pytest.raises(ValueError, match="'fp32' lays out the weights of an fp32 model; this one is torch.bfloat16"):
        quantize(tiny().to(torch.bfloat16), "fp32")
    with pytest.raises(ValueError, match="already quantised"):
        quantize(tied, "fp32")


def _group(model, layer=0):
    att = model.model.blocks[layer].att
    return [att.key, att.value, att.receptance]


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 5)], ids=["one-row", "batch-step", "prefill"])
def test_forward_group_is_each_layer_alone_bit_for_bit(shape):
    model = quantize(tiny(), "int8-dynamic")
    linears = _group(model)
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(*shape, 64, generator=gen) * s for s in (1.0, 5.0, 0.01)]
    xs[1][0, 0] = 0.0  # a zero row among others
    with torch.no_grad():
        together = QuantizedLinear.forward_group(linears, xs)
        alone = [m(x) for m, x in zip(linears, xs)]
    for a, b in zip(together, alone):
        assert a.shape == (*shape, 64) and a.dtype == torch.float32
        assert torch.equal(a, b)


def test_forward_group_calls_hooked_or_mismatched_layers_one_by_one():
    model = quantize(tiny(), "int8-dynamic")
    linears = _group(model)
    seen = []
    handle = linears[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    xs = [torch.randn(1, 1, 64) for _ in linears]
    with torch.no_grad():
        out = QuantizedLinear.forward_group(linears, xs)
    handle.remove()
    assert seen == [torch.Size([1, 1, 64])]  # the hook ran, once
    assert torch.equal(out[1], linears[1](xs[1]))
    with pytest.raises(ValueError, match=r"input of shape \(1, 1, 32\) for in_features 64"):
        QuantizedLinear.forward_group(linears, [torch.randn(1, 1, 32) for _ in linears])


def test_model_groups_same_width_projections_only_for_int8_dynamic(ids, monkeypatch):
    """The blocks hand TimeMix's three and ChannelMix's two same-width projections to ``forward_group`` (five per
    block); the model's output is what calling each layer alone gives."""
    model = quantize(tiny(), "int8-dynamic")
    with torch.no_grad():
        grouped = model(ids).logits
    calls = []

    def one_by_one(linears, xs):
        calls.append(len(linears))
        return [m(x) for m, x in zip(linears, xs)]

    monkeypatch.setattr(QuantizedLinear, "forward_group", staticmethod(one_by_one))
    with torch.no_grad():
        alone = model(ids).logits
    assert calls == [3, 2, 3, 2]
    assert torch.equal(grouped, alone)
    assert not hasattr(nn.Linear, "forward_group")  # a plain model's Linear layers are called one by one


def test_int8_dynamic_compiles_to_the_same_rounding(ids):
    """A compiled int8-dynamic decode step (what ``generate(compile_config=...)`` runs) against the eager one and fp32.

    Compiled, ``forward_group`` rounds layer by layer (Inductor fuses that anyway; the shared buffer's row views would
    reach ``torch._int_mm`` with a 0 row stride, on which its CPU kernel gives wrong values: the errors were ~1e6).
    Inductor may also compute ``max|x| / 127.5`` as a product by the reciprocal, so a rare input on a rounding edge
    lands one int8 step away: the compiled logits stay within 1% of the eager ones, and within the scheme's 5% of fp32
    (see test_quantization.py)."""
    from transformers import CompileConfig

    plain = tiny()
    model = quantize(copy.deepcopy(plain), "int8-dynamic")
    step = model.get_compiled_call(CompileConfig(fullgraph=True, mode="default"))
    with torch.no_grad():
        st = model(ids[:, :8], use_cache=True).state
        x = ids[:, 8:9]
        eager = model(x, state=st, use_cache=True).logits
        compiled = step(input_ids=x, state=st, use_cache=True, return_dict=True).logits
        ref = plain(x, state=plain(ids[:, :8], use_cache=True).state, use_cache=True).logits

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert rel(compiled, eager) < 0.01
    assert rel(compiled, ref) < 0.05
