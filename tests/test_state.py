"""SpikeGPTState: layout, row operations, conversion, validation, and use as a pytree (torch.export)."""

import pytest
import torch

from spikegpt import SpikeGPTConfig, SpikeGPTState
from spikegpt.kernels.wkv.common import NEG_INF

CFG = SpikeGPTConfig(vocab_size=20, hidden_size=6, num_hidden_layers=3)


def filled(B, dtype=torch.float32, seed=0):
    st = SpikeGPTState.empty(CFG, B, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    for t in st.tensors():
        t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
    return st


def test_empty_layout_and_dtypes():
    st = SpikeGPTState.empty(CFG, 2, dtype=torch.bfloat16)
    assert (st.num_layers, st.batch_size, st.hidden_size) == (3, 2, 6)
    assert st.att_shift.dtype == st.ffn_shift.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in st.tensors()[2:])  # accumulating fields stay fp32
    assert (st.wkv_max == NEG_INF).all() and all((t == 0).all() for t in st.tensors() if t is not st.wkv_max)
    assert SpikeGPTState.empty(CFG, 1, dtype=torch.float64).wkv_num.dtype == torch.float64


def test_row_operations():
    st = filled(3)
    sel = st.index_select(torch.tensor([2, 0]))
    for a, b in zip(sel.tensors(), st.tensors()):
        assert torch.equal(a[:, 0], b[:, 2]) and torch.equal(a[:, 1], b[:, 0])
    joined = SpikeGPTState.cat([st.index_select(torch.tensor([i])) for i in (1, 2)])
    assert all(torch.equal(a, b[:, 1:]) for a, b in zip(joined.tensors(), st.tensors()))
    rep = st.repeat_interleave(2)
    assert rep.batch_size == 6 and torch.equal(rep.att_mem[:, 4], st.att_mem[:, 2])
    layers = [st.layer(l) for l in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(SpikeGPTState.stack(layers).tensors(), st.tensors()))
    with pytest.raises(ValueError, match="at least one"):
        SpikeGPTState.cat([])


def test_to_dtype_converts_shift_fields_only_to_the_model_dtype():
    st = filled(2).to(dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in st.tensors())
    back = st.to(dtype=torch.bfloat16)
    assert back.att_shift.dtype == torch.bfloat16 and back.wkv_den.dtype == torch.float32


def test_validate_names_the_field_and_what_it_needs():
    st = filled(2)
    st.validate(CFG, 2, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match=r"state.att_shift has shape \(3, 2, 6\) .* different batch size"):
        st.validate(CFG, 3)
    with pytest.raises(ValueError, match="different model"):
        st.validate(SpikeGPTConfig(vocab_size=20, hidden_size=8, num_hidden_layers=3), 2)
    with pytest.raises(ValueError, match=r"state.att_shift is torch.float32 but a torch.float64 model needs"):
        st.validate(CFG, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"state.att_shift is on cpu but the model is on meta"):
        st.validate(CFG, 2, device="meta")


def test_state_is_a_pytree_node():
    from torch.utils import _pytree as pytree

    st = filled(2)
    leaves, spec = pytree.tree_flatten(st)
    assert len(leaves) == 7 and all(a is b for a, b in zip(leaves, st.tensors()))
    again = pytree.tree_unflatten([t + 1 for t in leaves], spec)
    assert isinstance(again, SpikeGPTState) and torch.equal(again.ffn_mem, st.ffn_mem + 1)
