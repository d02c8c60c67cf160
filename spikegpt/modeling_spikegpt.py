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
The same code runs in parallel mode (a whole sequence, as in training) and in recurrent mode (pass
``state=`` and feed one token at a time); both give the same logits. ``attention_mask == 0`` marks
padding, where every part of the state is held, so padded rows give what they give alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from spikegpt.configuration_spikegpt import SpikeGPTConfig
from spikegpt.kernels import lif, wkv
from spikegpt.kernels.surrogate import heaviside
from spikegpt.state import SpikeGPTState

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


class TimeMix(nn.Module):
    """Spiking RWKV-4 attention (before its LIF):

        xk, xv, xr = mix(z, shift(z), mu_k / mu_v / mu_r)
        k, v, r = Wk xk, Wv xv, Wr xr
        y = Wo( sigmoid(r) * WKV(-exp(time_decay), time_first, k, v) )
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
        self.backend = config.kernel_backend

    def forward(self, z, shift, wkv_state, mask):
        """z: (B, T, C) normalised input; shift: (B, C); wkv_state: (num, den, max). Returns (y, shift, wkv_state)."""
        zz, shift = token_shift(z, shift, mask)
        dz = z - zz
        k = self.key(mix(zz, dz, self.time_mix_k))
        v = self.value(mix(zz, dz, self.time_mix_v))
        r = self.receptance(mix(zz, dz, self.time_mix_r))
        y, wkv_state = wkv(self.time_decay, self.time_first, k, v, wkv_state, mask=mask, backend=self.backend)
        return self.output(torch.sigmoid(r) * y), shift, wkv_state


class _ReluSquare(torch.autograd.Function):
    """``relu(x)^2`` keeping only ``relu(x)`` for the backward (``2 relu(x) g``): two fewer passes over
    the (B, T, 4C) activation than autograd of relu then square."""

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
    return _ReluSquare.apply(x)


class ChannelMix(nn.Module):
    """Spiking receptance FFN (before its LIF): ``y = sigmoid(Wr xr) * Wv relu(Wk xk)^2``."""

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

    def forward(self, z, shift, mask):
        """z: (B, T, C) normalised input; shift: (B, C). Returns (y, shift)."""
        zz, shift = token_shift(z, shift, mask)
        dz = z - zz
        k = relu_square(self.key(mix(zz, dz, self.time_mix_k)))
        r = torch.sigmoid(self.receptance(mix(zz, dz, self.time_mix_r)))
        return r * self.value(k), shift


class LIF(nn.Module):
    """Multi-step LIF neuron on a branch output (the ``lif`` op); the identity when spiking is off.

    Forward hooks on these modules see the spikes (B, T, C), which is how firing rates are recorded.
    """

    def __init__(self, config: SpikeGPTConfig):
        super().__init__()
        self.spiking = config.spiking
        self.kwargs = dict(
            tau=config.tau, threshold=config.threshold, v_reset=config.v_reset,
            detach_reset=config.detach_reset, surrogate=config.surrogate, alpha=config.surrogate_alpha,
            backend=config.kernel_backend,
        )

    def forward(self, x, mem, mask):
        """x: (B, T, C); mem: (B, C) membrane. Returns (spikes (B, T, C), membrane (B, C))."""
        if not self.spiking:
            return x, mem
        return lif(x, mem, mask=mask, **self.kwargs)


class SpikeGPTBlock(nn.Module):
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

    def forward(self, x, att_shift, ffn_shift, num, den, mx, att_mem, ffn_mem, mask=None):
        """x: (B, T, C); the seven (B, C) state tensors of this layer. Returns x and the new seven, flat."""
        if self.ln0 is not None:
            x = self.ln0(x)
        a, att_shift, (num, den, mx) = self.att(self.ln1(x), att_shift, (num, den, mx), mask)
        a, att_mem = self.att_lif(a, att_mem, mask)
        x = x + a
        f, ffn_shift = self.ffn(self.ln2(x), ffn_shift, mask)
        f, ffn_mem = self.ffn_lif(f, ffn_mem, mask)
        x = self.drop(x + f)
        return x, att_shift, ffn_shift, num, den, mx, att_mem, ffn_mem


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


class SpikeGPTPreTrainedModel(PreTrainedModel):
    config_class = SpikeGPTConfig
    base_model_prefix = "model"
    _no_split_modules = ["SpikeGPTBlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True
    _fresh_head_prefixes: tuple[str, ...] = ()  # keys a checkpoint may lack (a task head started afresh)

    @classmethod
    def from_pretrained(cls, *args, strict: bool = True, **kwargs):
        """``PreTrainedModel.from_pretrained``, refusing a checkpoint that does not fit.

        With ``strict=True`` (default) a checkpoint with missing keys or shapes that differ from the
        config raises ``ValueError`` naming the keys, instead of silently re-initialising them (except keys
        under ``_fresh_head_prefixes``, a task head that a base checkpoint does not have).
        """
        want_info = kwargs.pop("output_loading_info", False)
        user_ignores = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(
            *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
        if strict:
            problems = []
            mismatched = [] if user_ignores else sorted(info.get("mismatched_keys", []), key=str)
            if mismatched:
                shown = ", ".join(f"{m[0]} (checkpoint {tuple(m[1])}, model {tuple(m[2])})" for m in mismatched[:8])
                problems.append(f"{len(mismatched)} checkpoint tensors have the wrong shape: {shown}")
            missing = sorted(k for k in info.get("missing_keys", []) if not k.startswith(cls._fresh_head_prefixes))
            if missing:
                problems.append(f"{len(missing)} keys are missing from the checkpoint: {', '.join(missing[:8])}")
            if problems:
                raise ValueError("cannot load this checkpoint into " + cls.__name__ + ": " + "; ".join(problems))
        return (model, info) if want_info else model

    def _init_weights(self, module: nn.Module) -> None:
        """Initialisation (RWKV-4's for the time parameters; unit-gain Linear layers for the spiking branches).

        - time_decay / time_first / time_mix: RWKV-4's layer- and channel-dependent ramps. Decay rates
          spread over channels from fast to slow give every layer a range of memory lengths; the mixes
          let lower layers lean on the previous token. These matter most for how well RWKV-4 trains.
        - Linear layers inside the blocks: N(0, 1/fan_in), i.e. unit gain; the two that feed a LIF
          (att.output, ffn.value) get gain ``LIF_INPUT_GAIN`` = 4 when spiking. A LIF fires only when its
          input reaches the threshold (with tau = 2 a constant input must be >= 1), and unit gain leaves
          firing near 1-3%; gain 4 gives 7-13% at every width and depth measured (C 48-256, L 4-6), near
          the paper's assumed 15%. RWKV-4's zero-initialised output projections would leave every neuron
          silent at the start. Spikes are binary, so this gain does not grow the residual stream.
        - Embedding: U(-1e-4, 1e-4), RWKV-4's small init. H(E) is then a random binary code and every
          entry sits at the surrogate's steepest point, so embedding bits flip easily early in training.
        - Head: N(0, 0.5 / sqrt(C)) (the scale of RWKV-4's orthogonal head init), LayerNorms 1 and 0.
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


def _validate_input_ids(input_ids, vocab_size: int) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must have shape (batch, seq_len), got rank {input_ids.dim()} shape {tuple(input_ids.shape)}"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor (torch.long), got {input_ids.dtype}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty (seq_len = 0)")
    if torch.compiler.is_compiling():
        # Reading min/max back to the host would break a compiled graph; there the embedding's own index
        # check reports an out-of-range id instead.
        return
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids contains token id {bad}, outside the vocabulary [0, {vocab_size})")


class SpikeGPTModel(SpikeGPTPreTrainedModel):
    """The SpikeGPT stack without the head: embedding, blocks, LNout."""

    def __init__(self, config: SpikeGPTConfig):
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.hidden_size)
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
        **kwargs,
    ) -> SpikeGPTOutput | tuple:
        """input_ids: (B, T) token ids; attention_mask: (B, T), 0 at padding; state: continues a sequence.

        Returns ``last_hidden_state`` (B, T, C), the ``state`` after the last token (when ``use_cache``)
        and ``hidden_states`` (when asked).
        """
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("SpikeGPT takes input_ids only: its binary embedding is part of the model")
        cfg = self.config
        use_cache = cfg.use_cache if use_cache is None else use_cache
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = cfg.return_dict if return_dict is None else return_dict
        _validate_input_ids(input_ids, cfg.vocab_size)
        B, T = input_ids.shape
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (B, T):
                raise ValueError(
                    f"attention_mask must have the shape of input_ids {(B, T)}, got {tuple(attention_mask.shape)}"
                )
            mask = attention_mask.bool()
            if not torch.compiler.is_compiling() and bool(mask.all()):
                mask = None  # nothing to hold: take the plain path
        dtype = self.emb.weight.dtype
        if state is None:
            state = SpikeGPTState.empty(cfg, B, device=input_ids.device, dtype=dtype)
        else:
            if not isinstance(state, SpikeGPTState):
                raise ValueError(f"state must be a SpikeGPTState, got {type(state).__name__}")
            state.validate(cfg, B)

        x = self.emb(input_ids)
        if cfg.spiking:
            x = heaviside(x, cfg.surrogate, cfg.surrogate_alpha)  # binary embedding
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)  # padding carries nothing (it is never read anyway)
        all_hidden = (x,) if output_hidden_states else None
        new_layers = []
        for l, block in enumerate(self.blocks):
            layer_state = state.layer(l)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                out = self._gradient_checkpointing_func(block.__call__, x, *layer_state, mask)
            else:
                out = block(x, *layer_state, mask)
            x, new = out[0], out[1:]
            new_layers.append(new)
            if output_hidden_states:
                all_hidden += (x,)
        x = self.ln_out(x)
        new_state = SpikeGPTState.stack(new_layers) if use_cache else None
        if not return_dict:
            return tuple(t for t in (x, new_state, all_hidden) if t is not None)
        return SpikeGPTOutput(last_hidden_state=x, state=new_state, hidden_states=all_hidden)


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


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, l2wrap_coef: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts ``labels[:, t + 1]``; label -100 is ignored.

    logits: (B, T, V); labels: (B, T). With ``l2wrap_coef > 0`` the L2Wrap term is added to the gradient.
    """
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have shape (batch, seq_len) = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}"
        )
    V = logits.shape[-1]
    # Shift the labels, not the logits: the logits stay a view (no (B, T, V) copy forward or backward);
    # the last position of each row gets the ignored label.
    lg = logits.reshape(-1, V)
    tg = F.pad(labels[:, 1:].to(lg.device), (0, 1), value=-100).reshape(-1)
    loss = F.cross_entropy(lg.float(), tg, ignore_index=-100)
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
        **kwargs,
    ) -> SpikeGPTCausalLMOutput | tuple:
        """input_ids: (B, T); labels: (B, T), shifted inside (-100 ignored). Returns loss, logits (B, T, V),
        the continuing ``state`` (when ``use_cache``) and ``hidden_states`` (when asked).
        ``logits_to_keep = k > 0`` computes the logits of the last k positions only (generation)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.model(
            input_ids, attention_mask=attention_mask, state=state, use_cache=use_cache,
            output_hidden_states=output_hidden_states, return_dict=True, **kwargs,
        )
        h = out.last_hidden_state
        if logits_to_keep and labels is None:
            h = h[:, -logits_to_keep:]
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.config.l2wrap_coef)
        if not return_dict:
            return tuple(t for t in (loss, logits, out.state, out.hidden_states) if t is not None)
        return SpikeGPTCausalLMOutput(loss=loss, logits=logits, state=out.state, hidden_states=out.hidden_states)

    # --- generation: prefill in parallel mode, then one token per step from the carried state ---

    def prepare_inputs_for_generation(self, input_ids, state=None, attention_mask=None, use_cache=None, **kwargs):
        if use_cache is not False and state is not None:
            input_ids = input_ids[:, -1:]
            if attention_mask is not None:
                attention_mask = attention_mask[:, -1:]
        else:
            state = None
        return {
            "input_ids": input_ids, "attention_mask": attention_mask, "state": state,
            "use_cache": use_cache, "logits_to_keep": 1,
        }

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, **kwargs
        )
        model_kwargs["state"] = getattr(outputs, "state", None)
        return model_kwargs

    def _reorder_cache(self, state, beam_idx):
        return None if state is None else state.index_select(beam_idx)
