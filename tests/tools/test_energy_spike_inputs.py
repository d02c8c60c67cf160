"""Energy accounting of spike-driven models (``spike_inputs``): the tool's counts equal hand counts made here from
the spike counts read out of the encoders with the test's own hooks; silent codes cost no accumulates; padding
counts nothing; the CLI reports a spike-driven model."""

import json

import pytest
import torch
from cli_helpers import run
from interop_helpers import spike_totals, tiny_model
from transformers import AutoTokenizer

from spikegpt import SpikeGPTForCausalLM
from spikegpt.spike_coding import SpikeEncoder
from spikegpt.tools.energy import (
    energy_report,
    format_table,
    measure_spikes,
    spikegpt_operations,
    totals,
)

C, F, V, L = 4, 8, 5, 1
IDS = [1, 3, 0, 4, 2, 2, 1]  # N = 7 tokens
# (in, out) of the Linear that each encoder feeds, written out from the architecture
SHAPES = {
    "model.blocks.0.att.codes.key": (C, C), "model.blocks.0.att.codes.value": (C, C),
    "model.blocks.0.att.codes.receptance": (C, C), "model.blocks.0.att.codes.output": (C, C),
    "model.blocks.0.ffn.codes.key": (C, F), "model.blocks.0.ffn.codes.receptance": (C, C),
    "model.blocks.0.ffn.codes.value": (F, C), "head_code": (C, V),
}


def tiny(code, **kw):
    cfg = dict(vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=L, spike_inputs=code)
    cfg.update(kw)
    return tiny_model(dtype=torch.float64, **cfg)


def encoder_counts(model, ids):
    """{encoder path: the (N, width) counts c it produced} over one forward of the whole causal LM, read with
    plain hooks on the SpikeEncoder modules (no padding)."""
    seen = {}
    encs = {name: m for name, m in model.named_modules() if isinstance(m, SpikeEncoder)}
    assert set(encs) == set(SHAPES), list(encs)
    hooks = [m.register_forward_hook(lambda m, i, o, n=name: seen.setdefault(n, []).append(o[0].detach()))
             for name, m in encs.items()]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v, dim=1)[0] for n, v in seen.items()}


@pytest.mark.parametrize("code, v_reset", [("int2", 0.0), ("lif", 0.0), ("lif", None)])
def test_hand_counted_operations_of_a_spike_driven_model(code, v_reset):
    model = tiny(code, v_reset=v_reset)
    N = len(IDS)
    cs = encoder_counts(model, IDS)
    ones = int((model.model.emb.weight[torch.tensor(IDS)] >= 0).sum())
    spikes = sum(int(s) for s, _ in spike_totals(model, torch.tensor([IDS])))
    for name, c in cs.items():
        assert c.shape == (N, SHAPES[name][0])
        assert bool((c == c.round()).all()) and c.min() >= (-2 if code == "int2" else 0) and c.max() <= (
            2 if code == "int2" else 1)
    if code == "int2":
        assert any(bool((c.abs() == 2).any()) for c in cs.values())  # |c| = 2 occurs: ACs are not just non-zeros
    assert all(int((c != 0).sum()) > 0 for c in cs.values())

    stats = measure_spikes(model, [IDS])
    assert stats.tokens == N and stats.embedding_ones == ones and stats.total_spikes == spikes
    for name, (w_in, w_out) in SHAPES.items():
        got = stats.codes[name]
        c = cs[name]
        assert (got.in_features, got.out_features, got.tokens) == (w_in, w_out, N)
        assert got.abs_sum == int(c.abs().sum()) and got.nonzeros == int((c != 0).sum())
        assert got.nonzero_fraction() == int((c != 0).sum()) / (N * w_in)
        assert got.mean_abs_count() == float(c.abs().sum()) / (N * w_in)
    # hand count: a Linear reading counts c costs out * sum|c| accumulates and out multiplies (vth) per token
    ac_linear = sum(w_out * int(cs[n].abs().sum()) for n, (_, w_out) in SHAPES.items() if n != "head_code")
    ac_head = V * int(cs["head_code"].abs().sum())
    mul_scale = sum(w_out for _, w_out in SHAPES.values()) * N  # (4*4 + 8 + 4 + 4 + 5) * 7
    assert mul_scale == 37 * N
    # encoders, each of width W, per token: vth = g * mean|x|: W adds + 1 compare (clamp), 1 mul; 1 / vth: 1
    # special; u = x / vth: W muls; int2: trunc + two compares = 3W adds; lif: charge W mul + 2W add, fire W add
    widths = [w_in for w_in, _ in SHAPES.values()]  # 6 of width 4, one of 8 (ffn.value), head 4 -> 36
    assert sum(widths) == 36
    enc_add = sum((W + 1) + 3 * W for W in widths) * N
    enc_mul = sum(1 + W + (W if code == "lif" else 0) for W in widths) * N
    enc_special = len(widths) * N
    enc_ac = sum(int((c != 0).sum()) for c in cs.values()) if (code == "lif" and v_reset is None) else 0
    # the rest as for spike_inputs="none" (see test_energy.py), C = 4, F = 8:
    # mul: LN0 3C+2 = 14; LN1, LN2, LNout 42; 5 mixes 40; WKV 16; r*wkv, r*kv, square 16; two LIFs 8 -> 136
    # add: LN0 12; LN1, LN2, LNout 48; mixes 20; WKV 20; relu 8; two LIFs 24 -> 132
    # special: 4 rsqrt; WKV 12; two sigmoids 8 -> 24
    soft = v_reset is None
    want = {
        "mac": 0,
        "ac": ones + spikes * (2 if soft else 1) + ac_linear + ac_head + enc_ac,
        "mul": 136 * N + mul_scale + enc_mul,
        "add": 132 * N + enc_add,
        "special": 24 * N + enc_special,
    }
    ops = spikegpt_operations(model.config, stats)
    assert totals(ops) == want
    assert ops["linear (spike inputs)"]["ac"] == ac_linear and ops["head (spike inputs)"]["ac"] == ac_head
    assert ops["head (spike inputs)"]["mul"] == V * N and "linear (real inputs)" not in ops and "head" not in ops
    # bit-serial alternative: out * popcount|c| accumulates + out * (bits - 1) shift-adds per token
    rep = energy_report(model, [IDS], context=4)
    bs = rep["spike_inputs"]["bit_serial"]
    bits = 2 if code == "int2" else 1
    popcount = {n: int((c.abs() == 1).sum() + (c.abs() == 2).sum()) for n, c in cs.items()}  # |c| <= 2
    assert bs["bits"] == bits
    assert bs["ops"]["ac"] == want["ac"] - ac_linear - ac_head + sum(
        SHAPES[n][1] * popcount[n] for n in SHAPES)
    assert bs["ops"]["add"] == want["add"] + sum(w_out for _, w_out in SHAPES.values()) * (bits - 1) * N
    if code == "lif":
        assert bs["ops"] == rep["spikegpt"]["ops"]  # 0/1 codes: the same
    assert rep["spikegpt"]["ops"] == want
    assert rep["ratios"]["transformer_over_spikegpt_energy"] == pytest.approx(
        rep["transformer"]["energy_pj"] / rep["spikegpt"]["energy_pj"])
    json.dumps(rep)
    rows = {r["encoder"]: r for r in rep["spike_inputs"]["linears"]}
    assert set(rows) == set(SHAPES)
    assert rows["head_code"]["linear"] == "head" and rows["model.blocks.0.ffn.codes.value"]["linear"] == (
        "model.blocks.0.ffn.value")
    # the LIF code's membranes (and the head's) carry across windows: windows of 2 or 3 tokens count the same
    assert measure_spikes(model, [IDS], window=2) == stats == measure_spikes(model, [IDS], window=3)
    table = format_table(rep)
    assert "SPIKE-DRIVEN LINEAR LAYERS" in table and "nonzero" in table and "mean|c|" in table
    for r in rows.values():
        assert r["linear"] in table


@pytest.mark.parametrize("code", ["int2", "lif", "binary"])
def test_silent_codes_cost_no_linear_accumulates(code):
    model = tiny(code)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SpikeEncoder):
                m.gain.fill_(1e6)  # vth = 1e6 * mean|x|: no input reaches a threshold
    stats = measure_spikes(model, [IDS])
    assert all(c.abs_sum == 0 and c.nonzeros == 0 for c in stats.codes.values()) and len(stats.codes) == 8
    ops = spikegpt_operations(model.config, stats)
    assert ops["linear (spike inputs)"]["ac"] == 0 and ops["head (spike inputs)"]["ac"] == 0
    assert ops["linear (spike inputs)"]["mac"] == 0 and ops["head (spike inputs)"]["mac"] == 0
    assert ops["linear (spike inputs)"]["mul"] == 32 * len(IDS)  # the scales remain: 4*4 + 8 + 4 + 4 outputs


@pytest.mark.parametrize("code, batch_invariant", [("int2", False), ("lif", False), ("int2", True)])
def test_padding_counts_nothing(code, batch_invariant):
    model = tiny(code, batch_invariant=batch_invariant)
    seqs = [IDS, [2, 0, 4], [3]]
    alone = measure_spikes(model, seqs)  # one sequence per forward: no padding
    assert alone.tokens == 11 and all(c.tokens == 11 for c in alone.codes.values())
    summed = [measure_spikes(model, [s]) for s in seqs]
    for name, c in alone.codes.items():
        assert c.abs_sum == sum(s.codes[name].abs_sum for s in summed)
    for window in (None, 2):  # with windows of 2, the shorter rows are all padding in some windows
        padded = measure_spikes(model, seqs, batch_size=3, window=window)
        assert padded == alone


def test_none_keeps_todays_components_and_lists():
    model = tiny("none")
    stats = measure_spikes(model, [IDS])
    assert stats.codes == {}
    rep = energy_report(model, [IDS])
    assert list(rep["spikegpt"]["by_component"]) == [
        "ln0 (binary input)", "layernorm", "token-shift mix", "linear (real inputs)", "wkv",
        "gates and activations", "lif", "residual (spikes)", "head"]
    assert rep["spike_inputs"]["linears"] == [] and "bit_serial" not in rep["spike_inputs"]
    assert not any("spike code" in s for s in rep["spike_driven"])
    assert any("head reads LNout" in s for s in rep["real_valued_products"])
    coded = energy_report(tiny("int2"), [IDS])
    assert any("spike code c of its input (int2)" in s for s in coded["spike_driven"])
    assert not any("head reads LNout" in s for s in coded["real_valued_products"])
    assert "SPIKE-DRIVEN" not in format_table(rep)


def test_bad_inputs():
    model = tiny("int2")
    with pytest.raises(ValueError, match="causal LM"):
        measure_spikes(model.model, [IDS])  # the base model lacks the head's code
    with pytest.raises(ValueError, match="spike-coded Linear layers"):
        spikegpt_operations(model.config, measure_spikes(tiny("none"), [IDS]))
    with pytest.raises(ValueError, match="spike_inputs is 'none'"):
        spikegpt_operations(tiny("none").config, measure_spikes(model, [IDS]))
    with pytest.raises(ValueError, match="batch_size"):
        measure_spikes(model, [IDS], batch_size=0)


def test_cli_energy_on_a_spike_driven_model(capsys, tmp_path):
    from spikegpt.train.tokenization import char_tokenizer

    text = "the spike neuron fires when its membrane crosses the threshold. " * 2
    char_tokenizer(["abcdefghijklmnopqrstuvwxyz .,"], 40).save_pretrained(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    tiny_model(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, context_length=16,
               spike_inputs="int3").save_pretrained(tmp_path / "m")
    (tmp_path / "text.txt").write_text(text)
    code, out, err = run(capsys, "energy", tmp_path / "m", "--text", tmp_path / "text.txt", "--max-tokens", "50",
                         "--json", tmp_path / "e.json", "--no-progress", "--context", "16", "--window", "16")
    assert code == 0, err
    assert "SPIKE-DRIVEN LINEAR LAYERS (code int3" in out and "model.blocks.0.ffn.value" in out
    assert "head (spike inputs)" in out and "bit-serial" in out and "transformer / SpikeGPT" in out
    rep = json.loads((tmp_path / "e.json").read_text())
    model = SpikeGPTForCausalLM.from_pretrained(tmp_path / "m")
    ids = tok(text, add_special_tokens=False).input_ids[:50]
    want = energy_report(model, [ids], context=16, window=16)
    assert rep["tokens"] == 50 and rep["spikegpt"]["ops"] == want["spikegpt"]["ops"]
    assert [r["nonzero_fraction"] for r in rep["spike_inputs"]["linears"]] == [
        r["nonzero_fraction"] for r in want["spike_inputs"]["linears"]]
    assert rep["spikegpt"]["ops"]["mac"] == 0 and rep["spikegpt"]["ops"]["ac"] > 0
