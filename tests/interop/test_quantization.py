"""spikegpt.interop.quantization: bf16 / int8 / int4 / int8-dynamic models through torchao, on tiny CPU models.

Tolerances, from what each scheme rounds (weights of these models are N(0, 1/fan_in)):

- bf16 rounds every weight and activation to 8 significant bits (relative 2^-9 = 0.2%); a few dozen such
  roundings in series with random signs give ~1% on the logits: bound 3%.
- int8 per output channel: step = max|w_row| / 127, ~2.5 sigma for rows of 64-256 weights, so the rounding
  error is 2.5 / 127 / sqrt(12) = 0.6% of sigma per weight and of the output of each Linear (checked per layer:
  1.5%); with the bf16 matmul on top and ~8 Linear layers in series: bound 4% on the logits.
- int4 in groups of 32 (asymmetric): step = range / 15, ~4 sigma / 15, so 8% per weight and per Linear (per-layer
  bound 15%); over the model: bound 40% (it is the scheme's real accuracy on random weights; the trained-model
  perplexity in docs/inference.md is the measure that matters).
- int8-dynamic adds to the int8 weights the per-token int8 rounding of every Linear input: step = max|x_row| / 127.5,
  ~2.5 sigma / 127.5 for rows of 64-256 Gaussian values, so 0.6% of sigma per input as for the weights; the two
  roundings together ~0.8% per Linear output (per-layer bound 2%), ~8 in series: bound 5% on the logits.

And every scheme must change something (logits not equal to fp32; the Linear weights torchao tensors), and the
quantised layers must compute exactly what their weights say: with ``compute_dtype=None`` (torchao's kernels in
fp32) the model equals the fp32 model whose weights are replaced by their dequantised values, to fp32 rounding.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchao.utils import TorchAOBaseTensor

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.interop import quantization
from spikegpt.interop.quantization import QuantizedLinear, quantization_scheme, quantize, use_fused_kernels

REL_TOL = {"bf16": 0.03, "int8": 0.04, "int4": 0.40, "int8-dynamic": 0.05}
LAYER_TOL = {"int8": 0.015, "int4": 0.15, "int8-dynamic": 0.02}
GROUP = 32  # int4 group size for these narrow models


def tiny(spiking=False, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, context_length=64, spiking=spiking)
    cfg.update(kw)
    return SpikeGPTForCausalLM(SpikeGPTConfig(**cfg)).eval()


@pytest.fixture(scope="module")
def fp32():
    return tiny()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


def q(model, scheme, **kw):
    kw.setdefault("group_size", GROUP)
    return quantize(copy.deepcopy(model), scheme, **kw)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def block_linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"]


@pytest.mark.parametrize("scheme", ["bf16", "int8", "int4", "int8-dynamic"])
def test_logits_close_to_fp32_but_not_equal(fp32, ids, scheme):
    with torch.no_grad():
        ref = fp32(ids).logits
        out = q(fp32, scheme)(ids).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()
    err = rel(out, ref)
    assert err < REL_TOL[scheme], err
    assert (out.float() - ref).abs().max() > 1e-5  # the quantisation did something


def test_weights_are_what_each_scheme_says(fp32):
    m8, m4, mb = q(fp32, "int8"), q(fp32, "int4"), q(fp32, "bf16")
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor
    from torchao.quantization import Int8Tensor

    for name, m in block_linears(m8):
        assert isinstance(m, QuantizedLinear) and isinstance(m.weight, Int8Tensor), name
        assert m.weight.qdata.dtype == torch.int8 and m.weight.scale.numel() == m.out_features  # per channel
    for name, m in block_linears(m4):
        assert isinstance(m.weight, Int4OpaqueTensor) and m.weight.block_size == [1, GROUP], name
    assert isinstance(m8.head.weight, Int8Tensor) and isinstance(m4.head.weight, Int8Tensor)  # head int8 in both
    for m in (m8, m4):  # the embedding is left alone
        assert type(m.model.emb.weight) is nn.Parameter and m.model.emb.weight.dtype == torch.float32
        assert m.model.ln_out.weight.dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 and not isinstance(p, TorchAOBaseTensor) for p in mb.parameters())
    assert [quantization_scheme(m) for m in (m8, m4, mb, fp32)] == ["int8", "int4", "bf16", None]
    keep = q(fp32, "int8", quantize_head=False)
    assert type(keep.head) is nn.Linear and keep.head.weight.dtype == torch.float32
    # the state-dict keys do not change (only the tensor types)
    assert set(m8.state_dict()) == set(fp32.state_dict())


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_each_quantised_linear_is_close_to_its_fp32_layer(fp32, scheme):
    qm = q(fp32, scheme)
    ref = dict(fp32.named_modules())
    x = torch.randn(5, 64)
    with torch.no_grad():
        for name, m in block_linears(qm):
            xin = torch.randn(5, m.in_features)
            err = rel(m(xin), ref[name](xin))
            assert 1e-6 < err < LAYER_TOL[scheme], (name, err)
        err = rel(qm.head(x), fp32.head(x))  # the int8 head
        assert 1e-6 < err < LAYER_TOL["int8"], err


def test_bf16_single_row_path_matches_the_matmul(fp32):
    """bf16 Linear layers run torch.mv for one input row: the same products, summed in another order."""
    mb = q(fp32, "bf16")
    lin = mb.model.blocks[0].ffn.value
    assert isinstance(lin, QuantizedLinear) and type(lin.weight) is nn.Parameter
    x = torch.randn(1, 1, lin.in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        y = lin(x)
        ref = torch.nn.functional.linear(x.float(), lin.weight.float())
    assert y.shape == (1, 1, lin.out_features) and y.dtype == torch.bfloat16
    assert rel(y, ref) < 2**-7  # bf16 rounding of the output (2^-9) and of the fp32 sum


def dequantised_copy(model, qmodel):
    """The fp32 model whose Linear weights are those of ``qmodel`` dequantised."""
    out = copy.deepcopy(model)
    qmods = dict(qmodel.named_modules())
    with torch.no_grad():
        for name, m in out.named_modules():
            if isinstance(m, nn.Linear):
                w = qmods[name].weight
                if isinstance(w, TorchAOBaseTensor):
                    eye = torch.eye(m.in_features, dtype=torch.float32)
                    m.weight.copy_(torch.nn.functional.linear(eye, w).t().float())  # columns of W = W @ e_i
    return out


@pytest.mark.parametrize("spiking", [False, True], ids=["rwkv4", "spiking"])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantised_model_computes_what_its_weights_say(ids, scheme, spiking):
    """compute_dtype=None: torchao's kernels in fp32 equal the fp32 model with the dequantised weights."""
    model = tiny(spiking=spiking, seed=3)
    qm = q(model, scheme, compute_dtype=torch.float32)
    deq = dequantised_copy(model, qm)
    with torch.no_grad():
        torch.testing.assert_close(qm(ids).logits, deq(ids).logits, atol=1e-4, rtol=1e-4)


def _per_token_int8(x):
    """torchao's symmetric per-token int8 rounding of x (M, K), written out: (codes in float64, scales (M, 1))."""
    scale = torch.clamp(x.abs().amax(dim=-1, keepdim=True) / 127.5, min=torch.finfo(torch.float32).eps)
    return torch.clamp(torch.round(x * (1.0 / scale)), -128, 127).double(), scale.double()


def test_int8_dynamic_layer_is_the_integer_product_of_its_rounded_input(fp32):
    """Each int8-dynamic layer computes ``s_x s_w (W_q q)`` with q torchao's per-token rounding of its input: against
    that product in float64 (exact but for the fp32 output's rounding), and against torchao's own linear on the same
    weights (its W8A8 path); for one row (``torch._int_mm``), many rows (oneDNN), 3-D inputs and rows with zeros."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, quantize_

    qm = q(fp32, "int8-dynamic")
    theirs = copy.deepcopy(fp32)
    quantize_(theirs, Int8DynamicActivationInt8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    mods, their_mods = dict(qm.named_modules()), dict(theirs.named_modules())
    gen = torch.Generator().manual_seed(4)
    for name in ("model.blocks.0.att.key", "model.blocks.1.ffn.value", "head"):
        layer = mods[name]
        assert isinstance(layer, QuantizedLinear) and layer.dynamic_int8 and layer.spike_offset == 128
        K = layer.in_features
        with_zero_row = torch.randn(4, K, generator=gen)
        with_zero_row[1] = 0.0
        for x in (torch.randn(1, K, generator=gen) * 3, torch.randn(2, 5, K, generator=gen), with_zero_row):
            with torch.no_grad():
                y = layer(x)
                y_torchao = their_mods[name](x)
            codes, sx = _per_token_int8(x.reshape(-1, K))
            w = layer.weight
            ref = ((codes @ w.qdata.double().T) * w.scale.double().reshape(-1) * sx).reshape(y.shape)
            assert y.shape == (*x.shape[:-1], layer.out_features)
            assert bool(((y.double() - ref).abs() <= ref.abs() * 2**-22 + 1e-30).all()), (name, tuple(x.shape))
            torch.testing.assert_close(y, y_torchao, rtol=1e-5, atol=1e-6)
        ref_layer = dict(fp32.named_modules())[name]
        xin = torch.randn(5, K, generator=gen)
        with torch.no_grad():
            err = rel(layer(xin), ref_layer(xin))
        assert 1e-6 < err < LAYER_TOL["int8-dynamic"], (name, err)


def test_fused_bf16_int8_kernel_matches_torchao_fp32_path(fp32, ids):
    fused, plain = q(fp32, "int8"), q(fp32, "int8", compute_dtype=None)
    assert all(m.fused_int8_scale is not None for _, m in block_linears(fused))  # aten's fused kernel in use
    assert all(m.fused_int8_scale is None for _, m in block_linears(plain))
    with torch.no_grad():
        assert rel(fused(ids).logits, plain(ids).logits) < REL_TOL["bf16"]


@pytest.mark.parametrize("spiking", [False, True], ids=["rwkv4", "spiking"])
@pytest.mark.parametrize("scheme", ["bf16", "int8", "int4", "int8-dynamic"])
def test_state_dtypes(ids, scheme, spiking):
    """WKV accumulators and membranes fp32 always; token-shift fields in the activation dtype (fp32 for
    int8/int4, whose Linear layers alone compute in bf16; bf16 for the bf16 model)."""
    qm = q(tiny(spiking=spiking), scheme)
    with torch.no_grad():
        state = qm(ids, use_cache=True).state
    shift = torch.bfloat16 if scheme == "bf16" else torch.float32
    assert state.att_shift.dtype == state.ffn_shift.dtype == shift
    for f in ("wkv_num", "wkv_den", "wkv_max", "att_mem", "ffn_mem"):
        assert getattr(state, f).dtype == torch.float32, f


@pytest.mark.parametrize("scheme", ["bf16", "int8", "int4", "int8-dynamic"])
def test_generation_and_recurrent_mode(fp32, ids, scheme):
    qm = q(fp32, scheme)
    with torch.no_grad():
        out = qm.generate(ids[:1, :6], max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 14) and bool((out[:, :6] == ids[:1, :6]).all()) and int(out.max()) < 128
        batch = qm.generate(ids[:, :6], max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert batch.shape == (2, 10)
        par = qm(ids).logits  # parallel mode vs one token at a time from the carried state
        state, steps = None, []
        for t in range(ids.shape[1]):
            o = qm(ids[:, t : t + 1], state=state, use_cache=True)
            state = o.state
            steps.append(o.logits)
    assert rel(torch.cat(steps, 1), par) < 0.02  # same weights; only bf16 rounding in a different order


def test_spiking_model_quantises_and_generates(ids):
    model = tiny(spiking=True)
    for scheme in ("bf16", "int8", "int4", "int8-dynamic"):
        qm = q(model, scheme)
        with torch.no_grad():
            logits = qm(ids).logits
            out = qm.generate(ids[:1, :4], max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.isfinite(logits).all() and out.shape == (1, 8)


def test_errors(fp32, monkeypatch):
    with pytest.raises(ValueError, match="unknown quantisation scheme 'fp8'.*bf16, int8, int4"):
        quantize(copy.deepcopy(fp32), "fp8")
    done = q(fp32, "int8")
    with pytest.raises(ValueError, match="already quantised"):
        quantize(done, "int4")
    with pytest.raises(ValueError, match="divisible by the group size 128.*in_features.*64|in_features divisible"):
        quantize(copy.deepcopy(fp32), "int4", group_size=128)
    auto = quantize(copy.deepcopy(fp32), "int4")  # no group_size: the largest that divides the widths (64 here)
    assert auto.model.blocks[0].att.key.weight.block_size == [1, 64]
    with pytest.raises(ValueError, match="divisible by 32 at least"):
        quantize(tiny(hidden_size=48), "int4")
    with pytest.raises(ValueError, match="group_size must be one of"):
        quantize(copy.deepcopy(fp32), "int4", group_size=48)
    with pytest.raises(ValueError, match="fp32 or bf16 model"):
        quantize(copy.deepcopy(fp32).double(), "int8")
    with torch.device("meta"):
        meta = SpikeGPTForCausalLM(fp32.config)
    with pytest.raises(ValueError, match="meta device"):
        quantize(meta, "int8")
    # a device the scheme does not run on (no GPU here: pretend the model is on one)
    monkeypatch.setattr(quantization, "_model_device_dtype", lambda m: (torch.device("cuda"), torch.float32))
    with pytest.raises(ValueError, match="'int4' is not supported on device 'cuda'"):
        quantize(copy.deepcopy(fp32), "int4")
    with pytest.raises(ValueError, match="'int8-dynamic' is not supported on device 'cuda'"):
        quantize(copy.deepcopy(fp32), "int8-dynamic")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="int8-dynamic quantises an fp32 or bf16 model"):
        quantize(copy.deepcopy(fp32).double(), "int8-dynamic")
    # torchao missing
    for name in [n for n in sys.modules if n == "torchao" or n.startswith("torchao.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'spikegpt\[deploy\]'"):
        quantize(copy.deepcopy(fp32), "int8")
    assert quantization_scheme(quantize(copy.deepcopy(fp32), "bf16")) == "bf16"  # bf16 needs no torchao


@pytest.mark.parametrize("scheme", ["int8", "int4", "int8-dynamic"])
def test_a_torchao_quantised_model_is_not_saved_but_bf16_is(fp32, scheme, tmp_path):
    """int8 / int4 weights are torchao tensors: save_pretrained refuses them by name, writing nothing (it used to
    fail deep in safetensors with "Attempted to access the data pointer on an invalid python storage")."""
    with pytest.raises(ValueError, match=f"quantised with '{scheme}' is for inference.*save the fp32 model"):
        quantize(copy.deepcopy(fp32), scheme).save_pretrained(tmp_path / scheme)
    assert not (tmp_path / scheme).exists()
    quantize(copy.deepcopy(fp32), "bf16").save_pretrained(tmp_path / "bf16")
    assert (tmp_path / "bf16" / "model.safetensors").is_file()


def test_hf_from_pretrained_with_torchao_config(fp32, ids, tmp_path):
    """Hugging Face's own torchao integration: from_pretrained(..., quantization_config=TorchAoConfig(...))."""
    from torchao.quantization import Int8Tensor

    fp32.save_pretrained(tmp_path)
    model = SpikeGPTForCausalLM.from_pretrained(tmp_path, quantization_config=quantization.torchao_config("int8"))
    assert all(isinstance(m.weight, Int8Tensor) for _, m in block_linears(model))
    assert type(model.head.weight) is nn.Parameter  # transformers keeps the head unquantised
    with torch.no_grad():
        ref = fp32(ids).logits
        assert 1e-6 < rel(model(ids).logits, ref) < REL_TOL["int8"]
        use_fused_kernels(model)  # the fast CPU path for the same weights
        assert all(isinstance(m, QuantizedLinear) and m.fused_int8_scale is not None for _, m in block_linears(model))
        assert rel(model(ids).logits, ref) < REL_TOL["int8"]
        out = model.generate(ids[:1, :4], max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 8)
    m4 = SpikeGPTForCausalLM.from_pretrained(tmp_path,
                                             quantization_config=quantization.torchao_config("int4", group_size=32))
    with torch.no_grad():
        assert rel(m4(ids).logits, ref) < REL_TOL["int4"]


def test_import_spikegpt_does_not_import_the_quantization_module():
    code = "import sys, spikegpt; print('spikegpt.interop.quantization' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
