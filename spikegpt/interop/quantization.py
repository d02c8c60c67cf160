"""Quantised inference: bf16, int8 and int4 weights (and int8 x int8 products) for a SpikeGPT model, through torchao;
and fp32 weights laid out for CPU decoding.

    >>> from spikegpt.interop.quantization import quantize
    >>> model = quantize(SpikeGPTForCausalLM.from_pretrained("runs/tiny"), "int8")   # doctest: +SKIP
    >>> model.generate(ids, max_new_tokens=32)                                         # doctest: +SKIP

Schemes (each applied in place to an fp32 model; ``compute_dtype`` is bf16 unless asked otherwise):

- ``"fp32"``: nothing is rounded. Every Linear weight keeps its (out, in) shape and values but is stored transposed
  in memory (``w.t().contiguous().t()``, strides (1, out)), the layout the CPU matmul reads fastest for the few rows
  of a decode step: at the 216M shape a batch-1 step takes ~4% less time and a batch-8 step ~24% less, with prefill
  unchanged (measured in ``docs/inference.md``). The results equal the plain model's to fp32 rounding (the sums run
  in another order). A head tied to the embedding keeps its layout (the embedding reads rows of it). Such a model
  saves as usual (the saved tensors are contiguous again).
- ``"bf16"``: every parameter and activation in bf16 (``model.to(torch.bfloat16)``); no torchao needed. A
  single-row input runs ``torch.mv``, ~1.5x faster on a CPU than the matmul ``F.linear`` picks for it.
- ``"int8"``: the block Linear layers and the head hold int8 weights with one scale per output channel
  (symmetric; torchao ``Int8WeightOnlyConfig(granularity=PerRow())``); their matmul runs in bf16, on a CPU
  through aten's fused dequantise-matmul kernel ``_weight_int8pack_mm`` (fp32 accumulation).
- ``"int4"``: the block Linear layers hold int4 weights in groups of ``group_size`` inputs (default: the
  largest of 128, 64, 32 that divides the layer widths), asymmetric
  (torchao ``PrototypeInt4WeightOnlyConfig``: ``Int4OpaqueTensor``, aten's ``_weight_int4pack_mm_for_cpu``;
  CPU only); the head is int8 per channel as above (more sensitive, and its vocabulary rows need not be a
  multiple of 16 as the int4 CPU kernel requires).
- ``"int8-dynamic"`` (CPU): the block Linear layers and the head hold the same int8 per-channel weights
  (torchao ``Int8DynamicActivationInt8WeightConfig(granularity=PerRow())``) and each rounds its input to int8 per
  row (token) as torchao's own W8A8 linear does (symmetric, ``s_x = max|x| / 127.5``), then computes the exact
  integer product on the integer kernels of "spike-int8" below: the weights are read as int8 by VNNI, where the
  weight-only kernel above reads them at ~11 GB/s. What it costs in quality is the rounding of the activations
  (measured on trained models in ``docs/inference.md``). Layers of one input width called together (TimeMix's key,
  value and receptance; ChannelMix's key and receptance) round their inputs in one pass
  (:meth:`QuantizedLinear.forward_group`), the same function with fewer calls.
- ``"spike-int8"`` (spike-driven models only, ``config.spike_inputs`` other than ``"none"``; CPU): the Linear
  layers that read spike counts (the seven of each block and the head) hold int8 weights with one scale per
  output channel and compute an exact integer product of the integer counts, ``torch._int_mm`` with int32
  accumulation, times the weight scale. The model's own ``* vth`` stays outside (see below).

What stays: the embedding is never quantised (one row is read per token, so it costs no time, and the
spiking model thresholds it, ``H(E[idx])``, where rounding would flip spikes); the LayerNorms, the WKV, the
LIF neurons and the residual stream run in the model's dtype. The recurrent state: the WKV accumulators and
the membranes are fp32 in every scheme (see :mod:`spikegpt.state`); the token-shift fields follow the model
dtype, so they are fp32 for int8/int4 (an fp32 model whose Linear layers alone compute in bf16) and bf16 for
"bf16" (whose activations are bf16 throughout, so the shift field holds exactly the bf16 value the next step
mixes; nothing would be gained by keeping it wider).

Why the matmul of int8/int4 runs in bf16 by default (``compute_dtype=torch.bfloat16``): on a CPU, the fused
weight-only kernels (``aten._weight_int8pack_mm``, ``aten._weight_int4pack_mm_for_cpu``) are vectorised for
bf16 activations and read one byte (half a byte) per weight: ~3-4x faster than an fp32 matmul at batch 1
(measured at the 216M shape's layer sizes, weights streamed from memory). With fp32 activations the int8 one
is 2-4x slower than an fp32 matmul, and torchao's generic int8 path converts the whole weight to fp32 at every
call (also slower than fp32). Each quantised Linear casts its input to bf16 and its output back, with fp32
accumulation inside. ``compute_dtype=None`` keeps the model's dtype (torchao's own kernels: exact weight-only
quantisation, slower on a CPU).

A model saved with ``save_pretrained`` also loads quantised through Hugging Face's own torchao integration,
``from_pretrained(path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))`` (transformers leaves
the head unquantised there); :func:`torchao_config` builds that config for a scheme, and
:func:`use_fused_kernels` switches such a model to the fast CPU path.

Spike-driven int8 (``"spike-int8"``). A spike-driven model (:mod:`spikegpt.spike_coding`) feeds every Linear
layer integer counts ``c`` (B, T, in) in its float dtype and multiplies the output by the per-token scale ``vth``:
``W x_hat = vth * (W c)``. With ``W ~= s * W_q`` (int8 ``W_q``, one fp32 scale ``s`` per output channel,
torchao's symmetric per-row rounding, ``|W - s W_q| <= s / 2``) the product is ``vth * s * (W_q c)``, and
``W_q c`` is an integer matrix product: no activation quantisation, nothing rounded but the weights (and the
fp32 output once), so ``|y - W c| <= (s / 2) * sum|c|`` per output. The weights are torchao ``Int8Tensor`` s
made by ``Int8StaticActivationInt8WeightConfig`` with a static activation scale of 1 (an activation "quantised"
with scale 1 is its integer value), so torchao's own linear computes the same function. Its CPU path is slower
at small M (it quantises the activation at every call, and on a CPU with AMX it runs the signed x signed
``_int_mm``), so :class:`QuantizedLinear` runs PyTorch's unsigned x signed integer kernels itself (VNNI u8 x s8):
for one row ``torch._int_mm`` (at batch 1 on this machine 2-3x faster than s8 x s8 with the weights streamed from
memory, 4-8x with them in cache, and 3.5-4x faster than the fp32 matmul: a quarter of the bytes), for more rows
oneDNN's quantised linear (``torch.ops.onednn.qlinear_pointwise`` on a weight prepacked once per layer, built on
first use and not copied: 1.5-2.5x faster than ``torch._int_mm`` plus its separate offset and scale passes at
512 rows, slower for one row). Counts that can be negative (``int<K>``, ``ternary``) are offset by 128 into
[0, 255] (the sign bit of the int8 count flipped); the offset's exact share ``128 * sum_k W_q[n, k]`` is taken off
in int32 (precomputed per output for ``torch._int_mm``; oneDNN's input zero point does the same); binary and LIF
spikes are 0/1 already. Both kernels give the same exact sums, then one fp32 rounding (a test checks they agree);
where PyTorch has no oneDNN, ``torch._int_mm`` serves every M.

Constraints of ``torch._int_mm`` on a CPU (torch 2.13), found here: any M >= 0 (M = 1 included), K and N (no
multiple-of-8 rule, unlike CUDA); a uint8 or int8 left operand, an int8 right one, int32 out, exact sums
(checked to 255 * 127 * 3072); a right operand (K, N) passed as the transposed view of the contiguous (N, K) int8
weight is faster than a contiguous (K, N) copy (that is how it is passed); but wrong values, without an error,
when an operand has strides (1, 1), as a (1, K) input view or the (1, N) view of a K = 1 weight can: the input is
reshaped to (M, K) and cast into a new tensor of contiguous strides, and in_features = 1 is refused. The int32
sums cannot overflow while ``255 * 127 * in_features < 2^31`` (in_features up to 66,311; refused above). And
``torch.mul`` of the int32 result by the fp32 scales (mixed dtypes) is ~3x slower than converting to fp32 first.

The contract of a "spike-int8" layer: its input holds integers in [-128, 127] (in [0, 255] where the code is
binary or LIF), as the model's spike codes produce (``|c| <= K <= 127``); anything else is cast unchecked (a
fraction dropped, out of range wrapped), since checking costs extra passes over every input (measured at
6 x 768: +8% on a batch-1 decode step, +50% on a 512-token prefill). ``quantize(..., check_inputs=True)`` checks
at every call and raises ``ValueError`` instead (the tests and the quality benchmark run so). The recurrent
state is untouched (fp32 WKV and membranes, token-shift fields in the model's dtype). Such a model is for
inference: its ``save_pretrained`` raises (save the fp32 model and quantise after loading, which takes seconds).

Accuracy: per layer, the bound above. Over a model, the spike codes are discontinuous, so the rounded weights
flip some counts downstream and those flips propagate: at random init the logits of a small spike-driven model
(2 x 64) move by 30-70%, against ~1-2% for the same weights without codes (measured here; its fp32 and fp64 runs
agree to 1e-7, so it is the rounding of the weights, not of the arithmetic). What counts is a trained model's
predictions: ``benchmarks/spike_driven.py`` measures them on held-out text (a 2 x 128 int3 model trained 300
steps on builtin:python-docs: perplexity 197.67 -> 197.77, +0.05%; argmax agreement with fp32 89.3%; mean
KL 0.017 nats per token; its fp64 run agrees with fp32 on 99.96% of the argmaxes).

Needs torchao for every scheme but bf16 (``pip install 'spikegpt[deploy]'``), imported only inside the functions here;
this module is not imported by ``import spikegpt``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spikegpt.modeling_spikegpt import QUANTIZATION_MARK
from spikegpt.spike_coding import SpikeEncoder, parse_spike_inputs

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMES", "QuantizedLinear", "quantization_scheme", "quantize", "spike_linears", "torchao_config",
    "use_fused_kernels",
]

SCHEMES = ("fp32", "bf16", "int8", "int4", "int8-dynamic", "spike-int8")
INT4_GROUP_SIZES = (32, 64, 128)  # what torchao's CPU int4 tensor accepts
_MARK = QUANTIZATION_MARK  # attribute set on a quantised model: its scheme (save_pretrained refuses int8 / int4 ones)
_DEVICES = {  # None: any
    "fp32": None, "bf16": None, "int8": ("cpu", "cuda"), "int4": ("cpu",), "int8-dynamic": ("cpu",),
    "spike-int8": ("cpu",),
}
_FUSED_INT8_K = 16  # aten._weight_int8pack_mm on CPU needs in_features % 16 == 0 (else wrong values or a crash)
SPIKE_OFFSET = 128  # signed counts c in [-128, 127] enter torch._int_mm as the uint8 c + 128 (= c ^ 0x80)
_INT32_MAX = 2**31 - 1
_FP32_EPS = torch.finfo(torch.float32).eps  # torchao's floor on a per-token scale
_HALF_RANGE = torch.tensor(127.5)  # torchao's symmetric int8 step: max|x| / 127.5
_OFFSET = torch.tensor(float(SPIKE_OFFSET))


def _torchao():
    """The torchao names used here, or ImportError naming the pip extra."""
    try:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import Int8WeightOnlyConfig, PerRow, quantize_
        from torchao.utils import TorchAOBaseTensor
    except ImportError as e:
        raise ImportError(
            f"int8/int4 quantisation needs torchao >= 0.18 (pip install 'spikegpt[deploy]'): {e}"
        ) from e
    return PrototypeInt4WeightOnlyConfig, Int8WeightOnlyConfig, PerRow, quantize_, TorchAOBaseTensor


def _is_torchao_tensor(t: Any) -> bool:
    try:
        from torchao.utils import TorchAOBaseTensor
    except ImportError:
        return False
    return isinstance(t, TorchAOBaseTensor)


class QuantizedLinear(nn.Linear):
    """An ``nn.Linear`` of a quantised model (a torchao weight, or a plain bf16 one), computing in ``compute_dtype``.

    Not built directly: :func:`quantize` and :func:`use_fused_kernels` turn a quantised ``nn.Linear`` into
    one (same parameters and state-dict keys, ``isinstance(m, nn.Linear)`` still holds). The input is cast to
    ``compute_dtype`` (None: left as is) and the output back to the input's dtype. An int8 per-channel weight on
    a CPU with bf16 compute runs ``aten._weight_int8pack_mm`` (fused dequantise-matmul, fp32 accumulation);
    a plain bf16 weight and a single input row on a CPU run ``torch.mv``; everything else ``F.linear``
    (torchao's own kernels for a torchao weight).

    A "spike-int8" layer (buffers ``spike_int8_scale`` (N,) fp32 and ``spike_int8_comp`` (N,) int32 or None)
    reads integer spike counts x (..., in) in any float dtype and returns ``s * (W_q x)`` (..., out) in x's dtype
    through ``torch._int_mm`` (see the module docstring for the contract on x and ``check_inputs``).
    """

    compute_dtype: torch.dtype | None = None
    spike_offset: int = 0  # "spike-int8": what is added to the counts to make them uint8 (0 or SPIKE_OFFSET)
    check_inputs: bool = False  # "spike-int8": check that every input is integers in range
    dynamic_int8: bool = False  # "int8-dynamic": the layer rounds its own input to int8, per row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        int_scale = self._buffers.get("spike_int8_scale")
        if int_scale is not None and x.device.type == "cpu":
            return self._dynamic_int8(x, int_scale) if self.dynamic_int8 else self._spike_int8(x, int_scale)
        dtype = x.dtype
        xc = x if self.compute_dtype is None else x.to(self.compute_dtype)
        scale = self._buffers.get("fused_int8_scale")
        if scale is not None and x.device.type == "cpu" and scale.dtype == xc.dtype:
            lead = xc.shape[:-1]
            y = torch.ops.aten._weight_int8pack_mm(xc.reshape(-1, self.in_features).contiguous(),
                                                   self.weight.qdata, scale)
            y = y.reshape(*lead, self.out_features)
            if self.bias is not None:
                y = y + self.bias.to(y.dtype)
        elif xc.numel() == self.in_features and xc.device.type == "cpu" and type(self.weight) is nn.Parameter \
                and xc.dtype == torch.bfloat16 and self.weight.dtype == xc.dtype:
            # one row of bf16: the matrix-vector kernel is ~1.5x faster than the matmul F.linear picks on a CPU
            y = torch.mv(self.weight, xc.reshape(-1)).reshape(*xc.shape[:-1], self.out_features)
            if self.bias is not None:
                y = y + self.bias
        else:
            y = F.linear(xc, self.weight, None if self.bias is None else self.bias.to(xc.dtype))
        return y.to(dtype)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input of shape {tuple(x.shape)} for in_features "
                             f"{self.in_features}")
        return x.reshape(-1, self.in_features)

    def _spike_int8(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``scale * (W_q x)`` for integer counts x (..., in)."""
        x2 = self._rows(x)
        off = self.spike_offset
        if self.check_inputs:
            self._check_counts(x2, off)
        # a fresh operand of row-major strides (see the module docstring); float -> int8 is exact for the counts, and
        # flipping the sign bit of an int8 c gives the uint8 c + 128 (one pass over bytes, not over floats)
        u = x2.to(torch.int8 if off else torch.uint8, memory_format=torch.contiguous_format)
        y = self._integer_product(u.view(torch.uint8).bitwise_xor_(SPIKE_OFFSET) if off else u, scale)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _dynamic_int8(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """"int8-dynamic": x (..., in) rounded per row (:func:`_round_rows`), then ``s_x * scale * (W_q q)``."""
        u, sx = _round_rows(self._rows(x))
        return self._output(self._integer_product(u, scale).mul_(sx), x)

    @staticmethod
    def forward_group(linears: list[nn.Linear], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[m(x) for m, x in zip(linears, xs)]``, the inputs xs of one shape (..., in) for Linear layers of one
        ``in_features``. For "int8-dynamic" layers on a CPU, with no hooks on them, the inputs' per-row rounding
        (:func:`_round_rows`, row by row, so the same function) runs once for all of them: a decode step is bound
        by its number of calls, and this saves a dozen per layer. Anything else is called layer by layer."""
        x0 = xs[0]
        # Under torch.compile the layer-by-layer rounding fuses anyway, and Inductor would hand torch._int_mm row
        # views of the shared rounded buffer with a 0 row stride, on which the CPU kernel gives wrong values.
        together = not torch.compiler.is_compiling() and x0.device.type == "cpu" and \
            x0.shape[-1] == linears[0].in_features and all(
            isinstance(m, QuantizedLinear) and m.dynamic_int8 and m.in_features == linears[0].in_features
            and not (m._forward_hooks or m._forward_pre_hooks) for m in linears
        ) and all(x.shape == x0.shape and x.dtype == x0.dtype for x in xs) and not _global_module_hooks()
        if not together:
            return [m(x) for m, x in zip(linears, xs)]
        u, sx = _round_rows(torch.stack(xs).view(-1, x0.shape[-1]))
        M = u.shape[0] // len(xs)
        return [m._output(m._integer_product(ui, m.spike_int8_scale).mul_(si), x)
                for m, x, ui, si in zip(linears, xs, u.split(M), sx.split(M))]

    def _output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The (M, out) fp32 product y as the layer's output for its input x (..., in): (..., out) in x's dtype."""
        if x.dim() != 2:
            y = y.view(*x.shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _integer_product(self, u: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``scale * (W_q (u - spike_offset))`` (M, N) fp32 for uint8 u (M, K) of row-major strides: exact int32 sums
        on ``torch._int_mm`` for one row and on oneDNN's quantised linear for more (see the module docstring)."""
        off = self.spike_offset
        # (not under torch.compile: Inductor takes oneDNN's packed weight only as a frozen constant)
        packed = self._onednn_weight() if u.shape[0] > 1 and not torch.compiler.is_compiling() else None
        if packed is not None:  # the offset and the scales inside oneDNN's kernel: fp32 out in one pass
            y = torch.ops.onednn.qlinear_pointwise(u, 1.0, off, packed, scale, self._zero_points(), None, 1.0, 0,
                                                   torch.float32, "none", [], "")
        else:
            rhs = self.__dict__.get("_int_mm_rhs")
            if rhs is None:  # the (K, N) transposed view of the int8 weight, kept (not copied or pickled)
                rhs = self.__dict__["_int_mm_rhs"] = self.weight.qdata.t()
            y = torch._int_mm(u, rhs)  # (M, N) int32, exact
            comp = self._buffers.get("spike_int8_comp")
            if comp is not None:
                y.sub_(comp)  # the offset's share, off * sum_k W_q[n, k], exactly in int32
            y = y.float().mul_(scale)  # the one rounding (exact int32 -> fp32 below 2^24); mixed-dtype mul is 3x slower
        if self.bias is not None:
            y = y + self.bias.float()
        return y

    def _onednn_weight(self) -> torch.Tensor | None:
        """The int8 weight prepacked for oneDNN's quantised linear (built on first use; not copied or pickled), or
        None where this PyTorch has no oneDNN (then ``torch._int_mm`` serves every M)."""
        packed = self.__dict__.get("_onednn_packed")
        if packed is None and _onednn_qlinear_available():
            packed = torch.ops.onednn.qlinear_prepack(self.weight.qdata, None)
            self.__dict__["_onednn_packed"] = packed
        return packed

    def _zero_points(self) -> torch.Tensor:
        zp = self.__dict__.get("_onednn_zero_points")
        if zp is None:
            zp = self.__dict__["_onednn_zero_points"] = torch.zeros(self.out_features, dtype=torch.int64)
        return zp

    def __getstate__(self):
        state = dict(super().__getstate__())
        for key in ("_onednn_packed", "_onednn_zero_points", "_int_mm_rhs"):  # rebuilt on first use
            state.pop(key, None)
        return state

    def _check_counts(self, x2: torch.Tensor, off: int) -> None:
        lo, hi = -off, 255 - off
        good = (x2 >= lo) & (x2 <= hi) & (x2 == torch.trunc(x2))
        if not bool(good.all()):
            raise ValueError(f"a spike-int8 Linear reads integer spike counts in [{lo}, {hi}]; its input holds "
                             f"{x2[~good][0].item()!r} (is the model spike-driven, config.spike_inputs other than "
                             "'none'?)")


def _round_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's symmetric per-token int8 rounding of x2 (M, K): ``s = max(max|x| / 127.5, fp32 eps)`` per row and
    ``q = clamp(round(x * (1 / s)), -128, 127)``, returned as the uint8 ``q + 128`` (M, K) of row-major strides (what
    the integer kernels read, with offset ``SPIKE_OFFSET``) and the (M, 1) fp32 ``s``. x2 in any float dtype (cast to
    fp32 first)."""
    if x2.dtype != torch.float32:
        x2 = x2.float()
    # (0-dim tensor operands: an in-place op with a Python number converts it first, two calls more at every layer)
    sx = x2.abs().amax(dim=-1, keepdim=True).div_(_HALF_RANGE).clamp_min_(_FP32_EPS)
    q = torch.mul(x2, sx.reciprocal()).round_().clamp_(-128, 127).add_(_OFFSET)  # integers: exact in fp32
    return q.to(torch.uint8, memory_format=torch.contiguous_format), sx


def _global_module_hooks() -> bool:
    """Whether global nn.Module forward hooks are registered (they must see every Linear call)."""
    from torch.nn.modules import module as m

    return bool(m._global_forward_hooks or m._global_forward_pre_hooks)


def _onednn_qlinear_available() -> bool:
    """Whether this PyTorch has oneDNN's quantised linear (x86 builds with MKLDNN)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.onednn.qlinear_pointwise  # noqa: B018 - raises where the op is not registered
        torch.ops.onednn.qlinear_prepack  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def _fused_int8_scale(module: nn.Linear, compute_dtype: torch.dtype | None) -> torch.Tensor | None:
    """The (N,) scales in ``compute_dtype`` when ``module`` can run ``aten._weight_int8pack_mm``, else None."""
    w = module.weight
    if compute_dtype != torch.bfloat16 or w.device.type != "cpu":
        return None  # (its fp16 and fp32 paths are slower than an fp32 matmul: torchao's own path then)
    qdata, scale = getattr(w, "qdata", None), getattr(w, "scale", None)
    if not isinstance(qdata, torch.Tensor) or qdata.dtype != torch.int8 or qdata.dim() != 2:
        return None
    if not isinstance(scale, torch.Tensor) or scale.numel() != qdata.shape[0]:
        return None  # per-tensor or per-group scales: torchao's own path
    if list(getattr(w, "block_size", [1, qdata.shape[1]])) != [1, qdata.shape[1]]:
        return None
    if getattr(w, "act_quant_kwargs", None) is not None or getattr(w, "act_pre_scale", None) is not None:
        return None  # dynamic activation quantisation or AWQ-style pre-scaling: not weight-only
    if qdata.shape[1] % _FUSED_INT8_K or not qdata.is_contiguous():
        return None
    return scale.detach().reshape(-1).to(compute_dtype).contiguous()


def _to_quantized_linear(module: nn.Linear, compute_dtype: torch.dtype | None) -> None:
    """Turn ``module`` (its weight already a torchao tensor) into a :class:`QuantizedLinear`, in place."""
    if type(module) is nn.Linear:
        module.__class__ = QuantizedLinear  # same parameters, hooks and attributes; a new forward
    if not isinstance(module, QuantizedLinear):
        return  # a Linear subclass of someone else's: left on torchao's own path
    module.compute_dtype = compute_dtype
    module.register_buffer("fused_int8_scale", _fused_int8_scale(module, compute_dtype), persistent=False)


def use_fused_kernels(model: nn.Module, compute_dtype: torch.dtype | None = torch.bfloat16) -> nn.Module:
    """Make every ``nn.Linear`` of ``model`` whose weight is a torchao tensor compute in ``compute_dtype``
    (casting input and output), with aten's fused int8 kernel on a CPU where it applies (see
    :class:`QuantizedLinear`). For a model loaded with ``quantization_config=TorchAoConfig(...)``, whose
    Linear layers otherwise run torchao's generic kernels in the model's dtype. An int4 weight keeps the dtype
    it was packed for (its scales), whatever ``compute_dtype`` says. Returns ``model`` (changed in place)."""
    n = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and _is_torchao_tensor(module.weight):
            cd = compute_dtype
            packed = getattr(module.weight, "scale_and_zero", None)  # int4: computes in its scales' dtype
            if isinstance(packed, torch.Tensor):
                cd = packed.dtype
            _to_quantized_linear(module, cd)
            n += 1
    if n == 0:
        logger.warning("use_fused_kernels: no Linear layer with a torchao weight in this model")
    return model


def quantization_scheme(model: nn.Module) -> str | None:
    """The scheme :func:`quantize` applied to ``model`` (one of ``SCHEMES``), or None."""
    return getattr(model, _MARK, None)


def _named_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    ref = emb.weight if emb is not None else next(model.parameters())
    return ref.device, ref.dtype


def _group_size_for(name: str, module: nn.Linear, group_size: int) -> int:
    if module.in_features % group_size:
        raise ValueError(
            f"int4 needs in_features divisible by the group size {group_size}; {name} has {module.in_features} "
            f"(pass group_size= one of {INT4_GROUP_SIZES} that divides it, or use 'int8')"
        )
    if module.out_features % 16:
        raise ValueError(f"int4 on a CPU needs out_features divisible by 16; {name} has {module.out_features} "
                         "(use 'int8')")
    return group_size


def quantize(
    model: nn.Module,
    scheme: str,
    *,
    quantize_head: bool = True,
    group_size: int | None = None,
    compute_dtype: torch.dtype | None = torch.bfloat16,
    check_inputs: bool = False,
) -> nn.Module:
    """Quantise a SpikeGPT model for inference, in place, and return it (see the module docstring).

    Args:
        model: a :class:`~spikegpt.SpikeGPTForCausalLM` (or :class:`~spikegpt.SpikeGPTModel`, or any module
            with ``nn.Linear`` layers), fp32 or bf16, not yet quantised. It is put in eval mode.
        scheme: "fp32" (fp32 weights stored transposed for CPU decoding; nothing rounded, no torchao needed),
            "bf16" (all weights and activations bf16; no torchao needed), "int8" (int8 weights, one
            scale per output channel), "int4" (int4 weights in groups of ``group_size`` inputs; the head int8)
            "int8-dynamic" (int8 weights as "int8", and each Linear rounds its input to int8 per token; exact
            integer products; CPU) or "spike-int8" (a spike-driven model, ``config.spike_inputs`` other than
            "none": the Linear layers that read spike counts get int8 weights, one scale per output channel, and
            compute the exact integer product of the counts; CPU).
        quantize_head: also quantise the head (``Linear(C -> V)``, 22% of the weights at the 216M shape and
            most of them in small models); False keeps it in the model's dtype. Ignored for "fp32" and "bf16".
        group_size: int4 group size, one of 32, 64, 128; must divide every block Linear's in_features. None
            (default): the largest of them that does (128 for the released shapes).
        compute_dtype: the dtype the int8/int4 Linear layers compute in (input cast in, output cast back);
            None: the model's dtype (torchao's kernels as they are). Ignored for "bf16", "int8-dynamic" and
            "spike-int8" (int32 sums, output in the model's dtype).
        check_inputs: "spike-int8" only: every quantised layer checks at each call that its input holds
            integers in range and raises ``ValueError`` otherwise (an extra pass over each input). False (default):
            the model's spike codes are trusted to give such counts (see the module docstring).

    Returns:
        ``model``, with :func:`quantization_scheme` giving ``scheme``.

    Raises:
        ValueError: an unknown scheme, a model already quantised, "fp32" for a model that is not fp32, a scheme
            this device does not run (int4,
            int8-dynamic and spike-int8 are CPU only; int8 CPU and CUDA), an fp64/fp16/meta model for the torchao
            schemes, an int4 group size that does not fit, "spike-int8" for a model whose ``config.spike_inputs``
            is "none" (or that has no config), or a layer whose width ``torch._int_mm`` cannot take (spike-int8,
            int8-dynamic).
        ImportError: a scheme other than fp32 and bf16 without torchao (``pip install 'spikegpt[deploy]'``).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantisation scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    done = quantization_scheme(model)
    if done is not None or any(_is_torchao_tensor(m.weight) for _, m in _named_linears(model)):
        raise ValueError(f"this model is already quantised ({done or 'torchao weights'}); quantise the original "
                         "model once")
    device, dtype = _model_device_dtype(model)
    allowed = _DEVICES[scheme]
    if device.type == "meta":
        raise ValueError("cannot quantise a model on the meta device (load its weights first)")
    if allowed is not None and device.type not in allowed:
        raise ValueError(f"scheme {scheme!r} is not supported on device {device.type!r} (it runs on "
                         f"{' and '.join(allowed)}); use 'bf16'" + (" or 'int8'" if scheme == "int4" else ""))
    if scheme == "spike-int8":
        spike_inputs = getattr(getattr(model, "config", None), "spike_inputs", None)
        if spike_inputs is None or parse_spike_inputs(spike_inputs)[0] == "none":
            raise ValueError(
                "scheme 'spike-int8' quantises a spike-driven model, whose Linear layers read integer spike counts "
                f"(config.spike_inputs other than 'none', e.g. 'int3'); this model has spike_inputs={spike_inputs!r} "
                "(use 'int8' for it)")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"spike-int8 quantises an fp32 or bf16 model; this one is {dtype}")
    model.eval()
    if scheme == "fp32":
        return _decode_layout(model, dtype)
    if scheme in ("spike-int8", "int8-dynamic"):
        if scheme == "int8-dynamic" and dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"int8-dynamic quantises an fp32 or bf16 model; this one is {dtype}")
        return _quantize_integer(model, scheme, dtype, quantize_head, check_inputs)
    if scheme == "bf16":
        model.to(torch.bfloat16)
        for _, m in _named_linears(model):
            _to_quantized_linear(m, None)  # plain bf16 weights; a single row runs the matrix-vector kernel
        setattr(model, _MARK, scheme)
        return model
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"{scheme} quantises an fp32 or bf16 model; this one is {dtype}")
    if compute_dtype is not None and not compute_dtype.is_floating_point:
        raise ValueError(f"compute_dtype must be a floating-point dtype or None, got {compute_dtype}")
    if scheme == "int4" and group_size is None:
        widths = {m.in_features for _, m in _named_linears(model)}
        fits = [g for g in INT4_GROUP_SIZES if all(w % g == 0 for w in widths)]
        if not fits:
            raise ValueError(f"int4 needs Linear in_features divisible by 32 at least; this model has {sorted(widths)} "
                             "(use 'int8')")
        group_size = max(fits)
    if scheme == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    Int4Config, Int8Config, PerRow, quantize_, _ = _torchao()

    linears = _named_linears(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    heads = {name for name, m in linears if m is head}
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is not None and emb is not None and head.weight is emb.weight:
        heads_tied = heads
        logger.warning("the head is tied to the embedding: it stays in %s", dtype)
    else:
        heads_tied = set()
    blocks = [(name, m) for name, m in linears if name not in heads]
    int8_names = set(heads - heads_tied if quantize_head else ())
    int4_names: set[str] = set()
    int4_dtype = compute_dtype or dtype
    if scheme == "int8":
        int8_names |= {name for name, _ in blocks}
    else:
        for name, m in blocks:
            _group_size_for(name, m, group_size)
        int4_names = {name for name, _ in blocks}
        if int4_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"int4 computes in fp32 or bf16, got compute_dtype={compute_dtype}")
        for _, m in blocks:  # the int4 kernel computes in the dtype of the weight it packs (its scales)
            m.weight.data = m.weight.data.to(int4_dtype)
    if int8_names:
        quantize_(model, Int8Config(granularity=PerRow()), filter_fn=lambda m, fqn: fqn in int8_names)
    if int4_names:
        quantize_(model, Int4Config(group_size=group_size), filter_fn=lambda m, fqn: fqn in int4_names)
    quantized = dict(linears)
    missed = [n for n in int8_names | int4_names if not _is_torchao_tensor(quantized[n].weight)]
    if missed:  # torchao skips a layer it cannot take rather than failing: say so
        raise ValueError(f"torchao did not quantise {', '.join(sorted(missed))}")
    for name in int8_names | int4_names:
        _to_quantized_linear(quantized[name], compute_dtype if name in int8_names else int4_dtype)
    setattr(model, _MARK, scheme)
    logger.info("quantised %d Linear layers to %s (%d int8, %d int4), compute dtype %s", len(int8_names | int4_names),
                scheme, len(int8_names), len(int4_names), compute_dtype or dtype)
    return model


def _decode_layout(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The "fp32" scheme of :func:`quantize` (model already checked and in eval mode): every Linear weight stored
    transposed, same shape and values."""
    if dtype != torch.float32:
        raise ValueError(f"'fp32' lays out the weights of an fp32 model; this one is {dtype} (use 'bf16' for bf16)")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    n = 0
    for name, m in _named_linears(model):
        w = m.weight
        if emb is not None and w is emb.weight:
            logger.info("fp32: %s is tied to the embedding and keeps its layout", name)
            continue
        if w.dim() == 2 and w.stride() != (1, w.shape[0]):
            w.data = w.data.t().contiguous().t()
            n += 1
    setattr(model, _MARK, "fp32")
    logger.info("fp32: %d Linear weights stored transposed for CPU decoding", n)
    return model


def _torchao_integer():
    """torchao's int8 x int8 configs and granularities, or ImportError naming the pip extra."""
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8StaticActivationInt8WeightConfig,
            PerRow,
            PerTensor,
            quantize_,
        )
    except ImportError as e:
        raise ImportError(f"spike-int8 / int8-dynamic quantisation needs torchao >= 0.18 (pip install "
                          f"'spikegpt[deploy]'): {e}") from e
    return Int8DynamicActivationInt8WeightConfig, Int8StaticActivationInt8WeightConfig, PerRow, PerTensor, quantize_


def spike_linears(model: nn.Module) -> dict[str, tuple[nn.Linear, int]]:
    """The Linear layers of ``model`` that read spike counts, by qualified name, each with the smallest count its
    spike code gives (0 for binary and LIF spikes, -K for ``int<K>``): the Linear named by each entry of a module's
    ``codes`` (:class:`~spikegpt.spike_coding.SpikeEncoder` s, as in the blocks' TimeMix and ChannelMix) and the
    ``head`` of a module with a ``head_code`` encoder (the language-model head)."""
    found: dict[str, tuple[nn.Linear, int]] = {}
    for prefix, module in model.named_modules():
        pre = f"{prefix}." if prefix else ""
        codes = getattr(module, "codes", None)
        if isinstance(codes, nn.ModuleDict):
            for name, enc in codes.items():
                linear = getattr(module, name, None)
                if isinstance(enc, SpikeEncoder) and isinstance(linear, nn.Linear):
                    found[pre + name] = (linear, enc.min_count)
        head_code, head = getattr(module, "head_code", None), getattr(module, "head", None)
        if isinstance(head_code, SpikeEncoder) and isinstance(head, nn.Linear):
            found[pre + "head"] = (head, head_code.min_count)
    return found


def _quantize_integer(model: nn.Module, scheme: str, dtype: torch.dtype, quantize_head: bool,
                      check_inputs: bool) -> nn.Module:
    """The "spike-int8" and "int8-dynamic" schemes of :func:`quantize` (model already checked and in eval mode):
    int8 weights, one scale per output channel, and an exact integer product of integer inputs (the spike counts
    the model's codes give, or the layer's own per-row int8 rounding of its input)."""
    DynamicConfig, StaticConfig, PerRow, PerTensor, quantize_ = _torchao_integer()
    dynamic = scheme == "int8-dynamic"
    if dynamic:  # every Linear layer; inputs of either sign
        found = {name: (m, -1) for name, m in _named_linears(model)}
    else:
        found = spike_linears(model)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = {}
    for name, (linear, min_count) in found.items():
        if linear is head and not quantize_head:
            continue
        if linear is head and emb is not None and linear.weight is emb.weight:
            logger.warning("the head is tied to the embedding: it stays in %s", dtype)
            continue
        if linear.in_features < 2 or 255 * 127 * linear.in_features > _INT32_MAX:
            raise ValueError(f"{scheme} needs 2 <= in_features <= {_INT32_MAX // (255 * 127)} (torch._int_mm on a "
                             f"CPU gives wrong values for 1, and int32 sums could overflow above); {name} has "
                             f"{linear.in_features}")
        if type(linear) is not nn.Linear:
            raise ValueError(f"{scheme} quantises plain nn.Linear layers; {name} is a {type(linear).__name__}")
        targets[name] = (linear, min_count)
    if not targets:
        raise ValueError(f"{scheme} found no Linear layer " + ("" if dynamic else "reading spike counts ")
                         + "to quantise in this model")
    others = [n for n, m in _named_linears(model) if n not in found]
    if others:
        logger.info("spike-int8 leaves %d Linear layers that read no spike counts in %s: %s", len(others), dtype,
                    ", ".join(others[:8]))
    if dynamic:  # torchao's W8A8: its own linear computes the same function (per-token symmetric activations)
        config = DynamicConfig(granularity=PerRow(), set_inductor_config=False)
    else:  # a static activation scale of 1: torchao's own linear then computes the integer product of integer inputs
        config = StaticConfig(act_quant_scale=torch.ones(1, 1, 1), granularity=[PerTensor(), PerRow()],
                              set_inductor_config=False)
    quantize_(model, config, filter_fn=lambda m, fqn: fqn in targets)
    missed = [n for n, (m, _) in targets.items() if not _is_torchao_tensor(m.weight)]
    if missed:
        raise ValueError(f"torchao did not quantise {', '.join(sorted(missed))}")
    for name, (linear, min_count) in targets.items():
        w = linear.weight
        if w.qdata.dtype != torch.int8 or tuple(w.qdata.shape) != (linear.out_features, linear.in_features) \
                or w.scale.numel() != linear.out_features or not w.qdata.is_contiguous():
            raise ValueError(f"torchao gave {name} an int8 weight of an unexpected layout (qdata "
                             f"{tuple(w.qdata.shape)} {w.qdata.dtype}, scale {tuple(w.scale.shape)})")
        linear.__class__ = QuantizedLinear
        linear.compute_dtype = None
        linear.register_buffer("fused_int8_scale", None, persistent=False)
        off = SPIKE_OFFSET if min_count < 0 else 0
        linear.spike_offset = off
        linear.check_inputs = bool(check_inputs) and not dynamic
        linear.dynamic_int8 = dynamic
        linear.register_buffer("spike_int8_scale", w.scale.detach().reshape(-1).float().contiguous(), persistent=False)
        comp = off * w.qdata.sum(dim=1, dtype=torch.int32) if off else None
        linear.register_buffer("spike_int8_comp", comp, persistent=False)
    setattr(model, _MARK, scheme)
    logger.info("quantised %d Linear layers to %s (uint8 x int8 integer products)", len(targets), scheme)
    return model


def torchao_config(scheme: str, *, group_size: int = 128):
    """A ``transformers.TorchAoConfig`` for ``from_pretrained(..., quantization_config=...)`` close to
    ``scheme`` ("int8" or "int4"): the block Linear layers as :func:`quantize` does them; transformers leaves the
    head and the embedding in the checkpoint's dtype. The model then runs torchao's kernels in its own dtype;
    :func:`use_fused_kernels` switches int8 layers to the fused bf16 CPU kernel."""
    if scheme not in ("int8", "int4"):
        raise ValueError(f"torchao_config takes 'int8' or 'int4' (bf16 needs no quantizer: pass "
                         f"dtype=torch.bfloat16), got {scheme!r}")
    Int4Config, Int8Config, PerRow, _, _ = _torchao()
    from transformers import TorchAoConfig

    quant = Int8Config(granularity=PerRow()) if scheme == "int8" else Int4Config(group_size=group_size)
    return TorchAoConfig(quant_type=quant)
