"""RWKV-4 language models as SpikeGPT models ("shadow training"), and back.

With spiking switched off, SpikeGPT's architecture is RWKV-4, so a pretrained RWKV-4 checkpoint (e.g. the
"Pile" models, 169M to 14B parameters, GPT-NeoX-20B tokenizer) converts weight for weight:

    >>> from spikegpt.interop.rwkv import from_rwkv
    >>> teacher = from_rwkv("RWKV/rwkv-4-169m-pile", spiking=False)    # doctest: +SKIP
    >>> student = from_rwkv("RWKV/rwkv-4-169m-pile")                   # spiking, same weights  # doctest: +SKIP

``from_rwkv(..., spiking=False)`` reproduces Hugging Face's ``RwkvForCausalLM`` logits (parallel and
recurrent, with state continuation; see ``tests/test_rwkv.py``), except for one deliberate difference:
HF's *inference* halves the residual stream every ``rescale_every`` (6) layers and divides the weights of
``attention.output`` / ``feed_forward.value`` to match. Halving is exact in floating point, so that only
changes the LayerNorms' effective eps (``LN_eps(x / s) = LN_{eps s^2}(x)``): a relative change of the
order of ``4^k eps / var`` in the normalised inputs of layer block ``k``. SpikeGPT does not rescale (a
fixed spiking threshold makes the trick change the outputs), so the converted model is
the RWKV-4 model as *trained*, which equals HF with ``rescale_every=0``. A HF model whose weights are
currently rescaled (an eval forward has run) is un-rescaled on conversion.

The spiking model made from the same weights is a poor language model until it is trained (every branch
output becomes binary spikes, and the embedding becomes a binary code): :func:`calibrate_lif_scales`
(a parameter-free rescaling of each LIF's input) and the distillation recipe (``spikegpt.train.distill``,
``docs/shadow_training.md``) recover it.

Hugging Face's recurrent state is a list of five (B, C, L) tensors: [0] the FFN token-shift input, [1] the
attention token-shift input, [2..4] the WKV numerator, denominator and running max (the same
scaled-by-e^-max form as SpikeGPT's). :func:`state_from_rwkv` and :func:`state_to_rwkv` translate it.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from spikegpt.configuration_spikegpt import SpikeGPTConfig
from spikegpt.modeling_spikegpt import LIF, SpikeGPTForCausalLM
from spikegpt.recording import record_spikes, spike_sites
from spikegpt.state import SpikeGPTState

logger = logging.getLogger(__name__)

__all__ = [
    "branch_outputs",
    "calibrate_lif_scales",
    "firing_rates",
    "from_rwkv",
    "hf_to_original",
    "original_to_hf",
    "state_from_rwkv",
    "state_to_rwkv",
    "to_rwkv",
]

# HF RwkvForCausalLM name fragments -> original RWKV-4 / SpikeGPT checkpoint names
_HF_TIME_MIX = {"time_mix_key": "time_mix_k", "time_mix_value": "time_mix_v", "time_mix_receptance": "time_mix_r"}
_HF_BLOCK = re.compile(r"^rwkv\.blocks\.(\d+)\.(pre_ln|ln1|ln2|attention|feed_forward)\.(.+)$")
_ORIG_BLOCK = re.compile(r"^blocks\.(\d+)\.(ln0|ln1|ln2|att|ffn)\.(.+)$")
_HF_PART = {"pre_ln": "ln0", "ln1": "ln1", "ln2": "ln2", "attention": "att", "feed_forward": "ffn"}
_ORIG_PART = {v: k for k, v in _HF_PART.items()}


def hf_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``RwkvForCausalLM`` state dict to the original RWKV-4 checkpoint layout.

    ``rwkv.embeddings.weight -> emb.weight``, ``rwkv.blocks.{l}.pre_ln -> blocks.{l}.ln0``,
    ``attention -> att``, ``feed_forward -> ffn``, ``time_mix_key/value/receptance -> time_mix_k/v/r``
    (kept (1, 1, C)), ``rwkv.ln_out -> ln_out``, ``head.weight`` unchanged. The tensors are not copied.
    Raises ``ValueError`` naming the first key that is not part of an RWKV-4 model.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k == "rwkv.embeddings.weight":
            out["emb.weight"] = v
        elif k in ("head.weight",):
            out[k] = v
        elif k.startswith("rwkv.ln_out."):
            out[k.removeprefix("rwkv.")] = v
        elif m := _HF_BLOCK.match(k):
            l, part, rest = m.groups()
            out[f"blocks.{l}.{_HF_PART[part]}.{_HF_TIME_MIX.get(rest, rest)}"] = v
        else:
            raise ValueError(f"not an RWKV-4 RwkvForCausalLM state dict: unexpected key {k!r}")
    return out


def original_to_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`hf_to_original`: original RWKV-4 names to ``RwkvForCausalLM`` names;
    ``time_mix_*`` become (1, 1, C). Raises ``ValueError`` naming the first unknown key."""
    back = {v: k for k, v in _HF_TIME_MIX.items()}
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k == "emb.weight":
            out["rwkv.embeddings.weight"] = v
        elif k == "head.weight":
            out[k] = v
        elif k.startswith("ln_out."):
            out["rwkv." + k] = v
        elif m := _ORIG_BLOCK.match(k):
            l, part, rest = m.groups()
            if rest in back:
                v = v.reshape(1, 1, -1)
            out[f"rwkv.blocks.{l}.{_ORIG_PART[part]}.{back.get(rest, rest)}"] = v
        else:
            raise ValueError(f"not an RWKV-4 state dict in the original layout: unexpected key {k!r}")
    return out


def _config_kwargs() -> set[str]:
    params = inspect.signature(SpikeGPTConfig.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}


def _check_overrides(overrides: Mapping[str, Any]) -> None:
    known = _config_kwargs()
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown SpikeGPTConfig arguments {unknown}; known: {sorted(known)}")


def _hf_weights(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The original-layout weights of a live ``RwkvForCausalLM``, with HF's inference rescaling undone."""
    cfg = hf.config
    attn = getattr(cfg, "attention_hidden_size", None)
    if attn is not None and attn != cfg.hidden_size:
        raise ValueError(
            f"this RWKV model has attention_hidden_size={attn} != hidden_size={cfg.hidden_size}; "
            "SpikeGPT's TimeMix is square (C x C), so it cannot hold these weights"
        )
    for name, p in hf.named_parameters():
        if hasattr(p, "SCB") or hasattr(p, "quant_state"):
            raise ValueError(f"{name} is quantised (bitsandbytes); load the RWKV model unquantised to convert it")
    sd = hf_to_original({k: v.detach() for k, v in hf.state_dict().items()})
    every = int(getattr(cfg, "rescale_every", 0) or 0)
    if getattr(hf.rwkv, "layers_are_rescaled", False) and every > 0:
        # HF divided these in place for inference (an eval forward ran): restore the trained weights
        for l in range(cfg.num_hidden_layers):
            f = 2 ** (l // every)
            for k in (f"blocks.{l}.att.output.weight", f"blocks.{l}.ffn.value.weight"):
                sd[k] = sd[k] * f
    return sd


def _hf_config_kwargs(cfg: Any) -> dict[str, Any]:
    if cfg.layer_norm_epsilon != 1e-5:
        logger.warning(
            "RWKV layer_norm_epsilon=%g: HF's RWKV uses it in the blocks but 1e-5 in ln_out; the converted "
            "model uses %g everywhere", cfg.layer_norm_epsilon, cfg.layer_norm_epsilon,
        )
    return {
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "context_length": cfg.context_length,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": getattr(cfg, "pad_token_id", None),
    }


def _load_hf(src: str, revision: str | None) -> torch.nn.Module:
    from transformers import AutoConfig, RwkvConfig, RwkvForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(src, revision=revision)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"cannot read {src!r} as a Hugging Face RWKV model (a local directory with config.json or a Hub id; "
            f"original RWKV-4 weights are a .pth file): {' '.join(str(e).split())[:300]}"
        ) from e
    if not isinstance(cfg, RwkvConfig):
        hint = " (a SpikeGPT model: load it with SpikeGPTForCausalLM.from_pretrained)" if cfg.model_type == "spikegpt" \
            else ""
        raise ValueError(f"{src!r} holds a {cfg.model_type!r} model, not an RWKV-4 ('rwkv') model{hint}")
    return RwkvForCausalLM.from_pretrained(src, revision=revision, dtype="auto")


def from_rwkv(
    model_or_path: Any,
    spiking: bool = True,
    *,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    **overrides: Any,
) -> SpikeGPTForCausalLM:
    """Convert an RWKV-4 language model into a :class:`SpikeGPTForCausalLM` with the same weights.

    ``model_or_path``: a Hugging Face ``RwkvForCausalLM`` object; a local directory or Hub id holding one
    (``"RWKV/rwkv-4-169m-pile"``); an original RWKV-4 ``.pth`` file (BlinkDL's, read with
    ``torch.load(weights_only=True)``); or a state dict in either layout. ``spiking``: True gives the
    spiking model (binary embedding, LIF on every branch), False the plain RWKV-4 model, whose logits
    equal HF's ``RwkvForCausalLM`` with ``rescale_every=0`` (see the module docstring). ``dtype``: the
    parameter dtype; None keeps the source's (the embedding's, for HF models). ``overrides``:
    :class:`SpikeGPTConfig` keyword arguments (``tau``, ``threshold``, ``dropout``, token ids, ...); the shape
    fields must agree with the checkpoint. Returns the model in eval mode. Raises ``ValueError`` for inputs
    that are not RWKV-4 models or overrides that do not fit, ``FileNotFoundError`` for a missing file.
    """
    from spikegpt.interop.original import from_original

    _check_overrides(overrides)
    cfg_kwargs: dict[str, Any] = {}
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if os.path.isfile(path):
            sd: Mapping[str, torch.Tensor] | str = path
        elif os.path.splitext(path)[1] in (".pth", ".pt", ".bin"):
            raise FileNotFoundError(f"RWKV checkpoint not found: {path}")
        else:
            model_or_path = _load_hf(path, revision)
    if isinstance(model_or_path, torch.nn.Module):
        from transformers import RwkvForCausalLM

        if not isinstance(model_or_path, RwkvForCausalLM):
            raise ValueError(
                f"expected a transformers RwkvForCausalLM (the model with its head), got {type(model_or_path).__name__}"
            )
        sd = _hf_weights(model_or_path)
        cfg_kwargs = _hf_config_kwargs(model_or_path.config)
        if dtype is None:
            dtype = model_or_path.rwkv.embeddings.weight.dtype
    elif isinstance(model_or_path, Mapping):
        sd = dict(model_or_path)
        if "rwkv.embeddings.weight" in sd:
            sd = hf_to_original(sd)
    elif not isinstance(model_or_path, (str, os.PathLike)):
        raise ValueError(
            "model_or_path must be an RwkvForCausalLM, a directory / Hub id, a .pth file or a state dict; "
            f"got {type(model_or_path).__name__}"
        )
    cfg_kwargs.update(overrides)
    model = from_original(sd, dtype=dtype, spiking=spiking, **cfg_kwargs)
    logger.info("converted RWKV-4 (%d layers x %d) to SpikeGPT, spiking=%s", model.config.num_hidden_layers,
                model.config.hidden_size, spiking)
    return model


def to_rwkv(model: SpikeGPTForCausalLM, rescale_every: int = 0) -> torch.nn.Module:
    """A Hugging Face ``RwkvForCausalLM`` (eval mode) holding ``model``'s weights.

    With a non-spiking model and ``rescale_every=0`` the two give the same logits; HF's default
    ``rescale_every=6`` differs by the LayerNorm-eps effect described in the module docstring. A spiking
    model's weights export as well (the neuron settings have no place in RWKV; a warning says so), and
    :func:`from_rwkv` with the same overrides brings the model back bit for bit.
    """
    from transformers import RwkvConfig, RwkvForCausalLM

    from spikegpt.interop.original import to_original

    if not isinstance(model, SpikeGPTForCausalLM):
        raise ValueError(f"to_rwkv takes a SpikeGPTForCausalLM, got {type(model).__name__}")
    c = model.config
    if c.spiking:
        logger.warning("exporting a spiking model to RWKV: the result is its non-spiking (RWKV-4) counterpart")
    cfg = RwkvConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        intermediate_size=c.intermediate_size, attention_hidden_size=c.hidden_size,
        layer_norm_epsilon=c.layer_norm_epsilon, context_length=c.context_length, rescale_every=rescale_every,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
        tie_word_embeddings=False,
    )
    dtype = model.head.weight.dtype
    with torch.device("meta"):
        hf = RwkvForCausalLM(cfg)
    hf.load_state_dict(original_to_hf(to_original(model)), strict=True, assign=True)
    return hf.to(dtype).eval()


def state_from_rwkv(state: Sequence[torch.Tensor], model_dtype: torch.dtype | None = None) -> SpikeGPTState:
    """Hugging Face's RWKV state (five (B, C, L) tensors) as a :class:`SpikeGPTState` ((L, B, C) fields).

    ``model_dtype``: dtype of the token-shift fields (default: HF's). WKV fields keep fp64 when given in
    fp64 and are fp32 otherwise; the LIF membranes start at zero.
    """
    if not isinstance(state, Sequence) or len(state) != 5:
        raise ValueError("an RWKV state is a list of five (batch, hidden, layers) tensors")
    shapes = {tuple(t.shape) for t in state}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"the five RWKV state tensors must share one (batch, hidden, layers) shape, got {shapes}")
    ffn, att, num, den, mx = (t.permute(2, 0, 1).contiguous() for t in state)
    dt = model_dtype or att.dtype
    acc = torch.float64 if num.dtype == torch.float64 else torch.float32
    return SpikeGPTState(
        att_shift=att.to(dt), ffn_shift=ffn.to(dt), wkv_num=num.to(acc), wkv_den=den.to(acc), wkv_max=mx.to(acc),
        att_mem=torch.zeros_like(num, dtype=acc), ffn_mem=torch.zeros_like(num, dtype=acc),
    )


def state_to_rwkv(state: SpikeGPTState) -> list[torch.Tensor]:
    """A :class:`SpikeGPTState` as Hugging Face's RWKV state: ``[ffn_shift, att_shift, num, den, max]``,
    each (B, C, L). Raises ``ValueError`` when a LIF membrane is non-zero (RWKV has no place for it)."""
    if not isinstance(state, SpikeGPTState):
        raise ValueError(f"expected a SpikeGPTState, got {type(state).__name__}")
    if state.enc_mem is not None:
        raise ValueError("this state carries the membranes of LIF spike codes (spike_inputs='lif'): RWKV's state "
                         "cannot hold them")
    if bool(state.att_mem.ne(0).any()) or bool(state.ffn_mem.ne(0).any()):
        raise ValueError("this state carries LIF membranes (a spiking model's): RWKV's state cannot hold them")
    return [t.permute(1, 2, 0).contiguous() for t in
            (state.ffn_shift, state.att_shift, state.wkv_num, state.wkv_den, state.wkv_max)]


# a branch LIF's name in its block -> the Linear (in the same block) whose output it integrates
_FEEDS = {"att_lif": "att.output", "ffn_lif": "ffn.value"}


def _branch_sites(model: torch.nn.Module) -> dict[str, LIF]:
    """The branch LIFs among ``model``'s spike sites, by module path (``"model.blocks.{l}.att_lif"``, ...)."""
    return {name: m for name, m in spike_sites(model).items() if isinstance(m, LIF)}


def _feeding_linear(model: torch.nn.Module, site: str) -> torch.nn.Linear:
    """The Linear feeding branch LIF ``site``, found in the site's parent block (att.output / ffn.value)."""
    parent, _, leaf = site.rpartition(".")
    if leaf not in _FEEDS:
        raise ValueError(f"{site!r} is not a branch LIF of a SpikeGPT block (one of {sorted(_FEEDS)})")
    return model.get_submodule(f"{parent}.{_FEEDS[leaf]}" if parent else _FEEDS[leaf])


@torch.no_grad()
def branch_outputs(model: SpikeGPTForCausalLM, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each branch LIF's input current (the branch output before the neuron) on ``batches`` of (B, T) token
    ids (one T for all), recorded with ``record_spikes(model, keep="inputs")``.

    Returns ``{site path ("model.blocks.{l}.att_lif" / "model.blocks.{l}.ffn_lif"): (N, T, C)}`` with the
    batches stacked along N, on the model's device, in fp32 (fp64 for an fp64 model). ``ValueError`` for no
    batches.
    """
    acc = torch.float64 if model.dtype == torch.float64 else torch.float32
    sites = list(_branch_sites(model))
    was_training = model.training
    model.eval()
    n = 0
    try:
        with record_spikes(model, keep="inputs", sites=sites) as rec:
            for ids in batches:
                model(input_ids=ids.to(model.device), use_cache=False, prefill_chunk_size=0)  # one tensor per site
                n += 1
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("branch_outputs needs at least one batch of token ids")
    return {name: rec.stacked(name).to(acc) for name in sites}


@torch.no_grad()
def calibrate_lif_scales(
    student: SpikeGPTForCausalLM,
    teacher: SpikeGPTForCausalLM,
    batches: Iterable[torch.Tensor],
    *,
    scales: torch.Tensor | None = None,
    per_channel: bool = True,
) -> dict[str, torch.Tensor]:
    """Set each LIF's input scale from the teacher's branch outputs; a parameter-free rescaling.

    For every branch LIF (``model.blocks.{l}.att_lif`` / ``model.blocks.{l}.ffn_lif``) the teacher's branch
    output y (N, T, C) on ``batches`` ((B, T) token ids) is recorded (:func:`branch_outputs`); for each
    channel c (or the whole layer when ``per_channel=False``) the gain a from ``scales`` (default 2^-3 ..
    2^5 in 33 steps, and 1) that minimises ``mean_t (LIF(a y)_t - y_t)^2`` -- the spikes the student adds to
    the residual stream against what the teacher adds -- is chosen, and row c of the Linear feeding that
    LIF in its block (``att.output`` / ``ffn.value``) is multiplied by it (the branch output is linear in
    those rows, so the LIF input becomes a y). Nothing else changes: no new parameters, the checkpoint layout
    stays. Returns ``{site path: gains (C,)}``.
    ``ValueError`` for a non-spiking student, a spiking teacher, non-positive scales or no batches.
    """
    from spikegpt.kernels import lif

    if not student.config.spiking:
        raise ValueError("calibrate_lif_scales needs a spiking student (config.spiking=True)")
    if teacher.config.spiking:
        raise ValueError("the calibration teacher must be non-spiking (config.spiking=False)")
    cfg = student.config
    grid = scales if scales is not None else torch.cat([torch.logspace(-3, 5, 33, base=2.0), torch.ones(1)])
    grid = grid.double().unique()
    if bool((grid <= 0).any()):
        raise ValueError("calibration scales must be positive")
    ys = branch_outputs(teacher, batches)
    if set(ys) != set(_branch_sites(student)):
        raise ValueError(f"student and teacher name their branch LIFs differently: {sorted(_branch_sites(student))} "
                         f"vs {sorted(ys)}")
    gains: dict[str, torch.Tensor] = {}
    for name, y in ys.items():  # y: (N, T, C)
        C = y.shape[-1]
        err = torch.empty(len(grid), C, dtype=y.dtype, device=y.device)
        for i, a in enumerate(grid.tolist()):
            s, _ = lif(a * y, tau=cfg.tau, threshold=cfg.threshold, v_reset=cfg.v_reset)
            err[i] = (s - y).square().mean(dim=(0, 1))
        if not per_channel:
            err = err.mean(dim=1, keepdim=True).expand(-1, C)
        gain = grid[err.argmin(dim=0).cpu()]  # (C,)
        linear = _feeding_linear(student, name)
        linear.weight.mul_(gain.to(linear.weight)[:, None])
        gains[name] = gain.float()
        logger.info("calibrated %s: median gain %.3g, mean squared error %.4g", name, float(gain.median()),
                    float(err.min(dim=0).values.mean()))
    return gains


@torch.no_grad()
def firing_rates(model: SpikeGPTForCausalLM, input_ids: torch.Tensor) -> dict[str, float]:
    """Firing rate (spikes / neuron-steps) of every spike site of a spiking model on ``input_ids`` (B, T),
    recorded with :func:`spikegpt.recording.record_spikes`.

    Returns ``{"model.emb_spike": ..., "model.blocks.{l}.att_lif": ..., "model.blocks.{l}.ffn_lif": ...,
    "mean": mean over the branch LIFs}`` (site paths in ``model``, in module order). ``ValueError`` for a
    non-spiking model.
    """
    if not model.config.spiking:
        raise ValueError("firing_rates needs a spiking model (config.spiking=True)")
    was_training = model.training
    model.eval()
    try:
        with record_spikes(model) as rec:
            model(input_ids=input_ids.to(model.device), use_cache=False)
    finally:
        model.train(was_training)
    return {**rec.rates(), "mean": rec.mean_rate(_branch_sites(model))}
