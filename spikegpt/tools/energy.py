"""Operation and energy accounting for SpikeGPT, from firing rates measured on real text.

Which products take binary inputs? In this architecture every Linear layer (att.key / value / receptance /
output, ffn.key / receptance / value, head) reads real values: layer-normalised, token-shift-mixed inputs,
``sigmoid(r) * wkv`` or ``relu(k)^2``. Those are multiply-accumulates (MAC) on any hardware. Only two places
consume spikes:

- the binary embedding ``H(E[idx])`` feeds LN0, whose mean is then a sum of ones: one accumulate (AC) per
  one (the table lookup and the Heaviside can be precomputed: no arithmetic);
- each LIF spike is added into the real-valued residual stream: one AC per spike (a silent neuron costs
  nothing there); a soft reset also subtracts the threshold once per spike (one AC per spike).

Counting convention, per token (C width, F FFN width, V vocabulary, L layers; kinds: ``mac``, ``ac``,
``mul`` and ``add`` for elementwise real arithmetic, ``special`` for exp / sigmoid / divide / rsqrt):

| component | per token |
|---|---|
| LN0 (reads the binary embedding) | ac: ones of H(E[idx]); add 3C, mul 3C+2, special 1 |
| LayerNorm (LN1, LN2 per layer; LNout) | add 4C, mul 3C+2, special 1 (see below) |
| token-shift mixes (5 per layer) | each z*mu + zz*(1-mu): mul 2C, add C |
| Linear layers (real inputs) | mac 5C^2 + 2CF per layer (k, v, r, o: 4C^2; ffn key CF, value FC, receptance C^2) |
| WKV, per channel | add 5, mul 4, special 3 (the plain recurrence: e^(u+k), e^k, one division; e^w is a constant) |
| gates and activations | per layer: sigmoid 2C (special), r*wkv C + r*kv C + square F (mul), relu F (add) |
| LIF (2 per layer) | per neuron: charge mul 1 + add 2, fire add 1 (compare); hard reset is a select (0) |
| residual | ac: one per spike (non-spiking model: add 2C per layer) |
| head | mac CV |

A LayerNorm over C values: sums for the mean and the variance, the centring and the bias are 4C adds; the
squares, the scaling by 1/std and the gain are 3C multiplies, plus two divisions by C; one rsqrt.

A same-size transformer (L layers, width C, FFN F, vocabulary V, H heads) on windows of ``context`` tokens is
counted with the vanilla-transformer formulas that SNN energy comparisons use: per layer and window of t tokens,
Q/K/V/O projections 4tC^2 and FFN 2tCF MACs, scores QK^T t^2 C and attention-weighted values t^2 C MACs
(full t x t as in those formulas), and elementwise work the same way as above: scale H t^2 (mul), softmax
H t^2 exp and divide (special 2) plus H t^2 sums (add), GELU tF (special), residuals 2tC (add), LayerNorms as
above, position embedding tC (add), head tCV MACs.

Energies are configurable (:class:`EnergyCosts`; defaults 4.6 pJ per MAC, 0.9 pJ per AC, the 45 nm 32-bit
float figures of Horowitz 2014 used by the paper). The report also gives the "paper-style" figure that prices
every Linear layer as accumulates at an assumed firing rate (0.15 in the paper), to show how much of the
claimed saving depends on treating real-valued products as spike-driven.

    >>> report = energy_report(model, [ids])                 # doctest: +SKIP
    >>> print(format_table(report))                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from spikegpt.recording import record_spikes, spike_sites

KINDS = ("mac", "ac", "mul", "add", "special")

SPIKE_DRIVEN = [
    "binary embedding H(E[idx]) -> LN0 mean: one accumulate per one (lookup and Heaviside precomputable)",
    "LIF spikes -> residual stream: one accumulate per spike (silent neurons cost nothing)",
]
REAL_VALUED_PRODUCTS = [
    "att.key / att.value / att.receptance read token-shift mixes of LN1(x) (real)",
    "att.output reads sigmoid(r) * wkv (real)",
    "ffn.key / ffn.receptance read token-shift mixes of LN2(x) (real)",
    "ffn.value reads relu(key)^2 (real)",
    "head reads LNout(x) (real)",
]


@dataclass(frozen=True)
class EnergyCosts:
    """Energy per operation in picojoules (defaults: 45 nm, 32-bit float, Horowitz 2014).

    ``special`` prices one exp / sigmoid / divide / rsqrt as one MAC, a lower bound.
    """

    mac: float = 4.6
    ac: float = 0.9
    mul: float = 3.7
    add: float = 0.9
    special: float = 4.6

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"energy per {k} must be a finite number >= 0 (pJ), got {v!r}")


@dataclass
class SpikeStats:
    """Spike counts over ``tokens`` real tokens: ``embedding_ones`` (ones of H(E[idx])), and ``spikes`` per LIF
    by module path (``"model.blocks.{l}.att_lif"`` / ``"model.blocks.{l}.ffn_lif"`` for a causal LM). Each
    LIF has ``tokens * hidden_size`` neuron-steps."""

    tokens: int
    hidden_size: int
    embedding_ones: int = 0
    spikes: dict[str, int] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        """Firing rate of every LIF: spikes / (tokens * hidden_size)."""
        n = max(self.tokens * self.hidden_size, 1)
        return {k: v / n for k, v in self.spikes.items()}

    def mean_rate(self) -> float:
        r = self.rates()
        return sum(r.values()) / len(r) if r else 0.0

    @property
    def total_spikes(self) -> int:
        return sum(self.spikes.values())


def _ops(**kw: int) -> dict[str, int]:
    return {k: int(kw.get(k, 0)) for k in KINDS}


def _scaled(per_token: Mapping[str, int], n: int) -> dict[str, int]:
    return {k: int(per_token.get(k, 0)) * n for k in KINDS}


def _layernorm(C: int) -> dict[str, int]:
    return _ops(add=4 * C, mul=3 * C + 2, special=1)


def spikegpt_operations(config, stats: SpikeStats, soft_reset: bool | None = None) -> dict[str, dict[str, int]]:
    """Operation counts of a SpikeGPT model over the tokens of ``stats``: ``{component: {kind: count}}``
    (see the module docstring for the convention). ``soft_reset`` defaults to ``config.v_reset is None``."""
    C, F, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    N = stats.tokens
    spiking = bool(config.spiking)
    soft = (config.v_reset is None) if soft_reset is None else soft_reset
    ops: dict[str, dict[str, int]] = {}
    if spiking:
        ops["ln0 (binary input)"] = _ops(ac=stats.embedding_ones, add=3 * C * N, mul=(3 * C + 2) * N, special=N)
    else:
        ops["ln0 (binary input)"] = _scaled(_layernorm(C), N)
    ops["layernorm"] = _scaled(_layernorm(C), (2 * L + 1) * N)
    ops["token-shift mix"] = _scaled(_ops(mul=10 * C, add=5 * C), L * N)
    ops["linear (real inputs)"] = _ops(mac=(5 * C * C + 2 * C * F) * L * N)
    ops["wkv"] = _scaled(_ops(add=5 * C, mul=4 * C, special=3 * C), L * N)
    ops["gates and activations"] = _scaled(_ops(special=2 * C, mul=2 * C + F, add=F), L * N)
    if spiking:
        lif = _scaled(_ops(mul=C, add=3 * C), 2 * L * N)
        if soft:
            lif["ac"] += stats.total_spikes
        ops["lif"] = lif
        ops["residual (spikes)"] = _ops(ac=stats.total_spikes)
    else:
        ops["lif"] = _ops()
        ops["residual (spikes)"] = _ops(add=2 * C * L * N)
    ops["head"] = _ops(mac=C * V * N)
    return ops


def transformer_operations(
    num_layers: int, hidden_size: int, intermediate_size: int, vocab_size: int, tokens: int, context: int,
    num_heads: int | None = None,
) -> dict[str, dict[str, int]]:
    """Operation counts of a same-size decoder-only transformer over ``tokens`` tokens processed in windows
    of ``context`` (the last one shorter): ``{component: {kind: count}}`` (see the module docstring).
    ``num_heads`` defaults to ``max(1, hidden_size // 64)``."""
    L, C, F, V = num_layers, hidden_size, intermediate_size, vocab_size
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    H = num_heads or max(1, C // 64)
    windows = [context] * (tokens // context) + ([tokens % context] if tokens % context else [])
    sq = sum(t * t for t in windows)  # sum of t^2 over windows
    N = tokens
    return {
        "layernorm": _scaled(_layernorm(C), (2 * L + 1) * N),
        "linear (q, k, v, o, ffn)": _ops(mac=(4 * C * C + 2 * C * F) * L * N),
        "attention (QK^T, AV)": _ops(mac=2 * C * sq * L),
        "softmax and scale": _ops(mul=H * sq * L, add=H * sq * L, special=2 * H * sq * L),
        "gelu": _ops(special=F * L * N),
        "residual": _ops(add=2 * C * L * N),
        "position embedding": _ops(add=C * N),
        "head": _ops(mac=C * V * N),
    }


def totals(ops: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Sum of ``{component: {kind: count}}`` over components: ``{kind: count}``."""
    out = dict.fromkeys(KINDS, 0)
    for counts in ops.values():
        for k in KINDS:
            out[k] += int(counts.get(k, 0))
    return out


def energy_pj(counts: Mapping[str, int], costs: EnergyCosts = EnergyCosts()) -> float:
    """Energy in pJ of ``{kind: count}`` at ``costs``."""
    return sum(float(counts.get(k, 0)) * getattr(costs, k) for k in KINDS)


def _base(model):
    base = getattr(model, getattr(model, "base_model_prefix", "model"), model)
    if not hasattr(base, "blocks") or not hasattr(base, "emb"):
        raise ValueError(f"expected a SpikeGPT model (with .blocks and .emb), got {type(model).__name__}")
    return base


@torch.no_grad()
def measure_spikes(
    model, sequences: Iterable[Sequence[int] | torch.Tensor], window: int | None = None, progress: bool = False
) -> SpikeStats:
    """Run ``model`` over token sequences (each in windows of ``window`` tokens that carry the recurrent
    state, default ``config.context_length``) and count, with :func:`spikegpt.recording.record_spikes`, the
    ones of the binary embedding (its ``emb_spike`` site) and the spikes of every other site (the LIFs), by
    module path in ``model``. A non-spiking model counts nothing (``SpikeStats`` with the tokens only).
    ``ValueError`` when there are no tokens or ``model`` is not a SpikeGPT model."""
    cfg = model.config
    base = _base(model)
    window = window or int(getattr(cfg, "context_length", 1024) or 1024)
    seqs = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in sequences]
    if not seqs or all(len(s) == 0 for s in seqs):
        raise ValueError("no tokens to measure")
    sites = spike_sites(model)
    emb = [name for name, m in sites.items() if m is getattr(base, "emb_spike", None)]
    if cfg.spiking and len(emb) != 1:
        raise ValueError(f"expected one binary-embedding spike site (emb_spike) in {type(model).__name__}")
    recorder = record_spikes(model) if cfg.spiking else contextlib.nullcontext()
    device = next(model.parameters()).device
    from tqdm.auto import tqdm

    tokens = 0
    bar = tqdm(total=sum(len(s) for s in seqs), unit="tok", disable=not progress, dynamic_ncols=True)
    was_training = model.training
    model.eval()
    try:
        with recorder:
            for s in seqs:
                state = None
                for a in range(0, len(s), window):
                    ids = s[a : a + window][None].to(device)
                    state = base(ids, state=state, use_cache=True).state
                    tokens += ids.shape[1]
                    bar.update(ids.shape[1])
    finally:
        bar.close()
        model.train(was_training)
    stats = SpikeStats(tokens=tokens, hidden_size=cfg.hidden_size)
    if cfg.spiking:
        counts = dict(recorder.counts)
        stats.embedding_ones = counts.pop(emb[0])
        stats.spikes = counts
    return stats


def energy_report(
    model,
    sequences: Iterable[Sequence[int] | torch.Tensor] | None = None,
    *,
    stats: SpikeStats | None = None,
    window: int | None = None,
    context: int | None = None,
    costs: EnergyCosts = EnergyCosts(),
    num_heads: int | None = None,
    assumed_rate: float = 0.15,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure firing rates on ``sequences`` (or take ``stats``), count operations, price them, and compare with
    a same-size transformer at ``context`` tokens (default ``config.context_length``). Returns a JSON-able dict:
    ``model``, ``tokens``, ``firing_rates``, ``costs_pj``, ``spikegpt`` / ``transformer`` (``by_component``,
    ``ops``, ``energy_pj``, ``energy_pj_per_token``), ``paper_style``, ``ratios``, ``spike_driven``,
    ``real_valued_products``."""
    cfg = model.config
    if stats is None:
        if sequences is None:
            raise ValueError("pass token sequences to measure, or stats=")
        stats = measure_spikes(model, sequences, window=window, progress=progress)
    if stats.tokens <= 0:
        raise ValueError("no tokens were measured")
    if not 0 <= assumed_rate <= 1:
        raise ValueError(f"assumed_rate must lie in [0, 1], got {assumed_rate}")
    context = context or int(getattr(cfg, "context_length", 1024) or 1024)
    L, C, F, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    N = stats.tokens
    sg = spikegpt_operations(cfg, stats)
    tf = transformer_operations(L, C, F, V, N, context, num_heads)
    sg_tot, tf_tot = totals(sg), totals(tf)
    sg_e, tf_e = energy_pj(sg_tot, costs), energy_pj(tf_tot, costs)
    linear_macs = sg["linear (real inputs)"]["mac"] + sg["head"]["mac"]
    measured = stats.mean_rate()
    paper_assumed = costs.ac * assumed_rate * linear_macs
    paper_measured = costs.ac * measured * linear_macs

    def side(ops, tot, e):
        return {
            "by_component": ops, "ops": tot, "total_ops": sum(tot.values()),
            "energy_by_kind_pj": {k: tot[k] * getattr(costs, k) for k in KINDS},
            "energy_pj": e, "energy_pj_per_token": e / N,
        }

    return {
        "model": {
            "layers": L, "hidden_size": C, "intermediate_size": F, "vocab_size": V, "spiking": bool(cfg.spiking),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "tokens": N,
        "context": context,
        "transformer_heads": num_heads or max(1, C // 64),
        "firing_rates": stats.rates(),
        "mean_firing_rate": measured,
        "embedding_ones_rate": stats.embedding_ones / max(N * C, 1),
        "costs_pj": asdict(costs),
        "spikegpt": side(sg, sg_tot, sg_e),
        "transformer": side(tf, tf_tot, tf_e),
        "paper_style": {
            "what": "every Linear layer (and the head) priced as accumulates at a firing rate: E_AC * rate * MACs",
            "assumed_rate": assumed_rate,
            "energy_pj_assumed_rate": paper_assumed,
            "energy_pj_measured_rate": paper_measured,
        },
        "ratios": {
            "transformer_over_spikegpt_energy": tf_e / sg_e if sg_e else math.inf,
            "transformer_over_spikegpt_ops": sum(tf_tot.values()) / max(sum(sg_tot.values()), 1),
            "transformer_over_paper_style_assumed_rate": tf_e / paper_assumed if paper_assumed else math.inf,
            "transformer_over_paper_style_measured_rate": tf_e / paper_measured if paper_measured else math.inf,
        },
        "spike_driven": SPIKE_DRIVEN if cfg.spiking else [],
        "real_valued_products": REAL_VALUED_PRODUCTS,
    }


def _num(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _joules(pj: float) -> str:
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.4g} {unit}"
    return f"{pj:.4g} pJ"


def format_table(report: Mapping[str, Any]) -> str:
    """A plain-text table of an :func:`energy_report`: operations by component and kind, energies, ratios."""
    lines = []
    m = report["model"]
    lines.append(
        f"SpikeGPT {m['layers']} x {m['hidden_size']} (FFN {m['intermediate_size']}, vocab {m['vocab_size']}, "
        f"{m['parameters'] / 1e6:.1f}M params, {'spiking' if m['spiking'] else 'non-spiking'}) on "
        f"{report['tokens']} tokens; transformer context {report['context']}, {report['transformer_heads']} heads"
    )
    if report["firing_rates"]:
        rates = report["firing_rates"]
        lines.append(f"firing rate: mean {report['mean_firing_rate']:.4f}, min {min(rates.values()):.4f}, "
                     f"max {max(rates.values()):.4f}; embedding ones {report['embedding_ones_rate']:.4f}")
    costs = report["costs_pj"]
    head = f"{'component':<28}" + "".join(f"{k:>10}" for k in KINDS) + f"{'energy':>13}"
    for side in ("spikegpt", "transformer"):
        lines += ["", side.upper(), head, "-" * len(head)]
        for comp, counts in report[side]["by_component"].items():
            e = sum(counts[k] * costs[k] for k in KINDS)
            lines.append(f"{comp:<28}" + "".join(f"{_num(counts[k]):>10}" for k in KINDS) + f"{_joules(e):>13}")
        tot = report[side]["ops"]
        lines.append(f"{'total':<28}" + "".join(f"{_num(tot[k]):>10}" for k in KINDS)
                     + f"{_joules(report[side]['energy_pj']):>13}")
    r = report["ratios"]
    p = report["paper_style"]
    lines += [
        "",
        f"energy per token: SpikeGPT {_joules(report['spikegpt']['energy_pj_per_token'])}, "
        f"transformer {_joules(report['transformer']['energy_pj_per_token'])}",
        f"transformer / SpikeGPT: {r['transformer_over_spikegpt_energy']:.3g}x energy, "
        f"{r['transformer_over_spikegpt_ops']:.3g}x operations",
        f"paper-style (all Linear layers as accumulates): {r['transformer_over_paper_style_assumed_rate']:.3g}x at "
        f"rate {p['assumed_rate']}, {r['transformer_over_paper_style_measured_rate']:.3g}x at the measured rate",
        "spike-driven: " + ("; ".join(report["spike_driven"]) or "nothing (non-spiking model)"),
        "real-valued products (MACs): every Linear layer and the head",
    ]
    return "\n".join(lines)
