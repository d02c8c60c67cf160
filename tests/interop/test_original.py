"""Converter: original-layout checkpoints load exactly, damaged ones are refused with the key named."""

import types

import pytest
import torch
from interop_helpers import random_original_checkpoint, spike_totals
from reference_model import reference_logits

from spikegpt import SpikeGPTForCausalLM
from spikegpt.interop.original import from_original, original_layout, to_original


@pytest.fixture(scope="module")
def ckpt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("orig") / "SpikeGPT-tiny.pth"
    torch.save(random_original_checkpoint(), path)
    return path


@pytest.mark.parametrize("spiking", [True, False], ids=["spiking", "rwkv4"])
def test_converted_matches_reference_parallel_and_recurrent(ckpt_file, spiking):
    sd = torch.load(ckpt_file, weights_only=True)
    model = from_original(ckpt_file, spiking=spiking)
    assert model.dtype == torch.float64 and model.config.num_hidden_layers == 3
    ids = torch.randint(0, 37, (2, 20), generator=torch.Generator().manual_seed(3))
    if spiking:  # the comparison means something only if neurons fire, but not always
        tot = spike_totals(model, ids)
        rate = sum(s for s, _ in tot) / sum(n for _, n in tot)
        assert 0.02 < rate < 0.6, rate
    with torch.no_grad():
        par = model(ids).logits
        state, rec = None, []
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], state=state, use_cache=True)
            state = out.state
            rec.append(out.logits)
        rec = torch.cat(rec, 1)
    for b in range(2):
        ref = reference_logits(sd, ids[b].tolist(), spiking=spiking)
        torch.testing.assert_close(par[b], ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(rec[b], ref, rtol=1e-9, atol=1e-9)


def test_infers_sizes_and_round_trips(ckpt_file, tmp_path):
    sd = random_original_checkpoint(V=41, C=16, L=2, F=48, seed=5, dtype=torch.float32)
    model = from_original(sd)
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (41, 16, 2, 48)
    assert (cfg.tau, cfg.threshold, cfg.v_reset, cfg.surrogate, cfg.surrogate_alpha) == (2.0, 1.0, 0.0, "atan", 2.0)
    assert model.dtype == torch.float32
    back = to_original(model)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    sd["emb.weight"].zero_()  # converting copied the caller's tensors
    assert model.model.emb.weight.abs().sum() > 0
    model.save_pretrained(tmp_path)
    again = SpikeGPTForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 41, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_unwraps_containers_and_prefixes(tmp_path):
    sd = random_original_checkpoint(V=11, C=8, L=1, dtype=torch.float32)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, path)
    model = from_original(path, dtype=torch.float64, pad_token_id=0)
    assert model.dtype == torch.float64 and model.config.pad_token_id == 0
    torch.testing.assert_close(model.head.weight, sd["head.weight"].double())
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # the pre-1.6 format
    assert torch.equal(from_original(tmp_path / "legacy.pth").head.weight, sd["head.weight"])


def test_layout_lists_every_parameter():
    model = from_original(random_original_checkpoint(V=11, C=8, L=2, dtype=torch.float32))
    assert set(original_layout(11, 8, 2, 32)) == set(to_original(model))


def _damaged(kind):
    sd = random_original_checkpoint(V=11, C=8, L=2, dtype=torch.float32)
    if kind == "missing":
        del sd["blocks.1.att.key.weight"]
        return sd, "blocks.1.att.key.weight"
    if kind == "unexpected":
        sd["blocks.0.att.bonus"] = torch.zeros(8)
        return sd, "blocks.0.att.bonus"
    if kind == "misshaped":
        sd["blocks.0.ffn.value.weight"] = torch.zeros(8, 16)
        return sd, "blocks.0.ffn.value.weight"
    if kind == "layer_gap":
        for k in [k for k in sd if k.startswith("blocks.1.")]:
            sd[k.replace("blocks.1.", "blocks.2.")] = sd.pop(k)
        return sd, "blocks.1.ln1.weight"
    if kind == "ffnPre":
        for k in [k for k in sd if k.startswith("blocks.0.att.")]:
            del sd[k]
        sd["blocks.0.ffnPre.key.weight"] = torch.zeros(32, 8)
        return sd, "ffnPre"
    if kind == "no_emb":
        del sd["emb.weight"]
        return sd, "emb.weight"
    if kind == "int_tensor":
        sd["ln_out.bias"] = torch.zeros(8, dtype=torch.long)
        return sd, "ln_out.bias"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing", "unexpected", "misshaped", "layer_gap", "ffnPre", "no_emb", "int_tensor"]
)
def test_damaged_checkpoints_are_refused_with_the_key_named(tmp_path, kind):
    sd, name = _damaged(kind)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        from_original(path)


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        from_original(tmp_path / "nowhere.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        from_original(junk)
    code = tmp_path / "code.pth"
    torch.save({"emb.weight": torch.zeros(2, 2), "hook": types.SimpleNamespace(a=1)}, code)
    with pytest.raises(ValueError, match="safely as a state dict of tensors"):
        from_original(code)
    lst = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], lst)
    with pytest.raises(ValueError, match="not a state dict"):
        from_original(lst)
    sd = random_original_checkpoint(V=11, C=8, L=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="hidden_size=9 contradicts"):
        from_original(sd, hidden_size=9)
    mixed = dict(sd, **{"head.weight": sd["head.weight"].double()})
    with pytest.raises(ValueError, match="mixes dtypes"):
        from_original(mixed)
    assert from_original(mixed, dtype=torch.float32).dtype == torch.float32


def _torch_reason(path):
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        return " ".join(str(e).split())
    raise AssertionError(f"{path} loaded")


def test_an_unsafe_file_is_refused_with_the_whole_reason_and_no_advice_to_load_it_anyway(tmp_path):
    """Objects that unpickling would rebuild by running code are named in full, past torch's long preamble; the
    advice to pass weights_only=False (which runs that code) or to allow-list the class is not passed on."""
    path = tmp_path / "objects.pth"
    torch.save({**random_original_checkpoint(V=11, C=8, L=1), "hook": types.SimpleNamespace(a=1)}, path)
    with pytest.raises(ValueError) as e:
        from_original(path)
    msg = str(e.value)
    assert msg.startswith(f"cannot read {path} safely as a state dict of tensors: ")
    assert "GLOBAL types.SimpleNamespace" in msg and "would run code from the file" in msg
    for advice in ("weights_only", "add_safe_globals", "safe_globals", "trust", "\n", "\x1b"):
        assert advice not in msg, advice


def test_a_damaged_file_gets_the_whole_reason(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save(random_original_checkpoint(V=11, C=8, L=1), whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:100])  # the zip archive's start only
    reason = _torch_reason(cut)
    assert len(reason) > 300  # what the message used to cut off
    with pytest.raises(ValueError) as e:
        from_original(cut)
    assert str(e.value) == (f"cannot read {cut} as a PyTorch checkpoint: it is damaged or not a file written by "
                            f"torch.save ({reason})")
