"""spikegpt.interop.export: the one-token step through torch.export and ONNX Runtime equals PyTorch eager.

For a spiking and a non-spiking (RWKV-4) tiny model, 64 greedy tokens from a parallel-mode prefill: at every step
the logits of the exported program and of ONNX Runtime equal eager's within 1e-5, each path feeding back its own
argmax and carrying its own state; the final states agree too. Then the state's round trip between torch and
numpy, the static-batch export, and the errors.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from interop_helpers import spike_totals, tiny_model

from spikegpt import SpikeGPTModel, SpikeGPTState
from spikegpt.interop.export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    STATE_FIELDS,
    OnnxStep,
    export_onnx,
    export_step,
    quantize_onnx,
    state_from_numpy,
    state_to_numpy,
)

ATOL = 1e-5
STEPS = 64


def _model(spiking: bool):
    return tiny_model(seed=1 if spiking else 2, vocab_size=97, spiking=spiking, eos_token_id=5)


def _session_options():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # tiny graphs; the CI machine has 2 cores
    return opts


@pytest.fixture(scope="module", params=[True, False], ids=["spiking", "rwkv4"])
def exported(request, tmp_path_factory):
    model = _model(request.param)
    program = export_step(model)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "step.onnx")
    return model, program, OnnxStep(path, session_options=_session_options())


def _eager_step(model, ids, state):
    with torch.no_grad():
        out = model(ids, state=state, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.state


def test_64_greedy_tokens_agree_with_eager_through_torch_export_and_onnxruntime(exported):
    model, program, onnx = exported
    step = program.module()
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(0))
    if model.config.spiking:  # the comparison means something only if the neurons fire, but not always
        tot = spike_totals(model, prompt)
        rate = sum(s for s, _ in tot) / sum(n for _, n in tot)
        assert 0.02 < rate < 0.8, rate
    with torch.no_grad():
        out = model(prompt, use_cache=True)  # parallel-mode prefill: its state feeds all three paths
    logits0 = out.logits[:, -1]
    eager_state, ep_state, ort_state = out.state, out.state, state_to_numpy(out.state)
    eager_tok = ep_tok = ort_tok = logits0.argmax(-1, keepdim=True)
    tokens = []
    for _ in range(STEPS):
        eager_logits, eager_state = _eager_step(model, eager_tok, eager_state)
        with torch.no_grad():
            ep_logits, ep_state = step(ep_tok, ep_state)
        ort_logits, ort_state = onnx(ort_tok.numpy(), ort_state)
        assert isinstance(ep_state, SpikeGPTState) and eager_logits.shape == ep_logits.shape == ort_logits.shape
        torch.testing.assert_close(ep_logits, eager_logits, rtol=0, atol=ATOL)
        torch.testing.assert_close(torch.from_numpy(ort_logits), eager_logits, rtol=0, atol=ATOL)
        eager_tok = eager_logits.argmax(-1, keepdim=True)
        ep_tok, ort_tok = ep_logits.argmax(-1, keepdim=True), torch.from_numpy(ort_logits.argmax(-1)[:, None])
        assert torch.equal(ep_tok, eager_tok) and torch.equal(ort_tok, eager_tok)
        tokens.append(eager_tok)
    assert len(set(torch.cat(tokens, 1)[0].tolist())) > 3  # not stuck on one token: the state moves
    for name, e, p, o in zip(STATE_FIELDS, eager_state.tensors(), ep_state.tensors(), state_from_numpy(ort_state)
                             .tensors()):
        torch.testing.assert_close(p, e, rtol=ATOL, atol=ATOL, msg=lambda m, n=name: f"export {n}: {m}")
        torch.testing.assert_close(o, e, rtol=ATOL, atol=ATOL, msg=lambda m, n=name: f"onnx {n}: {m}")


def test_the_batch_axis_is_dynamic_and_the_onnx_loop_generates_like_hf_generate(exported):
    model, program, onnx = exported
    for B in (1, 3):
        ids = torch.randint(0, 97, (B, 1), generator=torch.Generator().manual_seed(B))
        fresh = SpikeGPTState.empty(model.config, B)
        want, _ = _eager_step(model, ids, fresh)
        with torch.no_grad():
            got, _ = program.module()(ids, fresh)
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
        torch.testing.assert_close(torch.from_numpy(onnx(ids.numpy())[0]), want, rtol=0, atol=ATOL)
    prompt = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        hf = model.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False, eos_token_id=None,
                            pad_token_id=0)
    assert onnx.generate(prompt.numpy(), 16, eos_token_id=[]).tolist() == hf.tolist()
    eos = int(hf[0, 10])
    first = 4 + hf[0, 4:].tolist().index(eos)
    cut = onnx.generate(prompt.numpy(), 16, eos_token_id=eos)  # ends at the first eos, eos included
    assert cut.tolist() == [hf[0, : first + 1].tolist()]


def test_onnx_names_shapes_and_metadata(exported):
    model, _, onnx = exported
    ins, outs = onnx.session.get_inputs(), onnx.session.get_outputs()
    assert tuple(i.name for i in ins) == INPUT_NAMES and tuple(o.name for o in outs) == OUTPUT_NAMES
    assert INPUT_NAMES[1] == "state.att_shift" and OUTPUT_NAMES[-1] == "new_state.ffn_mem"
    assert ins[0].shape == ["batch", 1] and ins[0].type == "tensor(int64)"
    assert ins[1].shape == [2, "batch", 32] and outs[0].shape == ["batch", 97]
    meta = onnx.metadata
    assert (meta["vocab_size"], meta["hidden_size"], meta["num_hidden_layers"]) == ("97", "32", "2")
    assert meta["spiking"] == ("true" if model.config.spiking else "false") and meta["dtype"] == "float32"
    assert onnx.config["vocab_size"] == 97 and "kernel_backend" not in onnx.config
    assert onnx.eos_token_id == 5 and meta["state_fields"].split(",") == list(STATE_FIELDS)
    fresh = onnx.empty_state(2)
    for name, t in zip(STATE_FIELDS, SpikeGPTState.empty(model.config, 2).tensors()):
        assert np.array_equal(fresh[name], t.numpy()) and fresh[name].dtype == np.float32


def test_the_state_round_trips_between_torch_and_onnxruntime(exported):
    """eager 10 tokens -> numpy -> ONNX Runtime 10 -> torch -> eager 10 equals eager 30 (within 1e-5)."""
    model, _, onnx = exported
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = model(ids, use_cache=True)
        first = model(ids[:, :10], use_cache=True)
    arrays = state_to_numpy(first.state)
    back = state_from_numpy(arrays)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(back.tensors(), first.state.tensors()))
    _, arrays = onnx.prefill(ids[:, 10:20].numpy(), arrays)
    with torch.no_grad():
        rest = model(ids[:, 20:], state=state_from_numpy(arrays), use_cache=True)
    torch.testing.assert_close(rest.logits, whole.logits[:, 20:], rtol=0, atol=ATOL)
    for a, b in zip(rest.state.tensors(), whole.state.tensors()):
        torch.testing.assert_close(a, b, rtol=ATOL, atol=ATOL)


def test_a_fixed_batch_export_and_the_model_is_left_as_it_was(tmp_path):
    model = _model(True).train()
    path = export_onnx(model, tmp_path / "sub" / "b1.onnx", batch_size=1)
    assert model.training  # traced in eval mode, restored
    assert {m.backend for m in model.modules() if hasattr(m, "time_decay")} == {None}
    onnx = OnnxStep(path, session_options=_session_options())
    assert onnx.batch_size == 1 and onnx.session.get_inputs()[0].shape == [1, 1]
    model.eval()
    want, _ = _eager_step(model, torch.tensor([[3]]), None)
    torch.testing.assert_close(torch.from_numpy(onnx([3])[0]), want, rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="exported for batch size 1"):
        onnx(np.array([[3], [4]]))


def test_int8_quantisation_keeps_the_embedding_and_the_metadata(exported, tmp_path):
    import onnx as onnx_lib

    model, _, onnx = exported
    q = OnnxStep(quantize_onnx(onnx.path, tmp_path / "q" / "int8.onnx"), session_options=_session_options())
    assert q.metadata == onnx.metadata
    graph = onnx_lib.load(q.path).graph
    ops = {n.op_type for n in graph.node}
    assert "MatMulInteger" in ops and "Gather" in ops
    table = next(n.input[0] for n in graph.node if n.op_type == "Gather")
    emb = next(i for i in graph.initializer if i.name == table)  # the embedding table, still fp32
    assert tuple(emb.dims) == (97, 32) and emb.data_type == onnx_lib.TensorProto.FLOAT
    logits, state = q.prefill(np.array([[1, 2, 3, 4]]))
    assert logits.shape == (1, 97) and np.isfinite(logits).all() and state.keys() == onnx.empty_state().keys()


def test_clear_errors(exported, tmp_path, monkeypatch):
    model, _, onnx = exported
    with pytest.raises(TypeError, match="SpikeGPTForCausalLM"):
        export_step(model.model)
    assert isinstance(model.model, SpikeGPTModel)
    with pytest.raises(ValueError, match="batch_size must be None"):
        export_step(model, batch_size=0)
    model.config.batch_invariant = True
    try:
        with pytest.raises(ValueError, match="batch_invariant"):
            export_step(model)
    finally:
        model.config.batch_invariant = False
    with pytest.raises(ValueError, match="kernel_backend='triton'.*cannot be traced"):
        export_step(tiny_model(kernel_backend="triton"))
    with pytest.raises(ValueError, match="bfloat16"):
        export_onnx(tiny_model(dtype=torch.bfloat16), tmp_path / "bf16.onnx")
    from spikegpt.interop import quantization

    with pytest.raises(ValueError, match="quantised weights.*quantize_onnx"):
        export_onnx(quantization.quantize(tiny_model(), "int8"), tmp_path / "q8.onnx")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", opset=11)

    # ONNX Runtime inputs
    state = onnx.empty_state(2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        onnx(np.array([[97], [0]]), state)
    with pytest.raises(ValueError, match="integer token ids"):
        onnx(np.array([[1.0], [0.0]]), state)
    with pytest.raises(ValueError, match=r"state\['att_shift'\] has shape \(2, 2, 32\).*\(2, 3, 32\)"):
        onnx(np.array([[1], [2], [3]]), state)
    with pytest.raises(ValueError, match="lacks the field 'ffn_mem'"):
        onnx(np.array([[1], [2]]), {k: v for k, v in state.items() if k != "ffn_mem"})
    with pytest.raises(ValueError, match="is float64"):
        onnx(np.array([[1], [2]]), {**state, "wkv_num": state["wkv_num"].astype(np.float64)})
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        OnnxStep(tmp_path / "missing.onnx")

    # an ONNX file that is not a SpikeGPT step
    import onnx as onnx_lib
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx_lib.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="not a SpikeGPT step"):
        OnnxStep(tmp_path / "other.onnx")

    # the deploy extra missing
    for module in ("onnxruntime",):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"spikegpt\[deploy\]"):
        OnnxStep(onnx.path)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"onnxscript.*spikegpt\[deploy\]"):
        export_onnx(model, tmp_path / "y.onnx")
