"""SpikeGPT as Hugging Face model classes.

The forward pass, as trained (B batch, T tokens, C width, L layers, V vocabulary):

    x = H(E[idx])                                   binary embedding (ATan surrogate backward)
    for l in 0..L-1:
        if l == 0: x = LN0(x)
        x = x + LIF_a( TimeMix_l( LN1_l(x) ) )      spikes from the attention branch
        x = x + LIF_f( ChannelMix_l( LN2_l(x) ) )   spikes from the FFN branch
        x = Dropout(x)
    logits = Head( LNout(x) )

With ``config.spiking = False`` the embedding is used as is and the LIFs are identities: RWKV-4.

Spike-driven products (``config.spike_inputs`` other than ``"none"``): every Linear layer above (the seven of
each block and the head) reads a spike code of its input instead of the input itself, ``W x -> vth * (W c)``
with integer counts ``c`` and one scale ``vth`` per token (:mod:`spikegpt.spike_coding`). The codes are taken
after the token-shift mixes, so each projection reads exactly one count vector.
The same code runs in parallel mode (a whole sequence, as in training) and in recurrent mode (pass
``state=`` and feed one token at a time); both give the same logits. ``attention_mask == 0`` marks
padding, where every part of the state is held, so padded rows give what they give alone.

Chunked prefill: a forward without autograd over T > ``prefill_chunk_size`` tokens (config field, or the
``prefill_chunk_size=`` argument of ``forward`` and ``generate``; default 1024) runs the same stack on
chunks ``[s, s + n)`` of that many tokens, each continuing the previous chunk's state; the outputs are put
back together ((B, T, C) hidden states, (B, T or k, V) logits, the state after the last token). This is the
recurrent mode with n tokens per step, so it equals one call (to rounding; 1e-9 in float64). With
``logits_to_keep=k`` the head runs on the last k positions only and no earlier chunk's per-token output is
kept: the working memory is that of one chunk, whatever T (``generate()``'s prefill). Forwards that record
gradients are never chunked (training keeps the one parallel call).

``generate(input_ids, state=S)`` continues S: the prompt ``input_ids`` is read starting from S, then one
token per step, so it equals ``generate`` on the earlier text followed by the prompt.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import numbers
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput

from spikegpt.configuration_spikegpt import SpikeGPTConfig
from spikegpt.kernels import lif, wkv
from spikegpt.kernels.surrogate import heaviside
from spikegpt.recording import SpikeSite
from spikegpt.remote_code import AUTO_MAP, write_remote_code
from spikegpt.spike_coding import SpikeEncoder, parse_spike_inputs, spike_linear
from spikegpt.state import SpikeGPTState

logger = logging.getLogger(__name__)

try:  # transformers >= 5: init functions that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    init = nn.init


def token_shift(
    z: torch.Tensor, last: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``shift(z)_t = z_{t-1}``, starting from ``last``; padding is skipped over.

    z: (B, T, C); last: (B, C), the previous segment's last real input (zeros when fresh);
    mask: (B, T) bool or None. Returns the shifted (B, T, C) and the new ``last`` (B, C).
    """
    if mask is None:
        if z.shape[1] == 1:  # the generation step: no copy
            return last[:, None], z[:, 0]
        return torch.cat([last[:, None], z[:, :-1]], dim=1), z[:, -1]
    B, T, C = z.shape
    src = torch.cat([last[:, None], z], dim=1)  # position 0 is the carried input
    pos = torch.arange(1, T + 1, device=z.device)
    upto = torch.where(mask, pos, 0).cummax(dim=1).values  # last real position <= t, in src coordinates
    prev = torch.cat([upto.new_zeros(B, 1), upto[:, :-1]], dim=1)  # last real position < t
    zz = src.gather(1, prev[..., None].expand(B, T, C))
    return zz, src[torch.arange(B, device=z.device), upto[:, -1]]


def mix(zz: torch.Tensor, dz: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Token-shift interpolation ``z * mu + zz * (1 - mu)``, computed as ``zz + (z - zz) * mu`` with
    ``dz = z - zz`` shared by all the mixes of a block (one fused op each)."""
    return torch.addcmul(zz, dz, mu)


def spike_codes(config, widths: dict[str, int]) -> nn.ModuleDict | None:
    """One :class:`SpikeEncoder` per Linear input named in ``widths`` (name -> input width), or None when
    ``config.spike_inputs`` is ``"none"``."""
    if parse_spike_inputs(config.spike_inputs)[0] == "none":
        return None
    return nn.ModuleDict({name: SpikeEncoder(config, w) for name, w in widths.items()})


class _Projections(nn.Module):
    """Shared by TimeMix and ChannelMix: ``read`` applies one of the module's Linear layers to its input, or,
    spike-driven, to the input's spike code (``vth * (W c)``; see :mod:`spikegpt.spike_coding`)."""

    codes: nn.ModuleDict | None

    def read(self, name: str, x: torch.Tensor, mems: dict | None, mask: torch.Tensor | None) -> torch.Tensor:
        """``Linear_name(x)`` for x (B, T, in); ``mems``: the LIF codes' (B, in) membranes by Linear name (updated
        in place), or None for stateless codes."""
        linear = getattr(self, name)
        if self.codes is None:
            return linear(x)
        code = self.codes[name](x, None if mems is None else mems[name], mask)
        if mems is not None:
            mems[name] = code[2]
        return spike_linear(linear, code)

    def read_group(self, names: tuple[str, ...], xs: list[torch.Tensor], mems: dict | None,
                   mask: torch.Tensor | None) -> list[torch.Tensor]:
        """``[read(name, x) for name, x in zip(names, xs)]`` for Linear layers of one input width. Without spike
        codes, layers of a class with a ``forward_group(linears, xs)`` static method (the int8-dynamic layers of
        :mod:`spikegpt.interop.quantization`, which then round all their inputs in one pass) take them together."""
        linears = [getattr(self, n) for n in names]
        group = getattr(type(linears[0]), "forward_group", None)
        if self.codes is None and group is not None:
            return group(linears, xs)
        return [self.read(n, x, mems, mask) for n, x in zip(names, xs)]

    def split_mems(self, enc_mem: torch.Tensor | None) -> dict | None:
        """This module's encoder membranes (B, sum of widths) as a dict of (B, width) by Linear name."""
        if enc_mem is None:
            return None
        return dict(zip(self.codes, enc_mem.split([c.width for c in self.codes.values()], dim=-1)))


class TimeMix(_Projections):
    """Spiking RWKV-4 attention (before its LIF):

        xk, xv, xr = mix(z, shift(z), mu_k / mu_v / mu_r)
        k, v, r = Wk xk, Wv xv, Wr xr
        y = Wo( sigmoid(r) * WKV(-exp(time_decay), time_first, k, v) )

    Spike-driven (``codes``), each ``W x`` reads the spike code of x (see :meth:`_Projections.read`).
    """

    def __init__(self, config: SpikeGPTConfig, layer_id: int):
        super().__init__()
        C = config.hidden_size
        self.layer_id = layer_id
        self.time_decay = nn.Parameter(torch.zeros(C))
        self.time_first = nn.Parameter(torch.zeros(C))
        self.time_mix_k = nn.Parameter(torch.ones(C))
        self.time_mix_v = nn.Parameter(torch.ones(C))
        self.time_mix_r = nn.Parameter(torch.ones(C))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.output.feeds_lif = True
        self.codes = spike_codes(config, {"key": C, "value": C, "receptance": C, "output": C})
        self.backend = config.kernel_backend

    def forward(self, z, shift, wkv_state, mask, enc_mem=None):
        """z: (B, T, C) normalised input; shift: (B, C); wkv_state: (num, den, max); enc_mem: (B, 4C) membranes of
        the LIF spike codes or None. Returns (y, shift, wkv_state, enc_mem)."""
        mems = self.split_mems(enc_mem)
        zz, shift = token_shift(z, shift, mask)
        dz = z - zz
        k, v, r = self.read_group(("key", "value", "receptance"), [
            mix(zz, dz, self.time_mix_k), mix(zz, dz, self.time_mix_v), mix(zz, dz, self.time_mix_r)], mems, mask)
        y, wkv_state = wkv(self.time_decay, self.time_first, k, v, wkv_state, mask=mask, backend=self.backend)
        y = self.read("output", torch.sigmoid(r) * y, mems, mask)
        return y, shift, wkv_state, None if mems is None else torch.cat(list(mems.values()), dim=-1)


class _ReluSquare(torch.autograd.Function):
    """``relu(x)^2`` keeping only ``relu(x)`` for the backward (``2 relu(x) g``)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (r,) = ctx.saved_tensors
        return torch.mul(g, r).mul_(2.0)


def relu_square(x: torch.Tensor) -> torch.Tensor:
    """``relu(x) ** 2``, the squared-ReLU of RWKV-4's channel mix."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.relu(x).square_()  # inference: no autograd bookkeeping
    return _ReluSquare.apply(x)


class ChannelMix(_Projections):
    """Spiking receptance FFN (before its LIF): ``y = sigmoid(Wr xr) * Wv relu(Wk xk)^2``; spike-driven, each
    ``W x`` reads the spike code of x."""

    def __init__(self, config: SpikeGPTConfig, layer_id: int):
        super().__init__()
        C, Fw = config.hidden_size, config.intermediate_size
        self.layer_id = layer_id
        self.time_mix_k = nn.Parameter(torch.ones(C))
        self.time_mix_r = nn.Parameter(torch.ones(C))
        self.key = nn.Linear(C, Fw, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(Fw, C, bias=False)
        self.value.feeds_lif = True
        self.codes = spike_codes(config, {"key": C, "receptance": C, "value": Fw})

    def forward(self, z, shift, mask, enc_mem=None):
        """z: (B, T, C) normalised input; shift: (B, C); enc_mem: (B, 2C + F) membranes of the LIF spike codes or
        None. Returns (y, shift, enc_mem)."""
        mems = self.split_mems(enc_mem)
        zz, shift = token_shift(z, shift, mask)
        dz = z - zz
        k, r = self.read_group(("key", "receptance"), [mix(zz, dz, self.time_mix_k), mix(zz, dz, self.time_mix_r)],
                               mems, mask)
        y = torch.sigmoid(r) * self.read("value", relu_square(k), mems, mask)
        return y, shift, None if mems is None else torch.cat(list(mems.values()), dim=-1)


class BinaryEmbedding(SpikeSite, nn.Module):
    """``H(E[idx])``: the embedding's spikes (Heaviside forward, surrogate backward); the identity when
    spiking is off. Parameter-free: the table itself is ``SpikeGPTModel.emb``."""

    def __init__(self, config: SpikeGPTConfig):
        super().__init__()
        self.spiking = config.spiking
        self.surrogate, self.alpha = config.surrogate, config.surrogate_alpha

    def forward(self, e: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """e: (B, T, C) embedding rows; mask: (B, T) bool or None. Returns spikes (B, T, C) in e's dtype, 0 at
        padding (padding carries nothing)."""
        x = heaviside(e, self.surrogate, self.alpha) if self.spiking else e
        return x if mask is None else x * mask[..., None].to(x.dtype)


class LIF(SpikeSite, nn.Module):
    """Multi-step LIF neuron on a branch output (the ``lif`` op); the identity when spiking is off."""

    def __init__(self, config: SpikeGPTConfig):
        super().__init__()
        self.spiking = config.spiking
        self.kwargs = dict(
            tau=config.tau, threshold=config.threshold, v_reset=config.v_reset,
            detach_reset=config.detach_reset, surrogate=config.surrogate, alpha=config.surrogate_alpha,
            backend=config.kernel_backend,
        )

    def forward(self, x, mem, mask):
        """x: (B, T, C); mem: (B, C) membrane; mask: (B, T) bool or None. Returns (spikes, membrane)."""
        if not self.spiking:
            return x, mem
        return lif(x, mem, mask=mask, **self.kwargs)


class SpikeGPTBlock(GradientCheckpointingLayer):
    """One block: ``x += LIF_a(TimeMix(LN1 x)); x += LIF_f(ChannelMix(LN2 x))`` (LN0 first in block 0)."""

    def __init__(self, config: SpikeGPTConfig, layer_id: int):
        super().__init__()
        C, eps = config.hidden_size, config.layer_norm_epsilon
        self.layer_id = layer_id
        self.ln0 = nn.LayerNorm(C, eps=eps) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config, layer_id)
        self.att_lif = LIF(config)
        self.ffn_lif = LIF(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, att_shift, ffn_shift, num, den, mx, att_mem, ffn_mem, enc_mem=None, mask=None):
        """x: (B, T, C); the seven (B, C) state tensors of this layer and the (B, 6C + F) membranes of its LIF
        spike codes (None without). Returns x and the new eight, flat."""
        if self.ln0 is not None:
            x = self.ln0(x)
        att_enc, ffn_enc = (None, None) if enc_mem is None else enc_mem.split(
            [4 * x.shape[-1], enc_mem.shape[-1] - 4 * x.shape[-1]], dim=-1)
        a, att_shift, (num, den, mx), att_enc = self.att(self.ln1(x), att_shift, (num, den, mx), mask, att_enc)
        a, att_mem = self.att_lif(a, att_mem, mask)
        x = x + a
        f, ffn_shift, ffn_enc = self.ffn(self.ln2(x), ffn_shift, mask, ffn_enc)
        f, ffn_mem = self.ffn_lif(f, ffn_mem, mask)
        x = x + f
        if self.training:  # (Dropout is the identity in eval mode)
            x = self.drop(x)
        enc_mem = None if enc_mem is None else torch.cat([att_enc, ffn_enc], dim=-1)
        return x, att_shift, ffn_shift, num, den, mx, att_mem, ffn_mem, enc_mem


def _replace(out: ModelOutput, **changes) -> ModelOutput:
    """A copy of ``out`` with some fields changed (setting a ModelOutput field to None in place leaves the
    old value in its mapping view)."""
    values = {f.name: getattr(out, f.name) for f in fields(out)}
    values.update(changes)
    return type(out)(**values)


@dataclass
class SpikeGPTOutput(ModelOutput):
    """Base-model output. ``last_hidden_state`` (B, T, C) is after LNout; ``hidden_states`` has L + 1
    entries: the binary embedding (before LN0), then the residual stream after each block."""

    last_hidden_state: torch.Tensor | None = None
    state: SpikeGPTState | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class SpikeGPTCausalLMOutput(ModelOutput):
    """Causal-LM output: ``loss`` (when labels are given), ``logits`` (B, T, V), ``state``, ``hidden_states``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    state: SpikeGPTState | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


LIF_INPUT_GAIN = 4.0  # init gain of the projections that feed a LIF (see _init_weights)
# Attribute that ``spikegpt.interop.quantization.quantize`` sets on a model: its scheme ("bf16", "int8", ...).
QUANTIZATION_MARK = "_spikegpt_quantization"

# Keyword arguments that Hugging Face callers (generate, pipelines, Trainer) pass to every model and that
# mean nothing to a recurrent model without positions: accepted and ignored. Anything else is an error.
_IGNORED_KWARGS = frozenset({"position_ids", "cache_position", "token_type_ids", "output_attentions"})


def check_model_kwargs(kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - _IGNORED_KWARGS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown} for a SpikeGPT model")
    if kwargs.get("output_attentions"):
        raise ValueError("SpikeGPT has no attention weights to output (output_attentions=True)")


class SpikeGPTPreTrainedModel(PreTrainedModel):
    config_class = SpikeGPTConfig
    base_model_prefix = "model"
    _no_split_modules = ["SpikeGPTBlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True

    def __init__(self, config: SpikeGPTConfig, *args, **kwargs):
        config.validate()  # also catches fields changed after the config was built
        super().__init__(config, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        """``PreTrainedModel.from_pretrained``, refusing a checkpoint that does not fit.

        With ``strict=True`` (default) missing keys or shapes that differ from the config raise ``ValueError``
        naming them, instead of HF's silent re-initialisation. The one exception is a checkpoint saved from
        another SpikeGPT class (its ``config.json`` ``architectures``), e.g. a ``SpikeGPTModel`` loaded into
        ``SpikeGPTForCausalLM``: this class's own head is then initialised and listed in ``missing_keys`` of
        ``output_loading_info=True``. A local directory without ``config.json`` (and no ``config=``), or a
        weights file that cannot be read, raises an error naming the file.
        """
        want_info = kwargs.pop("output_loading_info", False)
        user_ignores = kwargs.pop("ignore_mismatched_sizes", False)
        local = Path(os.fspath(pretrained_model_name_or_path)) if isinstance(
            pretrained_model_name_or_path, (str, os.PathLike)) else None
        if local is not None and local.is_dir() and kwargs.get("config") is None:
            if not (local / "config.json").is_file():
                raise FileNotFoundError(f"{local / 'config.json'} not found: {local} is not a saved model directory")
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
        except Exception as e:
            weights = sorted(local.glob("*.safetensors")) if local is not None and local.is_dir() else []
            if weights and "safetensor" in f"{type(e).__module__} {type(e).__name__} {e}".lower():
                names = ", ".join(str(w) for w in weights)
                raise ValueError(f"cannot read the weights in {names} (truncated or corrupt?): {e}") from e
            raise
        if strict:
            _refuse_misfit(cls, model, info, user_ignores)
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` (safetensors), plus the model code as ``spikegpt_remote.py`` and an
        ``auto_map`` in ``config.json``, so the directory also loads with ``trust_remote_code=True`` where
        spikegpt is not installed (see :mod:`spikegpt.remote_code`).

        A model quantised in memory to int8 / int4 / int8-dynamic / spike-int8
        (``spikegpt.interop.quantization.quantize``; its weights are torchao tensors) is for inference and is refused
        with a ``ValueError`` before anything is written: save the float model and quantise after loading (bf16 models
        save as usual, and so do fp32 models laid out for CPU decoding)."""
        scheme = getattr(self, QUANTIZATION_MARK, None)
        if scheme not in (None, "fp32", "bf16"):
            raise ValueError(
                f"a model quantised with {scheme!r} is for inference and is not saved (its weights are torchao tensors "
                "that safetensors does not write): save the fp32 model and quantise it after loading, "
                f"quantize(SpikeGPTForCausalLM.from_pretrained(path), {scheme!r})")
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)
            self.config.auto_map = dict(AUTO_MAP)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """Initialisation (RWKV-4's for the time parameters; unit-gain Linear layers; see ``docs/model.md``).

        - time_decay / time_first / time_mix: RWKV-4's layer- and channel-dependent ramps.
        - Linear layers inside the blocks: N(0, 1/fan_in); the two that feed a LIF (att.output, ffn.value)
          get gain ``LIF_INPUT_GAIN`` when spiking, so that the neurons fire at the start of training.
        - Embedding: U(-1e-4, 1e-4), RWKV-4's small init.
        - Head: N(0, (0.5 / sqrt(C))^2); LayerNorms: weight 1, bias 0.
        - Spike codes (``spike_inputs``): threshold gain ``initial_gain(config)``.
        """
        cfg = self.config
        if isinstance(module, TimeMix):
            L, C, l = cfg.num_hidden_layers, cfg.hidden_size, module.layer_id
            r01 = l / max(L - 1, 1)
            r10 = 1.0 - l / L
            h = torch.arange(C, dtype=torch.float64)
            ramp = h / C
            decay = -5 + 8 * (h / max(C - 1, 1)) ** (0.7 + 1.3 * r01)
            zigzag = ((h + 1) % 3 - 1) * 0.5
            with torch.no_grad():
                init.copy_(module.time_decay, decay.to(module.time_decay.dtype))
                init.copy_(module.time_first, (math.log(0.3) + zigzag).to(module.time_first.dtype))
                init.copy_(module.time_mix_k, (ramp**r10).to(module.time_mix_k.dtype))
                init.copy_(module.time_mix_v, (ramp**r10 + 0.3 * r01).to(module.time_mix_v.dtype))
                init.copy_(module.time_mix_r, (ramp ** (0.5 * r10)).to(module.time_mix_r.dtype))
        elif isinstance(module, ChannelMix):
            r10 = 1.0 - module.layer_id / cfg.num_hidden_layers
            ramp = torch.arange(cfg.hidden_size, dtype=torch.float64) / cfg.hidden_size
            with torch.no_grad():
                init.copy_(module.time_mix_k, (ramp**r10).to(module.time_mix_k.dtype))
                init.copy_(module.time_mix_r, (ramp**r10).to(module.time_mix_r.dtype))
        elif isinstance(module, nn.Linear):
            if module.weight.shape[0] == cfg.vocab_size and module is getattr(self, "head", None):
                init.normal_(module.weight, mean=0.0, std=0.5 / math.sqrt(cfg.hidden_size))
            else:
                gain = LIF_INPUT_GAIN if cfg.spiking and getattr(module, "feeds_lif", False) else 1.0
                init.normal_(module.weight, mean=0.0, std=gain / math.sqrt(module.weight.shape[1]))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.uniform_(module.weight, -1e-4, 1e-4)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SpikeEncoder):
            init.constant_(module.gain, module.initial_gain)

    # --- batch invariance: every row computed as if alone ---

    def _rows_to_split(self, input_ids, inputs_embeds, attention_mask, state) -> torch.Tensor | None:
        """With ``config.batch_invariant``, a call with several rows or padding runs row by row: returns its
        (B, T) bool mask of real tokens (inputs, mask and state checked); None means one batched call."""
        if not self.config.batch_invariant or torch.compiler.is_compiling():
            return None
        B, T = validate_inputs(input_ids, inputs_embeds, self.config)
        emb = self.get_input_embeddings().weight
        if state is not None:
            if not isinstance(state, SpikeGPTState):
                raise ValueError(f"state must be a SpikeGPTState, got {type(state).__name__}")
            state.validate(self.config, B, dtype=emb.dtype, device=emb.device)
        mask = real_token_mask(attention_mask, B, T, state is not None)
        if (B == 1 and mask is None) or (mask is not None and not bool(mask.any())):
            return None  # one row alone, or nothing real at all (every state is held): one batched call
        return torch.ones(B, T, dtype=torch.bool, device=emb.device) if mask is None else mask

    def _rowwise(self, input_ids, inputs_embeds, mask, state, **kwargs):
        """``self.forward`` on each batch row alone (its real tokens only, batch size 1), outputs put back in
        place: every row gets exactly, bit for bit, what it gets alone (``config.batch_invariant``; one
        forward per row, see ``docs/batch_invariance.md``). Padded positions of the outputs are 0."""
        x = input_ids if input_ids is not None else inputs_embeds
        B, T = x.shape[:2]
        keep = kwargs.get("logits_to_keep", 0) or 0
        rows, states = [], []
        for b in range(B):
            real = mask[b].nonzero().flatten()
            row_state = None if state is None else state.index_select(torch.tensor([b]))
            if real.numel() == 0:  # all padding: nothing changes
                rows.append((real, None))
                states.append(row_state)
                continue
            out = self(
                input_ids=None if input_ids is None else input_ids[b : b + 1, real],
                inputs_embeds=None if inputs_embeds is None else inputs_embeds[b : b + 1, real],
                state=row_state, use_cache=True, return_dict=True, **kwargs,
            )
            rows.append((real, out))
            states.append(out.state)
        return _merge_rows(rows, states, B, T, keep, x.device)


def _merge_rows(rows, states, B, T, keep, device):
    """Assemble per-row outputs of ``_rowwise`` into one batch output (zeros at padded positions)."""
    template = next(out for _, out in rows if out is not None)
    merged = {}
    for name, value in template.items():
        if name == "state":
            continue
        if name == "hidden_states":
            merged[name] = tuple(_place(rows, lambda o, i=i: o.hidden_states[i], B, T, 0, device)
                                 for i in range(len(value)))
        elif name in ("logits", "last_hidden_state") and value.dim() == 3:
            merged[name] = _place(rows, lambda o, n=name: o[n], B, T, keep if name == "logits" else 0, device)
        else:  # one value per row (a classifier's logits)
            merged[name] = torch.cat([o[name] if o is not None else torch.zeros_like(value) for _, o in rows])
    if template.get("state") is not None:
        merged["state"] = SpikeGPTState.cat(states)
    return type(template)(**merged)


def _place(rows, get, B, T, keep, device):
    """(B, T or keep, ...) tensor with each row's (1, n_b or <= keep, ...) values at its real positions."""
    first = next(get(o) for _, o in rows if o is not None)
    width = keep if keep else T
    out = first.new_zeros(B, width, *first.shape[2:])
    for b, (real, o) in enumerate(rows):
        if o is None:
            continue
        vals = get(o)[0]
        pos = real[-vals.shape[0]:]  # the row's last real positions (all of them when nothing was dropped)
        if keep:
            inside = pos >= T - keep
            out[b, (pos[inside] - (T - keep)).to(device)] = vals[inside]
        else:
            out[b, pos.to(device)] = vals
    return out


def _refuse_misfit(cls, model, info, user_ignores: bool) -> None:
    problems = []
    mismatched = [] if user_ignores else sorted(info.get("mismatched_keys", []), key=str)
    if mismatched:
        shown = ", ".join(f"{m[0]} (checkpoint {tuple(m[1])}, model {tuple(m[2])})" for m in mismatched[:8])
        problems.append(f"{len(mismatched)} checkpoint tensors have the wrong shape: {shown}")
    saved_as = getattr(model.config, "architectures", None) or []
    other_class = bool(saved_as) and cls.__name__ not in saved_as
    prefix = cls.base_model_prefix + "."
    own_head = other_class and cls is not model.base_model.__class__
    missing = sorted(k for k in info.get("missing_keys", []) if not (own_head and not k.startswith(prefix)))
    # A checkpoint without spike codes loaded with spike_inputs set (converting a model into a spike-driven one):
    # the codes' gains start at their init. Only when the checkpoint has none of them; some missing is an error.
    gains = {f"{n}.gain" for n, m in model.named_modules() if isinstance(m, SpikeEncoder)}
    if gains and gains <= set(missing):
        missing = [k for k in missing if k not in gains]
        logger.info("the checkpoint has no spike codes: %d input codes (spike_inputs=%r) start at their init",
                    len(gains), model.config.spike_inputs)
    if missing:
        problems.append(f"{len(missing)} keys are missing from the checkpoint: {', '.join(missing[:8])}")
    if problems:
        raise ValueError("cannot load this checkpoint into " + cls.__name__ + ": " + "; ".join(problems))


def _validate_input_ids(input_ids, vocab_size: int) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must have shape (batch, seq_len), got rank {input_ids.dim()} shape {tuple(input_ids.shape)}"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor (torch.long), got {input_ids.dtype}")
    if input_ids.numel() == 0:
        return  # the caller reports the empty dimension
    if torch.compiler.is_compiling():
        # Reading min/max back to the host would break a compiled graph; there the embedding's own index
        # check reports an out-of-range id instead.
        return
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids contains token id {bad}, outside the vocabulary [0, {vocab_size})")


def validate_inputs(input_ids, inputs_embeds, config) -> tuple[int, int]:
    """Exactly one of ``input_ids`` (B, T) / ``inputs_embeds`` (B, T, C), both sizes >= 1; returns (B, T)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        _validate_input_ids(input_ids, config.vocab_size)
        B, T = input_ids.shape
    else:
        C = config.hidden_size
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3 or inputs_embeds.shape[2] != C:
            got = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, torch.Tensor) else type(inputs_embeds)
            raise ValueError(f"inputs_embeds must be a (batch, seq_len, {C}) tensor, got {got}")
        if not inputs_embeds.is_floating_point():
            raise ValueError(f"inputs_embeds must be floating point, got {inputs_embeds.dtype}")
        B, T = inputs_embeds.shape[:2]
    if B == 0:
        raise ValueError("the batch is empty (batch size 0)")
    if T == 0:
        raise ValueError("the input is empty (seq_len = 0)")
    return B, T


def prefill_chunk(config, requested, T: int) -> int:
    """Tokens per chunk for a forward over T tokens, or 0 for one parallel call.

    ``requested``: the ``prefill_chunk_size`` argument of the call (None: ``config.prefill_chunk_size``; 0: no
    chunking). Chunks are used only when T exceeds the size, autograd is off (with gradients chunking saves
    nothing and would slow training) and the call is not being compiled (a compiled graph would unroll one
    copy of the model per chunk). ``ValueError`` for a ``requested`` that is not None or an integer >= 0.
    """
    if requested is not None and (not isinstance(requested, numbers.Integral) or isinstance(requested, bool)
                                  or requested < 0):
        raise ValueError(f"prefill_chunk_size must be None (the config's) or an integer >= 0 (0: never chunk), "
                         f"got {requested!r}")
    size = config.prefill_chunk_size if requested is None else requested
    if not size or T <= size or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return 0
    return int(size)


def _sequence_length(input_ids, inputs_embeds) -> int:
    """T of the inputs without checking them (0 when they are not tensors of rank >= 2)."""
    x = input_ids if input_ids is not None else inputs_embeds
    return x.shape[1] if isinstance(x, torch.Tensor) and x.dim() >= 2 else 0


def _chunks(T: int, size: int):
    """The slices ``[s, s + size)`` covering ``range(T)``."""
    return [slice(s, min(s + size, T)) for s in range(0, T, size)]


def _cols(x, part: slice):
    """``x[:, part]``, or None for None."""
    return None if x is None else x[:, part]


def real_token_mask(attention_mask, B: int, T: int, has_state: bool) -> torch.Tensor | None:
    """The (B, T) bool mask of real tokens, or None when every token is real.

    With a ``state``, a mask covering the past and the new tokens (B, past + T), Hugging Face's convention
    when a cache is passed, is accepted: its last T columns are the new tokens'.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2 or attention_mask.shape[0] != B:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise ValueError(f"attention_mask must have shape (batch, seq_len) = {(B, T)}, got {got}")
    if attention_mask.shape[1] != T:
        if not (has_state and attention_mask.shape[1] > T):
            raise ValueError(
                f"attention_mask must have shape {(B, T)} (or (batch, past + seq_len) when a state is passed), "
                f"got {tuple(attention_mask.shape)}"
            )
        attention_mask = attention_mask[:, -T:]
    if not torch.compiler.is_compiling():
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
        mask = attention_mask.bool()
        return None if bool(mask.all()) else mask  # nothing to hold: take the plain path
    return attention_mask.bool()


class SpikeGPTModel(SpikeGPTPreTrainedModel):
    """The SpikeGPT stack without the head: embedding, blocks, LNout."""

    def __init__(self, config: SpikeGPTConfig):
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.emb_spike = BinaryEmbedding(config)
        self.blocks = nn.ModuleList([SpikeGPTBlock(config, l) for l in range(config.num_hidden_layers)])
        self.ln_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.emb

    def set_input_embeddings(self, value):
        self.emb = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        state: SpikeGPTState | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        prefill_chunk_size: int | None = None,
        **kwargs,
    ) -> SpikeGPTOutput | tuple:
        """Run the stack over a sequence, continuing ``state``.

        Args:
            input_ids: (B, T) token ids in [0, V); or ``inputs_embeds`` (B, T, C), rows of the embedding
                table (the binary step is applied to them, as to ``E[idx]``).
            attention_mask: (B, T) of 0 (padding, where every state is held) and 1; with a ``state`` also
                (B, past + T), of which the last T columns count.
            state: a :class:`SpikeGPTState` for this batch, model dtype and device, to continue.
            use_cache: return the state after the last token (default ``config.use_cache``).
            output_hidden_states: also return the L + 1 hidden states (see :class:`SpikeGPTOutput`).
            prefill_chunk_size: tokens per chunk for this call (None: ``config.prefill_chunk_size``; 0: one
                call). Without autograd, T above it runs in chunks carrying the state (see the module
                docstring); the outputs are the same, each (B, T, ...) output assembled from the chunks.

        Returns:
            :class:`SpikeGPTOutput`: ``last_hidden_state`` (B, T, C), ``state`` (after the last token; None
            unless ``use_cache``), ``hidden_states`` (L + 1 tensors (B, T, C)).

        Raises:
            ValueError: inputs, mask, state or ``prefill_chunk_size`` that do not fit (shape, dtype, device,
                vocabulary range).
        """
        check_model_kwargs(kwargs)
        cfg = self.config
        use_cache = cfg.use_cache if use_cache is None else use_cache
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = cfg.return_dict if return_dict is None else return_dict
        rows = self._rows_to_split(input_ids, inputs_embeds, attention_mask, state)
        if rows is not None:
            out = self._rowwise(input_ids, inputs_embeds, rows, state, output_hidden_states=output_hidden_states,
                                prefill_chunk_size=prefill_chunk_size)
        else:
            B, T = validate_inputs(input_ids, inputs_embeds, cfg)
            if state is not None:
                if not isinstance(state, SpikeGPTState):
                    raise ValueError(f"state must be a SpikeGPTState, got {type(state).__name__}")
                state.validate(cfg, B, dtype=self.emb.weight.dtype, device=self.emb.weight.device)
            mask = real_token_mask(attention_mask, B, T, state is not None)
            chunk = prefill_chunk(cfg, prefill_chunk_size, T)
            if chunk:
                out = self._stack_chunked(input_ids, inputs_embeds, mask, state, output_hidden_states, chunk)
            else:
                out = self._stack(input_ids, inputs_embeds, mask, state, output_hidden_states)
        if not use_cache:
            out = _replace(out, state=None)
        return out if return_dict else out.to_tuple()

    def _stack(self, input_ids, inputs_embeds, mask, state, output_hidden_states) -> SpikeGPTOutput:
        """The equations of the module docstring; arguments already checked (see :meth:`forward`)."""
        x = self.emb(input_ids) if inputs_embeds is None else inputs_embeds.to(self.emb.weight.dtype)
        B = x.shape[0]
        if state is None:
            state = SpikeGPTState.empty(self.config, B, device=x.device, dtype=self.emb.weight.dtype)
        x = self.emb_spike(x, mask)  # binary embedding
        all_hidden = (x,) if output_hidden_states else None
        new_layers = []
        for block, layer_state in zip(self.blocks, state.layers()):
            x, *new = block(x, *layer_state, mask)
            new_layers.append(new)
            if output_hidden_states:
                all_hidden += (x,)
        return SpikeGPTOutput(last_hidden_state=self.ln_out(x),
                              state=SpikeGPTState.stack(new_layers, head_mem=state.head_mem), hidden_states=all_hidden)

    def _stack_chunked(self, input_ids, inputs_embeds, mask, state, output_hidden_states, chunk) -> SpikeGPTOutput:
        """:meth:`_stack` on chunks of ``chunk`` tokens, each continuing the state of the one before; the (B, T, C)
        outputs are written into place chunk by chunk (no list of chunks is concatenated)."""
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        last = hidden = None
        for part in _chunks(T, chunk):
            out = self._stack(_cols(input_ids, part), _cols(inputs_embeds, part), _cols(mask, part), state,
                              output_hidden_states)
            state = out.state
            if last is None:
                h = out.last_hidden_state
                last = h.new_empty(B, T, h.shape[2])
                if output_hidden_states:
                    hidden = tuple(x.new_empty(B, T, x.shape[2]) for x in out.hidden_states)
            last[:, part] = out.last_hidden_state
            if output_hidden_states:
                for whole, piece in zip(hidden, out.hidden_states):
                    whole[:, part] = piece
        return SpikeGPTOutput(last_hidden_state=last, state=state, hidden_states=hidden)


class L2Wrap(torch.autograd.Function):
    """Identity on the loss; in the backward, adds ``coef / n`` times each position's largest logit to
    that logit's gradient (the original SpikeGPT/RWKV "L2Wrap", which keeps logits near 0).

    logits: (N, V) of the n = N positions that count in the loss.
    """

    @staticmethod
    def forward(ctx, loss, logits, coef):  # type: ignore[override]
        ctx.save_for_backward(logits)
        ctx.coef = coef
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        (logits,) = ctx.saved_tensors
        top, ids = logits.max(dim=-1, keepdim=True)
        g = torch.zeros_like(logits).scatter_(-1, ids, top * (ctx.coef / max(logits.shape[0], 1)))
        return grad_loss, g, None


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    l2wrap_coef: float = 0.0,
    *,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy in fp32; label -100 is ignored.

    logits: (B, T, V). Either ``labels`` (B, T), where position t predicts ``labels[:, t + 1]``, or
    ``shift_labels`` (B, T), already shifted: position t predicts ``shift_labels[:, t]``. The mean is over the
    counted positions, or the sum divided by ``num_items_in_batch`` when given (Hugging Face's convention for
    gradient accumulation). With ``l2wrap_coef > 0`` the L2Wrap term is added to the gradient.
    Raises ``ValueError`` for labels of the wrong shape or outside ``[0, V)``.
    """
    B, T, V = logits.shape
    if (labels is None) == (shift_labels is None):
        raise ValueError("pass exactly one of labels and shift_labels")
    given = labels if labels is not None else shift_labels
    name = "labels" if labels is not None else "shift_labels"
    if given.shape != (B, T):
        raise ValueError(f"{name} must have shape (batch, seq_len) = {(B, T)}, got {tuple(given.shape)}")
    if given.dtype.is_floating_point or given.dtype == torch.bool:
        raise ValueError(f"{name} must be integer token ids, got {given.dtype}")
    if not torch.compiler.is_compiling():
        bad = (given != -100) & ((given < 0) | (given >= V))
        if bool(bad.any()):
            bad_id = given[bad][0].item()
            raise ValueError(f"{name} contains {bad_id}, outside the vocabulary [0, {V}) (or -100 to ignore)")
    # Shift the labels, not the logits: the logits stay a view (no (B, T, V) copy forward or backward).
    lg = logits.reshape(-1, V)
    if shift_labels is None:
        tg = F.pad(labels[:, 1:].to(lg.device), (0, 1), value=-100).reshape(-1)
    else:
        tg = shift_labels.to(lg.device).reshape(-1)
    if num_items_in_batch is None:
        loss = F.cross_entropy(lg.float(), tg, ignore_index=-100)
    else:
        loss = F.cross_entropy(lg.float(), tg, ignore_index=-100, reduction="sum") / num_items_in_batch
    if l2wrap_coef > 0 and torch.is_grad_enabled():
        keep = tg != -100
        loss = L2Wrap.apply(loss, lg[keep], l2wrap_coef)
    return loss


class SpikeGPTForCausalLM(SpikeGPTPreTrainedModel, GenerationMixin):
    """SpikeGPT with its language-model head (``Linear(C -> V)``, untied from the embedding by default)."""

    _tied_weights_keys = {"head.weight": "model.emb.weight"}

    def __init__(self, config: SpikeGPTConfig):
        super().__init__(config)
        self.model = SpikeGPTModel(config)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        spike_driven = parse_spike_inputs(config.spike_inputs)[0] != "none"
        self.head_code = SpikeEncoder(config, config.hidden_size) if spike_driven else None
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    def get_output_embeddings(self):
        return self.head

    def set_output_embeddings(self, new_embeddings):
        self.head = new_embeddings

    def get_input_embeddings(self):
        return self.model.emb

    def set_input_embeddings(self, value):
        self.model.emb = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        state: SpikeGPTState | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        inputs_embeds: torch.Tensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        prefill_chunk_size: int | None = None,
        **kwargs,
    ) -> SpikeGPTCausalLMOutput | tuple:
        """The stack (see :meth:`SpikeGPTModel.forward` for the inputs, mask and state) and the head.

        Args:
            labels: (B, T) targets, shifted inside; or ``shift_labels`` (B, T), already shifted. -100 is
                ignored. ``num_items_in_batch``: divide the summed loss by it instead of averaging.
            logits_to_keep: k > 0 computes the logits of the last k positions only (generation); ignored
                with labels (the loss needs every position).
            prefill_chunk_size: as for :meth:`SpikeGPTModel.forward`. Chunked, the head runs chunk by chunk on
                the positions whose logits are returned, so with ``logits_to_keep=k`` the memory is one chunk's
                whatever T; the loss is computed over the whole sequence from the assembled logits (the label
                shift crosses chunk boundaries), equal to the unchunked loss.

        Returns:
            :class:`SpikeGPTCausalLMOutput`: ``loss``, ``logits`` (B, T or min(k, T), V), ``state``,
            ``hidden_states``.
        """
        check_model_kwargs(kwargs)
        cfg = self.config
        return_dict = cfg.return_dict if return_dict is None else return_dict
        use_cache = cfg.use_cache if use_cache is None else use_cache
        keep = logits_to_keep if labels is None and shift_labels is None else 0
        rows = self._rows_to_split(input_ids, inputs_embeds, attention_mask, state)
        if rows is not None:
            out = self._rowwise(input_ids, inputs_embeds, rows, state, logits_to_keep=keep,
                                output_hidden_states=output_hidden_states, prefill_chunk_size=prefill_chunk_size)
        elif chunk := prefill_chunk(cfg, prefill_chunk_size, _sequence_length(input_ids, inputs_embeds)):
            out = self._forward_chunked(input_ids, inputs_embeds, attention_mask, state, output_hidden_states, keep,
                                        chunk)
        else:
            base = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                              state=state, use_cache=True, output_hidden_states=output_hidden_states, return_dict=True,
                              prefill_chunk_size=0)
            h = base.last_hidden_state
            mask = None  # the head's code holds its membrane at padding, and recorders see its real positions
            if self.head_code is not None:
                mask = real_token_mask(attention_mask, h.shape[0], h.shape[1], state is not None)
            logits, new_state = self._head_logits(h, base.state, mask, max(h.shape[1] - keep, 0) if keep else 0)
            out = SpikeGPTCausalLMOutput(logits=logits, state=new_state, hidden_states=base.hidden_states)
        loss = None
        if labels is not None or shift_labels is not None:
            loss = causal_lm_loss(out.logits, labels, cfg.l2wrap_coef, shift_labels=shift_labels,
                                  num_items_in_batch=num_items_in_batch)
        out = _replace(out, loss=loss, state=out.state if use_cache else None)
        return out if return_dict else out.to_tuple()

    def _forward_chunked(self, input_ids, inputs_embeds, attention_mask, state, output_hidden_states, keep, chunk):
        """The stack and the head, ``chunk`` tokens at a time, each chunk continuing the state of the one before.

        Only the logits of positions ``>= T - keep`` (all when ``keep`` is 0) are computed, chunk by chunk, into
        one (B, T or keep, V) tensor; the per-token hidden states of a chunk are dropped after it unless
        ``output_hidden_states``. Each chunk is a call of ``self.model`` (its hooks run once per chunk).
        """
        cfg = self.config
        B, T = validate_inputs(input_ids, inputs_embeds, cfg)
        mask = real_token_mask(attention_mask, B, T, state is not None)
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        start = max(T - keep, 0) if keep else 0  # the first position whose logits are returned
        logits = hidden = None
        for part in _chunks(T, chunk):
            base = self.model(input_ids=_cols(input_ids, part), inputs_embeds=_cols(inputs_embeds, part),
                              attention_mask=_cols(mask, part), state=state, use_cache=True,
                              output_hidden_states=output_hidden_states, return_dict=True, prefill_chunk_size=0)
            state = base.state
            if output_hidden_states:
                if hidden is None:
                    hidden = tuple(x.new_empty(B, T, x.shape[2]) for x in base.hidden_states)
                for whole, piece in zip(hidden, base.hidden_states):
                    whole[:, part] = piece
            if part.stop > start or (self.head_code is not None and self.head_code.stateful):
                lo = min(max(part.start, start), part.stop)
                lg, state = self._head_logits(base.last_hidden_state, state, _cols(mask, part), lo - part.start)
                if logits is None:
                    logits = lg.new_empty(B, T - start, lg.shape[2])
                logits[:, lo - start : part.stop - start] = lg
        return SpikeGPTCausalLMOutput(logits=logits, state=state, hidden_states=hidden)

    def _head_logits(self, h, state, mask, start: int):
        """Logits (B, T - start, V) of positions ``start..T-1`` of ``h`` (B, T, C), the LNout output, and ``state``
        with the head code's membrane advanced over all T positions (the LIF code reads every token, the head's
        product runs on the returned positions only)."""
        if self.head_code is None:
            return self.head(h[:, start:]), state
        mem = None if state.head_mem is None else state.head_mem[0]
        c, vth, mem = self.head_code(h, mem, mask)
        if mem is not None:
            state = dataclasses.replace(state, head_mem=mem[None])
        return spike_linear(self.head, (c[:, start:], vth[:, start:], None)), state

    # --- generation: prefill in parallel mode, then one token per step from the carried state ---

    def prepare_inputs_for_generation(
        self, input_ids, state=None, attention_mask=None, use_cache=None, inputs_embeds=None, **kwargs
    ):
        """The inputs of the next forward.

        First (transformers' ``is_first_iteration``) the whole prompt (``inputs_embeds`` when given), continuing
        ``state`` when ``generate(..., state=S)`` was given one (S: (L, B, C) fields for the B prompt rows, or for
        each of them before beams / return sequences expand them), from an empty state otherwise; then only the
        newest token with the carried state. Without a cache (``use_cache=False``) every step reads the whole
        text again, from S when given. ``output_hidden_states``, ``return_dict`` and ``prefill_chunk_size``
        pass through; Hugging Face's positional bookkeeping (``cache_position``, ...) is dropped."""
        first = bool(kwargs.get("is_first_iteration")) or input_ids is None or input_ids.shape[1] == 0
        if inputs_embeds is not None and not first and use_cache is False:
            raise ValueError("generate(inputs_embeds=..., use_cache=False) cannot continue a prompt given as "
                             "embeddings; leave use_cache on")
        if not first and use_cache is not False and state is not None:
            input_ids = input_ids[:, -1:]
            if attention_mask is not None:
                attention_mask = attention_mask[:, -1:]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "state": state, "use_cache": use_cache,
                  "logits_to_keep": 1}
        if inputs_embeds is not None and first:
            inputs["input_ids"] = None
            inputs["inputs_embeds"] = inputs_embeds
        for key in ("output_hidden_states", "return_dict", "prefill_chunk_size"):
            if key in kwargs:
                inputs[key] = kwargs[key]
        return inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, **kwargs
        )
        if model_kwargs.get("use_cache") is not False:
            model_kwargs["state"] = getattr(outputs, "state", None)
        # else: each step re-reads the whole text from the state generate() was given (or none), kept as is
        return model_kwargs

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """transformers' expansion for beams / ``num_return_sequences`` (row b becomes rows b * n .. b * n + n - 1),
        applied to a ``state`` given to ``generate`` too (transformers expands only tensors)."""
        given = "state" in model_kwargs
        state = model_kwargs.pop("state", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if given:
            model_kwargs["state"] = state.repeat_interleave(expand_size) if isinstance(
                state, SpikeGPTState) and expand_size > 1 else state
        return input_ids, model_kwargs

    def _prefill(self, input_ids, generation_config, model_kwargs, *args, **kwargs):
        """transformers' prefill, with ``generate(prefill_chunk_size=n)`` (a generation-config field) handed to
        this model's own chunking (``forward(prefill_chunk_size=n)``) instead of transformers' chunked prefill,
        which needs a KV cache."""
        chunk = getattr(generation_config, "prefill_chunk_size", None)
        if chunk is not None:
            generation_config = copy.copy(generation_config)
            generation_config.prefill_chunk_size = None
            model_kwargs = {**model_kwargs, "prefill_chunk_size": chunk}
        return super()._prefill(input_ids, generation_config, model_kwargs, *args, **kwargs)

    def _valid_auto_compile_criteria(self, model_kwargs, generation_config) -> bool:
        """Compiled decoding, ``generate(..., compile_config=CompileConfig(...))``: transformers then runs the steps
        after the prefill through ``torch.compile`` of this model's call (the prefill, whose length varies, stays
        eager). It does so only for a cache of fixed shapes, on a GPU; this model's state has fixed shapes on every
        device, so here it is done wherever it is asked for, and only then (``disable_compile=True`` turns it off)."""
        return generation_config.compile_config is not None and not generation_config.disable_compile

    def _reorder_cache(self, state, beam_idx):
        return None if state is None else state.index_select(beam_idx)
