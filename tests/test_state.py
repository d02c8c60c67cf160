"""SpikeGPTState: layout, row operations, conversion, validation, use as a pytree (torch.export), and files
(save / load, the config hash, refusals, continuing a text from a loaded state)."""

import inspect
import os

import pytest
import torch
from interop_helpers import tiny_model

from spikegpt import SpikeGPTConfig, SpikeGPTState
from spikegpt.kernels.wkv.common import NEG_INF
from spikegpt.state import STATE_CONFIG_FIELDS, STATE_CONFIG_IGNORED, state_config_hash

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
    layers = st.layers()
    assert len(layers) == 3 and all(torch.equal(layers[1][i], t[1]) for i, t in enumerate(st.tensors()[:7]))
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


# ------------------------------------------------------------------------------------------------ files

def assert_same(a, b):
    assert all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_save_load_round_trip_is_exact_and_keeps_the_metadata(tmp_path, dtype):
    st = filled(2, dtype=dtype)
    path = st.save(tmp_path / "s.safetensors", config=CFG, tokens=[5, 7], metadata={"note": "x"})
    assert os.listdir(tmp_path) == ["s.safetensors"]  # no temporary file left
    back, info = SpikeGPTState.load_with_info(path, config=CFG, dtype=dtype)
    assert_same(back, st)
    assert (info.tokens, info.dtype, info.num_layers, info.batch_size, info.hidden_size) == ([5, 7], dtype, 3, 2, 6)
    assert info.config_sha256 == state_config_hash(CFG) and info.config["hidden_size"] == 6
    assert info.extra == {"note": "x"} and info.format_version == 1
    assert SpikeGPTState.read_info(path) == info
    assert_same(SpikeGPTState.load(path), st)  # no config / dtype: only the file's own checks
    assert SpikeGPTState.load(path, device="meta").att_mem.device.type == "meta"


def test_the_config_hash_counts_exactly_the_fields_that_change_a_state():
    params = set(inspect.signature(SpikeGPTConfig.__init__).parameters) - {"self", "kwargs"}
    assert set(STATE_CONFIG_FIELDS) - {"model_type"} | set(STATE_CONFIG_IGNORED) == params  # every field decided
    assert not set(STATE_CONFIG_FIELDS) & set(STATE_CONFIG_IGNORED)
    base = dict(vocab_size=20, hidden_size=6, num_hidden_layers=3)
    h = state_config_hash(SpikeGPTConfig(**base))
    same = SpikeGPTConfig(**base, tau=2, kernel_backend="torch", batch_invariant=True, eos_token_id=0, dropout=0.1,
                          context_length=7, surrogate="sigmoid", name_or_path="somewhere")
    assert state_config_hash(same) == h  # tau=2 is tau=2.0; run-time, bookkeeping and backward-only fields
    for change in (dict(tau=3.0), dict(threshold=0.5), dict(v_reset=None), dict(spiking=False),
                   dict(vocab_size=21), dict(intermediate_size=10), dict(layer_norm_epsilon=1e-6)):
        assert state_config_hash(SpikeGPTConfig(**{**base, **change})) != h, change


def test_load_refuses_another_model_or_dtype_naming_the_difference(tmp_path):
    path = filled(1).save(tmp_path / "s.safetensors", config=CFG, tokens=3)
    wider = SpikeGPTConfig(vocab_size=20, hidden_size=8, num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"made by a model with hidden_size 6, intermediate_size 24; this model has "
                                         r"hidden_size 8, intermediate_size 32"):
        SpikeGPTState.load(path, config=wider)
    with pytest.raises(ValueError, match=r"made by a model with tau 2.0; this model has tau 4.0"):
        SpikeGPTState.load(path, config=SpikeGPTConfig(vocab_size=20, hidden_size=6, num_hidden_layers=3, tau=4.0))
    with pytest.raises(ValueError, match=r"made by a float32 model; loading it for a float64 model .* refused"):
        SpikeGPTState.load(path, dtype=torch.float64)
    # without a config in the file, only the shape can be checked
    bare = filled(1).save(tmp_path / "bare.safetensors")
    assert SpikeGPTState.read_info(bare).config_sha256 is None
    with pytest.raises(ValueError, match="has 3 layers of width 6; this model has 3 of width 8"):
        SpikeGPTState.load(bare, config=wider)


def test_save_refuses_to_overwrite_and_writes_atomically(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    filled(1, seed=1).save(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        filled(1, seed=2).save(path)
    assert_same(SpikeGPTState.load(path), filled(1, seed=1))

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)  # a write that fails midway leaves the old file and no temporary
    with pytest.raises(OSError, match="disk full"):
        filled(1, seed=2).save(path, overwrite=True)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["s.safetensors"]
    assert_same(SpikeGPTState.load(path), filled(1, seed=1))
    filled(1, seed=2).save(path, overwrite=True)
    assert_same(SpikeGPTState.load(path), filled(1, seed=2))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        filled(1).save(tmp_path / "no" / "s.safetensors")
    with pytest.raises(ValueError, match="tokens must be"):
        filled(2).save(tmp_path / "t.safetensors", tokens=[1])
    with pytest.raises(ValueError, match="state.wkv_num is torch.float64 but a torch.float32 state needs"):
        SpikeGPTState(*filled(1).tensors()[:2], *(t.double() for t in filled(1).tensors()[2:])).save(tmp_path / "u")


def test_load_refuses_damaged_or_foreign_files_naming_the_path(tmp_path):
    from safetensors.torch import save_file

    path = filled(1).save(tmp_path / "s.safetensors", config=CFG)
    data = path.read_bytes()
    with pytest.raises(FileNotFoundError, match="state file not found: .*nowhere"):
        SpikeGPTState.load(tmp_path / "nowhere")
    for name, content in [("short", data[:-16]), ("header", data[:40]), ("text", b"not a state at all\n" * 9)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name} is not a readable SpikeGPT state file .*truncated or corrupt"):
            SpikeGPTState.read_info(tmp_path / name)
    flipped = bytearray(data)
    flipped[-5] ^= 0x40
    (tmp_path / "flipped").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="flipped is corrupt: its tensors do not match their checksum"):
        SpikeGPTState.load(tmp_path / "flipped")
    save_file({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match="weights.safetensors is a safetensors file but not a SpikeGPT state file"):
        SpikeGPTState.load(tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match="is a directory"):
        SpikeGPTState.load(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_loaded_state_continues_the_text(tmp_path, dtype):
    """Run A, save, load, run B: exactly what B gives from the state in memory, and what A + B gives in one run
    (to rounding: a matmul over a different number of rows may round differently)."""
    model = tiny_model(dtype=dtype)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 257, (1, 13), generator=g), torch.randint(0, 257, (1, 7), generator=g)
    with torch.no_grad():
        whole = model(torch.cat([a, b], 1)).logits
        first = model(a, use_cache=True)
        first.state.save(tmp_path / "a.safetensors", config=model.config, tokens=a.shape[1])
        state, info = SpikeGPTState.load_with_info(tmp_path / "a.safetensors", config=model.config, dtype=dtype)
        cont = model(b, state=state).logits
        ref = model(b, state=first.state).logits
    assert info.tokens == 13
    assert torch.equal(cont, ref)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(cont, whole[:, 13:], rtol=0, atol=tol)
