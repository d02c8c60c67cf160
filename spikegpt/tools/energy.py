"""Operation and energy accounting for SpikeGPT, from spikes measured on real text.

Which products take spikes? With ``spike_inputs="none"`` (SpikeGPT as published) every Linear layer
(att.key / value / receptance / output, ffn.key / receptance / value, head) reads real values: layer-normalised,
token-shift-mixed inputs, ``sigmoid(r) * wkv`` or ``relu(k)^2``. Those are multiply-accumulates (MAC) on any
hardware. Only two places consume spikes:

- the binary embedding ``H(E[idx])`` feeds LN0, whose mean is then a sum of ones: one accumulate (AC) per
  one (the table lookup and the Heaviside can be precomputed: no arithmetic);
- each LIF spike is added into the real-valued residual stream: one AC per spike (a silent neuron costs
  nothing there); a soft reset also subtracts the threshold once per spike (one AC per spike).

With a spike code (``spike_inputs`` = ``"lif"``, ``"binary"``, ``"ternary"``, ``"int<K>"``;
:mod:`spikegpt.spike_coding`) every Linear layer reads integer counts ``c`` of its input and one scale ``vth``
per token, ``W x -> vth * (W c)``. A count c is a train of |c| unit spikes, each adding (or, negative,
subtracting) one weight column, so a Linear with ``out`` outputs costs ``out * sum_i |c_i|`` accumulates per
token, with ``sum |c|`` *measured* on the text at that Linear's input, plus ``out`` multiplies by ``vth``. The
encoders' own arithmetic is counted too. The report lists, per spike-coded Linear, the fraction of its inputs
that are non-zero and the mean |c| per input, both measured.

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

Spike-driven (``spike_inputs`` other than ``"none"``), the "Linear layers" and "head" rows become, for each
of the 7L + 1 Linear layers with ``in`` inputs and ``out`` outputs (att k, v, r, o: C -> C; ffn key C -> F,
receptance C -> C, value F -> C; head C -> V), and the encoders are added:

| component | per token, for each Linear |
|---|---|
| linear / head (spike inputs) | ac: out * sum|c| (measured); mul: out (the scale vth) |
| spike encoder (width in) | vth = g * mean|x|: add in (sum of |x|; |x| clears a sign bit, free) + 1 (the clamp |
| | of vth to > 0, a compare), mul 1 (by the constant g / in); u = x / vth: special 1 (the reciprocal 1 / vth) |
| | and mul in (x times 1 / vth); the code: "int<K>"/"ternary" add 3 per input (trunc, clamp: two compares), |
| | "binary" add 1 per input (clamp(trunc(u), 0, 1) is one compare u >= 1), "lif" per input charge mul 1 + |
| | add 2 and fire add 1 like the branch LIFs (a soft reset: one ac per spike) |

A bit-serial alternative is reported too (``bit_serial``; not the headline): W c computed one bit plane of |c|
at a time, ``sum_j 2^j W p_j``, costs ``out * sum popcount(|c|)`` accumulates plus ``out * (b - 1)`` adds per
token (shift-and-add of the b = bit_length(K) planes); for 0/1 codes it equals the headline.

Only real tokens count: padded positions (an ``attention_mask`` of 0) add neither tokens nor spikes, as in
:mod:`spikegpt.recording`.

A LayerNorm over C values: sums for the mean and the variance, the centring and the bias are 4C adds; the
squares, the scaling by 1/std and the gain are 3C multiplies, plus two divisions by C; one rsqrt.

A same-size transformer (L layers, width C, FFN F, vocabulary V, H heads) on windows of ``context`` tokens is
counted with the vanilla-transformer formulas that SNN energy comparisons use: per layer and window of t tokens,
Q/K/V/O projections 4tC^2 and FFN 2tCF MACs, scores QK^T t^2 C and attention-weighted values t^2 C MACs
(full t x t as in those formulas), and elementwise work the same way as above: scale H t^2 (mul), softmax
H t^2 exp and divide (special 2) plus H t^2 sums (add), GELU tF (special), residuals 2tC (add), LayerNorms as
above, position embedding tC (add), head tCV MACs (every token, as the SpikeGPT head).

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
from torch import nn

from spikegpt.modeling_spikegpt import LIF, BinaryEmbedding
from spikegpt.recording import real_mask_of_call, record_spikes
from spikegpt.spike_coding import SpikeEncoder, parse_spike_inputs

KINDS = ("mac", "ac", "mul", "add", "special")

SPIKE_DRIVEN = [
    "binary embedding H(E[idx]) -> LN0 mean: one accumulate per one (lookup and Heaviside precomputable)",
    "LIF spikes -> residual stream: one accumulate per spike (silent neurons cost nothing)",
]
SPIKE_DRIVEN_LINEAR = (
    "every Linear layer (att.key / value / receptance / output, ffn.key / receptance / value, head) reads the "
    "spike code c of its input ({code}): out * sum|c| accumulates (measured) and out multiplies by the scale vth"
)
REAL_VALUED_PRODUCTS = [
    "att.key / att.value / att.receptance read token-shift mixes of LN1(x) (real)",
    "att.output reads sigmoid(r) * wkv (real)",
    "ffn.key / ffn.receptance read token-shift mixes of LN2(x) (real)",
    "ffn.value reads relu(key)^2 (real)",
    "head reads LNout(x) (real)",
]
REAL_VALUED_PRODUCTS_SPIKE_INPUTS = [
    "no Linear layer: each reads spike counts (accumulates), then one multiply per output by vth",
    "each spike encoder: vth = g * mean|x| (one multiply), u = x * (1 / vth) (one multiply per input)",
    "elementwise, as in every SpikeGPT: token-shift mixes, LayerNorms, WKV, sigmoid(r) * wkv, sigmoid(r) * kv, "
    "relu(k)^2",
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
class CodeCounts:
    """What one spike-coded Linear layer read over ``tokens`` real tokens: the counts c (``tokens`` rows of
    ``in_features`` integers) of its :class:`~spikegpt.spike_coding.SpikeEncoder`.

    Fields: ``linear`` (the Linear's module path, e.g. ``"model.blocks.0.att.key"``, ``"head"``), ``kind``
    (``"lif"``, ``"binary"`` or ``"int"``), ``max_count`` (K), ``in_features`` / ``out_features``, ``head``
    (the language-model head), ``tokens``, ``nonzeros`` (inputs with c != 0), ``abs_sum`` (sum |c|: unit spikes)
    and ``bit_sum`` (sum popcount(|c|): set bits)."""

    linear: str
    kind: str
    max_count: int
    in_features: int
    out_features: int
    head: bool = False
    tokens: int = 0
    nonzeros: int = 0
    abs_sum: int = 0
    bit_sum: int = 0

    @property
    def bits(self) -> int:
        """Bits of |c|: bit_length(K) (1 for the 0/1 codes)."""
        return int(self.max_count).bit_length()

    def nonzero_fraction(self) -> float:
        """Non-zero inputs / (tokens * in_features) (0.0 without tokens)."""
        n = self.tokens * self.in_features
        return self.nonzeros / n if n else 0.0

    def mean_abs_count(self) -> float:
        """sum |c| / (tokens * in_features): unit spikes per input and token (0.0 without tokens)."""
        n = self.tokens * self.in_features
        return self.abs_sum / n if n else 0.0


@dataclass
class SpikeStats:
    """Spike counts over ``tokens`` real tokens: ``embedding_ones`` (ones of H(E[idx])), ``spikes`` per branch
    LIF by module path (``"model.blocks.{l}.att_lif"`` / ``"model.blocks.{l}.ffn_lif"`` for a causal LM; each
    has ``tokens * hidden_size`` neuron-steps), and ``codes``: the :class:`CodeCounts` of every spike-coded
    Linear by the path of its encoder (``"model.blocks.{l}.att.codes.key"``, ..., ``"head_code"``; empty for
    ``spike_inputs="none"``)."""

    tokens: int
    hidden_size: int
    embedding_ones: int = 0
    spikes: dict[str, int] = field(default_factory=dict)
    codes: dict[str, CodeCounts] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        """Firing rate of every branch LIF: spikes / (tokens * hidden_size)."""
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


def _sum_ops(*parts: Mapping[str, int]) -> dict[str, int]:
    return {k: sum(int(p.get(k, 0)) for p in parts) for k in KINDS}


def _layernorm(C: int) -> dict[str, int]:
    return _ops(add=4 * C, mul=3 * C + 2, special=1)


def code_operations(code: CodeCounts, soft_reset: bool) -> dict[str, dict[str, int]]:
    """Operation counts of one spike-coded Linear over its tokens (see the module docstring): ``"encoder"`` (the
    encoder's own arithmetic), ``"linear"`` (the headline: ``out * sum|c|`` accumulates, ``out`` multiplies by
    vth per token) and ``"bit_serial"`` (the alternative for the Linear: ``out * sum popcount|c|`` accumulates,
    ``out * (bits - 1)`` shift-adds and ``out`` multiplies per token). ``soft_reset``: a ``"lif"`` code
    subtracts its threshold once per spike."""
    W, O, n = code.in_features, code.out_features, code.tokens
    enc = _ops(add=(W + 1) * n, mul=(1 + W) * n, special=n)  # vth (sum |x|, clamp, times g/W); 1/vth; u = x/vth
    if code.kind == "lif":
        enc["mul"] += W * n
        enc["add"] += 3 * W * n
        if soft_reset:
            enc["ac"] += code.nonzeros
    elif code.kind == "binary":
        enc["add"] += W * n
    elif code.kind == "int":
        enc["add"] += 3 * W * n
    else:
        raise ValueError(f"unknown spike code kind {code.kind!r} (expected 'lif', 'binary' or 'int')")
    return {
        "encoder": enc,
        "linear": _ops(ac=O * code.abs_sum, mul=O * n),
        "bit_serial": _ops(ac=O * code.bit_sum, add=O * (code.bits - 1) * n, mul=O * n),
    }


def _spike_driven(config) -> bool:
    return parse_spike_inputs(config.spike_inputs)[0] != "none"


def _linear_shapes(config) -> list[tuple[int, int]]:
    """(in, out) of the 7 Linear layers of one block."""
    C, F = config.hidden_size, config.intermediate_size
    return [(C, C)] * 4 + [(C, F), (C, C), (F, C)]


def _check_codes(config, stats: SpikeStats) -> None:
    """The codes of ``stats`` are those of a spike-driven causal LM of ``config``, each over every token."""
    L, C, V = config.num_hidden_layers, config.hidden_size, config.vocab_size
    codes = list(stats.codes.values())
    heads = [c for c in codes if c.head]
    if len(codes) != 7 * L + 1 or len(heads) != 1:
        raise ValueError(
            f"spike_inputs={config.spike_inputs!r}: expected the counts of {7 * L + 1} spike-coded Linear layers "
            f"(7 per block and the head), got {len(codes)} ({len(heads)} head); measure them with measure_spikes "
            f"on the causal LM")
    want = sorted(_linear_shapes(config) * L + [(C, V)])
    got = sorted((c.in_features, c.out_features) for c in codes)
    if got != want or (heads[0].in_features, heads[0].out_features) != (C, V):
        raise ValueError(f"the spike-coded Linear layers have shapes {got}, expected {want} for this config")
    bad = {name: c.tokens for name, c in stats.codes.items() if c.tokens != stats.tokens}
    if bad:
        raise ValueError(f"every spike code reads each of the {stats.tokens} tokens once, but {bad}")


def spikegpt_operations(config, stats: SpikeStats, soft_reset: bool | None = None) -> dict[str, dict[str, int]]:
    """Operation counts of a SpikeGPT model over the tokens of ``stats``: ``{component: {kind: count}}``
    (see the module docstring for the convention). ``soft_reset`` defaults to ``config.v_reset is None``.

    With ``config.spike_inputs`` other than ``"none"`` the Linear layers are priced from ``stats.codes``
    (``"linear (spike inputs)"``, ``"head (spike inputs)"``, ``"spike encoders"`` replace ``"linear (real
    inputs)"`` and ``"head"``). Raises ``ValueError`` when ``stats.codes`` does not fit the config (codes
    missing for a spike-driven config, or present for ``"none"``)."""
    C, F, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    N = stats.tokens
    spiking = bool(config.spiking)
    soft = (config.v_reset is None) if soft_reset is None else soft_reset
    coded = _spike_driven(config)
    if coded:
        _check_codes(config, stats)
    elif stats.codes:
        raise ValueError("stats has spike-code counts, but config.spike_inputs is 'none'")
    ops: dict[str, dict[str, int]] = {}
    if spiking:
        ops["ln0 (binary input)"] = _ops(ac=stats.embedding_ones, add=3 * C * N, mul=(3 * C + 2) * N, special=N)
    else:
        ops["ln0 (binary input)"] = _scaled(_layernorm(C), N)
    ops["layernorm"] = _scaled(_layernorm(C), (2 * L + 1) * N)
    ops["token-shift mix"] = _scaled(_ops(mul=10 * C, add=5 * C), L * N)
    if coded:
        per = {name: code_operations(c, soft) for name, c in stats.codes.items()}
        ops["spike encoders"] = _sum_ops(*(p["encoder"] for p in per.values()))
        ops["linear (spike inputs)"] = _sum_ops(*(p["linear"] for n, p in per.items() if not stats.codes[n].head))
    else:
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
    if coded:
        ops["head (spike inputs)"] = _sum_ops(*(p["linear"] for n, p in per.items() if stats.codes[n].head))
    else:
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


def _coded_linears(model: nn.Module) -> dict[str, tuple[SpikeEncoder, str, nn.Linear, bool]]:
    """Every :class:`SpikeEncoder` of ``model`` by path, with the Linear it feeds: ``(encoder, linear path,
    linear, is_head)``. An encoder ``codes[name]`` of a module feeds that module's Linear ``name`` (how
    ``TimeMix`` / ``ChannelMix`` read their inputs); ``head_code`` feeds ``head``. ``ValueError`` for an encoder
    that feeds none, or a width that does not fit."""
    paths = {id(m): p for p, m in model.named_modules()}
    feeds: dict[int, tuple[str, nn.Module, bool]] = {}
    for path, m in model.named_modules():
        codes = getattr(m, "codes", None)
        if isinstance(codes, nn.ModuleDict):
            for name, enc in codes.items():
                feeds[id(enc)] = (f"{path}.{name}" if path else name, getattr(m, name, None), False)
    head_code, head = getattr(model, "head_code", None), getattr(model, "head", None)
    if isinstance(head_code, SpikeEncoder) and head is not None:
        feeds[id(head_code)] = (paths.get(id(head), "head"), head, True)
    out = {}
    for path, m in model.named_modules():
        if not isinstance(m, SpikeEncoder):
            continue
        if id(m) not in feeds or not isinstance(feeds[id(m)][1], nn.Linear):
            raise ValueError(f"spike encoder {path!r} feeds no Linear layer known to the energy tool")
        lin_path, lin, is_head = feeds[id(m)]
        if lin.in_features != m.width:
            raise ValueError(f"spike encoder {path!r} has width {m.width}, its Linear {lin_path!r} reads "
                             f"{lin.in_features} inputs")
        out[path] = (m, lin_path, lin, is_head)
    return out


class _CodeCounter:
    """Forward hooks on the spike encoders: sum |c|, non-zeros and set bits of each call's counts c at its real
    positions (the call's (B, T) bool mask, as :mod:`spikegpt.recording` takes it; else ``window_mask`` when it
    has the counts' (B, T): the head's stateless code is called without a mask)."""

    def __init__(self, coded: Mapping[str, tuple[SpikeEncoder, str, nn.Linear, bool]]):
        self.coded = coded
        self.window_mask: torch.Tensor | None = None
        self.counts = {
            path: CodeCounts(linear=lin_path, kind=enc.kind, max_count=int(enc.max_count), in_features=enc.width,
                             out_features=lin.out_features, head=is_head)
            for path, (enc, lin_path, lin, is_head) in coded.items()
        }
        self._handles: list = []

    def _hook(self, path: str):
        cc = self.counts[path]

        def hook(module, args, kwargs, output):
            c = output[0]
            real = real_mask_of_call(args, kwargs, c)
            if real is None and self.window_mask is not None and self.window_mask.shape == c.shape[:2]:
                real = self.window_mask
            counted = (c if real is None else c[real]).detach().reshape(-1, cc.in_features)
            mag = counted.abs()
            a = mag.to(torch.int64)
            if not torch.equal(a.to(mag.dtype), mag):
                raise ValueError(f"spike encoder {path!r} returned counts that are not integers")
            cc.tokens += counted.shape[0]
            cc.nonzeros += int(torch.count_nonzero(a))
            cc.abs_sum += int(a.sum())
            cc.bit_sum += sum(int(((a >> j) & 1).sum()) for j in range(cc.bits))
        return hook

    def __enter__(self):
        self._handles = [enc.register_forward_hook(self._hook(path), with_kwargs=True)
                         for path, (enc, *_) in self.coded.items()]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []


def _batches(seqs: list[torch.Tensor], batch_size: int):
    """(ids (B, T), mask (B, T) bool or None) of consecutive groups of ``batch_size`` sequences, right-padded."""
    for i in range(0, len(seqs), batch_size):
        group = [s for s in seqs[i : i + batch_size] if len(s)]
        if not group:
            continue
        T = max(len(s) for s in group)
        ids = torch.zeros(len(group), T, dtype=torch.long)
        mask = torch.zeros(len(group), T, dtype=torch.bool)
        for b, s in enumerate(group):
            ids[b, : len(s)] = s
            mask[b, : len(s)] = True
        yield ids, None if bool(mask.all()) else mask


@torch.no_grad()
def measure_spikes(
    model, sequences: Iterable[Sequence[int] | torch.Tensor], window: int | None = None, progress: bool = False,
    batch_size: int = 1,
) -> SpikeStats:
    """Run ``model`` over token sequences (each in windows of ``window`` tokens that carry the recurrent
    state, default ``config.context_length``) and count the ones of the binary embedding
    (:class:`~spikegpt.modeling_spikegpt.BinaryEmbedding`), the spikes of every branch
    :class:`~spikegpt.modeling_spikegpt.LIF` (with :func:`spikegpt.recording.record_spikes`), and, spike-driven,
    what every :class:`~spikegpt.spike_coding.SpikeEncoder` hands its Linear (:class:`CodeCounts`), by module
    path in ``model``. A spike-driven model runs whole (the head's code is part of the causal LM; every
    position's logits are computed, so the head's code reads every token); otherwise only the base model runs.
    ``batch_size`` sequences run together, right-padded with an ``attention_mask``: padding counts nothing.
    A non-spiking model without spike codes counts nothing (``SpikeStats`` with the tokens only).

    Raises:
        ValueError: no tokens, ``batch_size < 1``, a model that is not SpikeGPT, a spike-driven model without
            its head code (not the causal LM), or a spike site of an unknown type.
    """
    cfg = model.config
    base = _base(model)
    window = window or int(getattr(cfg, "context_length", 1024) or 1024)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    seqs = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in sequences]
    if not seqs or all(len(s) == 0 for s in seqs):
        raise ValueError("no tokens to measure")
    coded = _spike_driven(cfg)
    if coded and not isinstance(getattr(model, "head_code", None), SpikeEncoder):
        raise ValueError(f"spike_inputs={cfg.spike_inputs!r}: measure the causal LM (SpikeGPTForCausalLM), whose "
                         f"head reads a spike code too; got {type(model).__name__}")
    sites = {name: m for name, m in model.named_modules() if isinstance(m, (LIF, BinaryEmbedding))}
    emb = [name for name, m in sites.items() if isinstance(m, BinaryEmbedding)]
    if cfg.spiking and len(emb) != 1:
        raise ValueError(f"expected one binary-embedding spike site (emb_spike) in {type(model).__name__}")
    recorder = record_spikes(model, sites=list(sites)) if cfg.spiking else contextlib.nullcontext()
    counter = _CodeCounter(_coded_linears(model) if coded else {})
    run = model if coded else base
    device = next(model.parameters()).device
    from tqdm.auto import tqdm

    tokens = 0
    bar = tqdm(total=sum(len(s) for s in seqs), unit="tok", disable=not progress, dynamic_ncols=True)
    was_training = model.training
    model.eval()
    try:
        with recorder, counter:
            for ids, mask in _batches(seqs, batch_size):
                state = None
                for a in range(0, ids.shape[1], window):
                    part = ids[:, a : a + window].to(device)
                    m = None if mask is None else mask[:, a : a + window].to(device)
                    counter.window_mask = None if m is None or bool(m.all()) else m
                    state = run(part, attention_mask=None if m is None else m.long(), state=state,
                                use_cache=True).state
                    n = part.numel() if m is None else int(m.sum())
                    tokens += n
                    bar.update(n)
    finally:
        bar.close()
        model.train(was_training)
    stats = SpikeStats(tokens=tokens, hidden_size=cfg.hidden_size, codes=counter.counts)
    if cfg.spiking:
        counts = dict(recorder.counts)
        stats.embedding_ones = counts.pop(emb[0])
        stats.spikes = counts
    return stats


def _linear_rows(stats: SpikeStats, soft: bool, costs: EnergyCosts) -> list[dict[str, Any]]:
    rows = []
    for site, c in stats.codes.items():
        ops = code_operations(c, soft)
        rows.append({
            "linear": c.linear, "encoder": site, "in_features": c.in_features, "out_features": c.out_features,
            "tokens": c.tokens, "nonzero_fraction": c.nonzero_fraction(), "mean_abs_count": c.mean_abs_count(),
            "nonzeros": c.nonzeros, "unit_spikes": c.abs_sum, "set_bits": c.bit_sum,
            "linear_ops": ops["linear"], "encoder_ops": ops["encoder"], "bit_serial_ops": ops["bit_serial"],
            "linear_energy_pj": energy_pj(ops["linear"], costs), "encoder_energy_pj": energy_pj(ops["encoder"], costs),
        })
    return rows


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
    batch_size: int = 1,
) -> dict[str, Any]:
    """Measure spikes on ``sequences`` (or take ``stats``), count operations, price them, and compare with a
    same-size transformer at ``context`` tokens (default ``config.context_length``). Returns a JSON-able dict:
    ``model``, ``tokens``, ``firing_rates``, ``costs_pj``, ``spikegpt`` / ``transformer`` (``by_component``,
    ``ops``, ``energy_pj``, ``energy_pj_per_token``), ``spike_inputs`` (the code and, per spike-coded Linear,
    its measured input sparsity and operations: ``linears``; the ``bit_serial`` alternative), ``paper_style``,
    ``ratios``, ``spike_driven``, ``real_valued_products``."""
    cfg = model.config
    if stats is None:
        if sequences is None:
            raise ValueError("pass token sequences to measure, or stats=")
        stats = measure_spikes(model, sequences, window=window, progress=progress, batch_size=batch_size)
    if stats.tokens <= 0:
        raise ValueError("no tokens were measured")
    if not 0 <= assumed_rate <= 1:
        raise ValueError(f"assumed_rate must lie in [0, 1], got {assumed_rate}")
    context = context or int(getattr(cfg, "context_length", 1024) or 1024)
    L, C, F, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    N = stats.tokens
    soft = cfg.v_reset is None
    coded = _spike_driven(cfg)
    sg = spikegpt_operations(cfg, stats)
    tf = transformer_operations(L, C, F, V, N, context, num_heads)
    sg_tot, tf_tot = totals(sg), totals(tf)
    sg_e, tf_e = energy_pj(sg_tot, costs), energy_pj(tf_tot, costs)
    linear_macs = (5 * C * C + 2 * C * F) * L * N + C * V * N  # every Linear and the head as dense MACs
    measured = stats.mean_rate()
    paper_assumed = costs.ac * assumed_rate * linear_macs
    paper_measured = costs.ac * measured * linear_macs

    def side(ops, tot, e):
        return {
            "by_component": ops, "ops": tot, "total_ops": sum(tot.values()),
            "energy_by_kind_pj": {k: tot[k] * getattr(costs, k) for k in KINDS},
            "energy_pj": e, "energy_pj_per_token": e / N,
        }

    kind, K = parse_spike_inputs(cfg.spike_inputs)
    spike_inputs: dict[str, Any] = {"code": cfg.spike_inputs, "kind": kind, "linears": []}
    ratios = {
        "transformer_over_spikegpt_energy": tf_e / sg_e if sg_e else math.inf,
        "transformer_over_spikegpt_ops": sum(tf_tot.values()) / max(sum(sg_tot.values()), 1),
        "transformer_over_paper_style_assumed_rate": tf_e / paper_assumed if paper_assumed else math.inf,
        "transformer_over_paper_style_measured_rate": tf_e / paper_measured if paper_measured else math.inf,
    }
    if coded:
        rows = _linear_rows(stats, soft, costs)
        inputs = sum(r["tokens"] * r["in_features"] for r in rows)
        bs = dict(sg)
        for comp, is_head in (("linear (spike inputs)", False), ("head (spike inputs)", True)):
            bs[comp] = _sum_ops(*(r["bit_serial_ops"] for r in rows if stats.codes[r["encoder"]].head == is_head))
        bs_tot = totals(bs)
        bs_e = energy_pj(bs_tot, costs)
        spike_inputs.update({
            "min_count": 0 if kind in ("binary", "lif") else -K, "max_count": K, "linears": rows,
            "nonzero_fraction": sum(r["nonzeros"] for r in rows) / inputs,
            "mean_abs_count": sum(r["unit_spikes"] for r in rows) / inputs,
            "bit_serial": {
                "what": "alternative, not the headline: W c one bit plane of |c| at a time, out * popcount(|c|) "
                        "accumulates plus out * (bits - 1) shift-adds per token",
                "bits": max(1, K.bit_length()), "by_component": {k: bs[k] for k in
                                                                 ("linear (spike inputs)", "head (spike inputs)")},
                "ops": bs_tot, "energy_pj": bs_e, "energy_pj_per_token": bs_e / N,
            },
        })
        ratios["transformer_over_bit_serial_energy"] = tf_e / bs_e if bs_e else math.inf
    spike_driven = (list(SPIKE_DRIVEN) if cfg.spiking else []) + (
        [SPIKE_DRIVEN_LINEAR.format(code=cfg.spike_inputs)] if coded else [])
    return {
        "model": {
            "layers": L, "hidden_size": C, "intermediate_size": F, "vocab_size": V, "spiking": bool(cfg.spiking),
            "spike_inputs": cfg.spike_inputs, "parameters": sum(p.numel() for p in model.parameters()),
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
        "spike_inputs": spike_inputs,
        "paper_style": {
            "what": "every Linear layer (and the head) priced as accumulates at a firing rate: E_AC * rate * MACs",
            "assumed_rate": assumed_rate,
            "energy_pj_assumed_rate": paper_assumed,
            "energy_pj_measured_rate": paper_measured,
        },
        "ratios": ratios,
        "spike_driven": spike_driven,
        "real_valued_products": list(REAL_VALUED_PRODUCTS_SPIKE_INPUTS if coded else REAL_VALUED_PRODUCTS),
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


def _linear_table(report: Mapping[str, Any]) -> list[str]:
    """The spike-driven Linear rows: measured input sparsity and per-token accumulates of each Linear."""
    si = report["spike_inputs"]
    rows = si["linears"]
    width = max(28, *(len(r["linear"]) + 2 for r in rows))
    head = (f"{'linear (spike inputs)':<{width}}{'in->out':>12}{'nonzero':>10}{'mean|c|':>10}{'ac/token':>11}"
            f"{'mul/token':>11}{'energy':>13}")
    lines = ["", f"SPIKE-DRIVEN LINEAR LAYERS (code {si['code']}: counts in [{si['min_count']}, {si['max_count']}], "
                 f"measured; ac = out * sum|c|, mul = out for the scale vth)", head, "-" * len(head)]
    for r in rows:
        n = max(r["tokens"], 1)
        lines.append(f"{r['linear']:<{width}}{str(r['in_features']) + '->' + str(r['out_features']):>12}"
                     f"{r['nonzero_fraction']:>10.4f}{r['mean_abs_count']:>10.4f}"
                     f"{_num(r['linear_ops']['ac'] / n):>11}{_num(r['linear_ops']['mul'] / n):>11}"
                     f"{_joules(r['linear_energy_pj']):>13}")
    lines.append(f"{'all inputs':<{width}}{'':>12}{si['nonzero_fraction']:>10.4f}{si['mean_abs_count']:>10.4f}")
    return lines


def format_table(report: Mapping[str, Any]) -> str:
    """A plain-text table of an :func:`energy_report`: operations by component and kind, energies, the
    spike-driven Linear layers with their measured input sparsity, ratios."""
    lines = []
    m = report["model"]
    si = report.get("spike_inputs") or {"code": "none", "linears": []}
    code = f", spike inputs {si['code']}" if si["linears"] else ""
    lines.append(
        f"SpikeGPT {m['layers']} x {m['hidden_size']} (FFN {m['intermediate_size']}, vocab {m['vocab_size']}, "
        f"{m['parameters'] / 1e6:.1f}M params, {'spiking' if m['spiking'] else 'non-spiking'}{code}) on "
        f"{report['tokens']} tokens; transformer context {report['context']}, {report['transformer_heads']} heads"
    )
    if report["firing_rates"]:
        rates = report["firing_rates"]
        lines.append(f"firing rate: mean {report['mean_firing_rate']:.4f}, min {min(rates.values()):.4f}, "
                     f"max {max(rates.values()):.4f}; embedding ones {report['embedding_ones_rate']:.4f}")
    if si["linears"]:
        lines += _linear_table(report)
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
    ]
    if si["linears"]:
        bs = si["bit_serial"]
        lines.append(f"alternative (not the headline), bit-serial Linear layers ({bs['bits']} bit planes of |c|): "
                     f"SpikeGPT {_joules(bs['energy_pj_per_token'])} per token, transformer / SpikeGPT "
                     f"{r['transformer_over_bit_serial_energy']:.3g}x energy")
    lines += [
        f"paper-style (all Linear layers as accumulates): {r['transformer_over_paper_style_assumed_rate']:.3g}x at "
        f"rate {p['assumed_rate']}, {r['transformer_over_paper_style_measured_rate']:.3g}x at the measured rate",
        "spike-driven: " + ("; ".join(report["spike_driven"]) or "nothing (non-spiking model)"),
    ]
    if si["linears"]:
        lines.append("real-valued products: " + "; ".join(report["real_valued_products"]))
    else:
        lines.append("real-valued products (MACs): every Linear layer and the head")
    return "\n".join(lines)
