"""Compiled decoding: ``generate(..., compile_config=CompileConfig(...))`` runs the steps after the prefill through
``torch.compile`` of the model's call, on any device (transformers asks for a fixed-shape cache on a GPU; this
model's state always has fixed shapes). Reference: the same greedy generation run eagerly, which it must equal (the
compiled graph computes the same ops, fused: logits to fp32 rounding, tokens exactly on a model whose top logits are
not near-tied)."""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig, GenerationConfig

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM

COMPILE = CompileConfig(fullgraph=True, mode="default")


def tiny(spiking):
    torch.manual_seed(0)
    cfg = SpikeGPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, context_length=64, spiking=spiking)
    model = SpikeGPTForCausalLM(cfg).eval()
    with torch.no_grad():  # trained-size weights: logits spread out, so greedy choices are not near-ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def test_compiles_only_when_asked():
    model = tiny(False)
    assert not model._valid_auto_compile_criteria({}, GenerationConfig())
    assert model._valid_auto_compile_criteria({}, GenerationConfig(compile_config=COMPILE))
    assert not model._valid_auto_compile_criteria({}, GenerationConfig(compile_config=COMPILE, disable_compile=True))


@pytest.mark.parametrize("spiking", [False, True], ids=["rwkv4", "spiking"])
def test_compiled_greedy_generation_is_the_eager_one(spiking):
    model = tiny(spiking)
    ids = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        eager = model.generate(ids, **kw)
        compiled = model.generate(ids, compile_config=COMPILE, **kw)
    assert hasattr(model, "_compiled_call")  # the steps did go through torch.compile
    assert torch.equal(compiled.sequences, eager.sequences)
    for a, b in zip(compiled.logits, eager.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
