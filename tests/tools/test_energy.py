"""Energy accounting: operation counts equal hand counts; measured rates equal independently counted spikes."""

import json

import pytest
import torch
from interop_helpers import spike_totals, tiny_model

from spikegpt.tools.energy import (
    KINDS,
    EnergyCosts,
    SpikeStats,
    energy_pj,
    energy_report,
    format_table,
    measure_spikes,
    spikegpt_operations,
    totals,
    transformer_operations,
)

IDS = [3, 9, 4]  # 3 tokens
SITES = ["model.blocks.0.att_lif", "model.blocks.0.ffn_lif"]


def one_layer(**kw):
    cfg = dict(vocab_size=11, hidden_size=8, intermediate_size=16, num_hidden_layers=1)
    cfg.update(kw)
    return tiny_model(dtype=torch.float64, **cfg)


def counted(model, ids):
    """(ones of the binary embedding, spikes of LIF_a, spikes of LIF_f), counted here with plain hooks."""
    ones = int((model.model.emb.weight[torch.tensor(ids)] >= 0).sum())
    (sa, _), (sf, _) = spike_totals(model, torch.tensor([ids]))
    return ones, int(sa), int(sf)


def test_one_layer_three_tokens_hand_count():
    model = one_layer()
    ones, sa, sf = counted(model, IDS)
    assert sa + sf > 0  # the residual accumulates are exercised
    stats = measure_spikes(model, [IDS])
    assert stats.embedding_ones == ones and stats.spikes == dict(zip(SITES, [sa, sf]))
    ops = totals(spikegpt_operations(model.config, stats))
    # C = 8, F = 16, V = 11, L = 1, N = 3 tokens
    # MAC: att k, v, r, o 4*8*8 = 256, ffn key 8*16 = 128, value 16*8 = 128, receptance 8*8 = 64 -> 576 per token;
    #      head 8*11 = 88 per token; (576 + 88) * 3 = 1992
    assert ops["mac"] == 1992
    # AC: LN0's mean over the binary embedding (one per one) + one per spike added to the residual stream
    assert ops["ac"] == ones + sa + sf
    # mul per token: LN1, LN2, LNout 3 * (3*8 + 2) = 78; LN0 26; 5 mixes 5 * 2 * 8 = 80; WKV 4 * 8 = 32;
    #      r*wkv 8 + r*kv 8 + square 16 = 32; two LIFs 2 * 8 = 16 -> 264 per token, 792 in all
    assert ops["mul"] == 792
    # add per token: LN1, LN2, LNout 3 * 4 * 8 = 96; LN0 3 * 8 = 24; mixes 5 * 8 = 40; WKV 5 * 8 = 40;
    #      relu 16; two LIFs 2 * 3 * 8 = 48 -> 264 per token, 792 in all
    assert ops["add"] == 792
    # special per token: 4 rsqrt; WKV 3 * 8 = 24; two sigmoids 2 * 8 = 16 -> 44 per token, 132 in all
    assert ops["special"] == 132


def constant_current_model(att_input, ffn_input, emb_rows):
    """One layer, C = 2, F = 4, V = len(emb_rows), tau 2, threshold 1, hard reset to 0, with weights set so
    that every token drives the attention LIF with ``att_input`` and the FFN LIF with ``ffn_input``:

    - LN1 and LN2 have weight 0 and bias 1, so they output z = (1, 1) whatever the stream holds, and every
      token-shift mix (mu = 1) reads z itself;
    - attention: Wk = 0 (k = 0), Wv = I (v = (1, 1)), Wr = 0 (sigmoid(r) = 1/2); a WKV average of values that
      are all 1 is 1, so Wo = diag(2 a) gives a;
    - FFN: Wk picks z_0 (relu(k)^2 = (1, 0, 0, 0)), Wr = 0 (1/2), Wv's first column 2 f gives f.
    """
    model = tiny_model(dtype=torch.float64, vocab_size=len(emb_rows), hidden_size=2, intermediate_size=4,
                       num_hidden_layers=1, tau=2.0, threshold=1.0, v_reset=0.0)
    block = model.model.blocks[0]
    a = torch.tensor(att_input, dtype=torch.float64)
    f = torch.tensor(ffn_input, dtype=torch.float64)
    with torch.no_grad():
        for ln in (block.ln1, block.ln2):
            ln.weight.zero_()
            ln.bias.fill_(1.0)
        att, ffn = block.att, block.ffn
        for mu in (att.time_mix_k, att.time_mix_v, att.time_mix_r, ffn.time_mix_k, ffn.time_mix_r):
            mu.fill_(1.0)
        att.key.weight.zero_()
        att.value.weight.copy_(torch.eye(2))
        att.receptance.weight.zero_()
        att.output.weight.copy_(torch.diag(2 * a))
        ffn.key.weight.zero_()
        ffn.key.weight[0, 0] = 1.0
        ffn.receptance.weight.zero_()
        ffn.value.weight.zero_()
        ffn.value.weight[:, 0] = 2 * f
        model.model.emb.weight.copy_(torch.tensor(emb_rows, dtype=torch.float64))
    return model


def test_hand_counted_spikes_and_operations_of_a_constant_current_model():
    # the LIF (tau 2, threshold 1, reset to 0) charges h = v + (x - v) / 2 and fires at h >= 1:
    #   x = 3:    h = 1.5 -> fires at every token: 4 spikes in 4 tokens
    #   x = 1.5:  h = 0.75, 1.125 (fires), 0.75, 1.125 (fires): 2
    #   x = 0.5:  h -> 0.5, never fires: 0
    #   x = 1.25: h = 0.625, 0.9375, 1.09375 (fires), 0.625: 1
    # attention LIF sees (3, 1.5): 4 + 2 = 6 spikes; FFN LIF (0.5, 1.25): 0 + 1 = 1
    emb_rows = [[1, -1], [-1, -1], [0.5, 2], [0, -3], [-2, 0.1]]
    model = constant_current_model([3.0, 1.5], [0.5, 1.25], emb_rows)
    ids = [2, 0, 3, 2]  # H(E[idx]) = (1, 1), (1, 0), (1, 0), (1, 1): 6 ones (H(0) = 1)
    stats = measure_spikes(model, [ids])
    assert stats.tokens == 4 and stats.hidden_size == 2
    assert stats.embedding_ones == 6
    assert stats.spikes == {"model.blocks.0.att_lif": 6, "model.blocks.0.ffn_lif": 1}
    assert stats.rates() == {"model.blocks.0.att_lif": 6 / 8, "model.blocks.0.ffn_lif": 1 / 8}
    # windows of 1 and 3 tokens carry the membranes: with a fresh membrane per token, x = 1.5 would never fire
    assert measure_spikes(model, [ids], window=1) == stats == measure_spikes(model, [ids], window=3)
    # the documented formula, C = 2, F = 4, V = 5, L = 1, N = 4 tokens
    ops = totals(spikegpt_operations(model.config, stats))
    assert ops["mac"] == (5 * 2 * 2 + 2 * 2 * 4) * 4 + 2 * 5 * 4  # Linear layers 36 per token, head 10
    assert ops["ac"] == 6 + 7  # one per one of the embedding (LN0) + one per spike into the residual
    # mul per token: LN0 3C+2 = 8; LN1, LN2, LNout 3 * 8; 5 mixes 5 * 2C = 20; WKV 4C = 8;
    #      r*wkv C + r*kv C + square F = 8; two LIFs 2C = 4 -> 72
    assert ops["mul"] == 72 * 4
    # add per token: LN0 3C = 6; LN1, LN2, LNout 3 * 4C = 24; mixes 5C = 10; WKV 5C = 10; relu F = 4;
    #      two LIFs 2 * 3C = 12 -> 66
    assert ops["add"] == 66 * 4
    # special per token: 4 rsqrt; WKV 3C = 6; sigmoids 2C = 4 -> 14
    assert ops["special"] == 14 * 4
    # a soft reset also subtracts the threshold once per spike
    assert totals(spikegpt_operations(model.config, stats, soft_reset=True))["ac"] == 6 + 2 * 7
    rep = energy_report(model, [ids], context=4)
    assert rep["firing_rates"] == stats.rates() and rep["embedding_ones_rate"] == 6 / 8
    assert rep["mean_firing_rate"] == (6 / 8 + 1 / 8) / 2
    assert rep["spikegpt"]["ops"] == ops


def test_soft_reset_and_non_spiking_counts():
    soft = one_layer(v_reset=None)
    ones, sa, sf = counted(soft, IDS)
    ops = totals(spikegpt_operations(soft.config, measure_spikes(soft, [IDS])))
    assert ops["ac"] == ones + 2 * (sa + sf)  # the soft reset subtracts the threshold once per spike
    plain = one_layer(spiking=False)
    stats = measure_spikes(plain, [IDS])
    assert stats.tokens == 3 and stats.spikes == {} and stats.embedding_ones == 0  # nothing spikes
    ops = totals(spikegpt_operations(plain.config, stats))
    assert ops["ac"] == 0 and ops["mac"] == 1992
    # no LIFs (adds 2 * 3 * 8 * 3 = 144, muls 2 * 8 * 3 = 48); LN0 is a plain LayerNorm (+8 adds per token);
    # the residual additions are real: 2 * 8 * 3 = 48 adds
    assert ops["add"] == 792 - 144 + 24 + 48 and ops["mul"] == 792 - 48


def test_transformer_hand_count():
    # L = 1, C = 8, F = 16, V = 11, N = 3 tokens in windows of 2 (t = 2, 1: sum t^2 = 5), H = 2 heads
    ops = totals(transformer_operations(1, 8, 16, 11, tokens=3, context=2, num_heads=2))
    # MAC: q, k, v, o 4*64 = 256 and FFN 2*8*16 = 256 per token (1536); QK^T and AV 2 * 8 * 5 = 80; head 264
    assert ops["mac"] == 1536 + 80 + 264
    # mul: scale 2 * 5 = 10; LayerNorms 3 per token * 26 * 3 tokens = 234
    assert ops["mul"] == 10 + 234
    # add: softmax sums 10; residual 2 * 8 * 3 = 48; position embedding 24; LayerNorms 3 * 32 * 3 = 288
    assert ops["add"] == 10 + 48 + 24 + 288
    # special: softmax exp and divide 2 * 10 = 20; GELU 16 * 3 = 48; rsqrt 9
    assert ops["special"] == 20 + 48 + 9
    assert ops["ac"] == 0


def test_measured_rates_equal_independent_spike_counts_and_windows_do_not_matter():
    model = tiny_model(dtype=torch.float64, hidden_size=24, num_hidden_layers=2)
    ids = torch.randint(0, 257, (40,), generator=torch.Generator().manual_seed(0))
    whole = measure_spikes(model, [ids])
    windows = measure_spikes(model, [ids], window=7)
    assert whole == windows and whole.tokens == 40
    tot = spike_totals(model, ids[None])
    assert list(whole.spikes.values()) == [int(s) for s, _ in tot]
    assert list(whole.rates()) == [f"model.blocks.{l}.{b}_lif" for l in (0, 1) for b in ("att", "ffn")]
    for rate, (s, n) in zip(whole.rates().values(), tot):
        assert rate == pytest.approx(s / n)
    two = measure_spikes(model, [ids[:15], ids[15:]])  # separate documents each start fresh
    assert two.tokens == 40 and two.embedding_ones == whole.embedding_ones


def test_report_prices_counts_and_compares():
    model = tiny_model(hidden_size=32, num_hidden_layers=2)
    ids = torch.randint(0, 257, (50,), generator=torch.Generator().manual_seed(1))
    costs = EnergyCosts(mac=2.0, ac=0.5, mul=1.0, add=0.25, special=3.0)
    rep = energy_report(model, [ids], costs=costs, context=16, assumed_rate=0.1)
    json.dumps(rep)  # JSON-able
    for side in ("spikegpt", "transformer"):
        ops = rep[side]["ops"]
        want = 2.0 * ops["mac"] + 0.5 * ops["ac"] + 1.0 * ops["mul"] + 0.25 * ops["add"] + 3.0 * ops["special"]
        assert rep[side]["energy_pj"] == pytest.approx(want)
        assert rep[side]["energy_pj_per_token"] == pytest.approx(want / 50)
    comps = rep["spikegpt"]["by_component"]
    linear = comps["linear (real inputs)"]["mac"] + comps["head"]["mac"]
    assert rep["paper_style"]["energy_pj_assumed_rate"] == pytest.approx(0.5 * 0.1 * linear)
    assert rep["ratios"]["transformer_over_spikegpt_energy"] == pytest.approx(
        rep["transformer"]["energy_pj"] / rep["spikegpt"]["energy_pj"])
    assert rep["mean_firing_rate"] == pytest.approx(sum(rep["firing_rates"].values()) / 4)
    table = format_table(rep)
    for comp in list(rep["spikegpt"]["by_component"]) + list(rep["transformer"]["by_component"]):
        assert comp in table
    assert "spike-driven" in table and rep["spike_driven"] and rep["real_valued_products"]


def test_216m_shape_is_not_dozens_of_times_cheaper():
    """At the published 216M shape and context, with the reported firing rates (0.2-0.34), the honest count is
    close to the transformer's, while pricing every Linear as accumulates at rate 0.15 gives tens of times."""
    from spikegpt import SpikeGPTConfig

    cfg = SpikeGPTConfig()  # 18 x 768, vocab 50277
    N, C = 1024, 768
    stats = SpikeStats(tokens=N, hidden_size=C, embedding_ones=N * C // 2,
                       spikes={f"model.blocks.{l}.{b}_lif": int(0.25 * N * C) for l in range(18)
                               for b in ("att", "ffn")})
    sg = energy_pj(totals(spikegpt_operations(cfg, stats)))
    tf = energy_pj(totals(transformer_operations(18, 768, 3072, 50277, N, 1024)))
    linear = (5 * C * C + 2 * C * 3072) * 18 * N + C * 50277 * N
    assert 1.0 < tf / sg < 1.5
    assert tf / (0.9 * 0.15 * linear) > 25


def test_bad_settings():
    with pytest.raises(ValueError, match="energy per ac"):
        EnergyCosts(ac=-1)
    model = one_layer()
    with pytest.raises(ValueError, match="no tokens"):
        measure_spikes(model, [[]])
    with pytest.raises(ValueError, match="assumed_rate"):
        energy_report(model, [IDS], assumed_rate=2.0)
    with pytest.raises(ValueError, match="context"):
        transformer_operations(1, 8, 16, 11, tokens=3, context=0)
    assert set(KINDS) == {"mac", "ac", "mul", "add", "special"}
