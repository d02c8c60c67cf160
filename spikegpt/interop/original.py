"""Load checkpoints of the original SpikeGPT code (and, through :mod:`spikegpt.interop.rwkv`, RWKV-4) into this package.

The original code (``ridgerchu/SpikeGPT``) saves a plain PyTorch state dict, e.g. ``SpikeGPT-216M.pth`` on the
Hub (``ridger/SpikeGPT-OpenWebText-216M``)::

    emb.weight                                   (V, C)
    blocks.{l}.ln0.{weight,bias}                 (C,)       l = 0 only
    blocks.{l}.ln1.*, blocks.{l}.ln2.*           (C,)
    blocks.{l}.att.time_decay, att.time_first    (C,)
    blocks.{l}.att.time_mix_{k,v,r}              (1, 1, C)
    blocks.{l}.att.{key,value,receptance,output}.weight   (C, C)
    blocks.{l}.ffn.time_mix_{k,r}                (1, 1, C)
    blocks.{l}.ffn.key.weight (F, C), ffn.receptance.weight (C, C), ffn.value.weight (C, F)
    ln_out.*, head.weight (V, C)

:func:`from_original` reads it with ``torch.load(weights_only=True)`` (no code from the file is run), infers
V, C, L and F from the keys, checks every key and shape, and returns a :class:`SpikeGPTForCausalLM` whose
parallel forward is the original training forward (the original's recurrent demo has known faults; see
``docs/model.md``). The neuron settings are the original's (tau 2, threshold 1, hard reset to 0,
ATan surrogate with alpha 2); pass config keyword arguments to change them, e.g. ``spiking=False``.

    >>> from spikegpt.interop.original import from_original
    >>> model = from_original("SpikeGPT-216M.pth", eos_token_id=0)   # doctest: +SKIP
    >>> model.save_pretrained("spikegpt-216m")                        # doctest: +SKIP

The command line does the same and also writes a tokenizer and the remote code:
``spikegpt convert SpikeGPT-216M.pth spikegpt-216m --tokenizer EleutherAI/gpt-neox-20b``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from spikegpt.configuration_spikegpt import SpikeGPTConfig
from spikegpt.modeling_spikegpt import SpikeGPTForCausalLM
from spikegpt.spike_coding import SpikeEncoder

logger = logging.getLogger(__name__)

# Prefixes that wrappers add to every key (DistributedDataParallel, torch.compile); stripped when all keys have one.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys of a dict that wraps the state dict (Lightning and other trainers).
WRAPPER_KEYS = ("state_dict", "model", "module")
# Shape-defining config fields: an override of these must agree with the checkpoint.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def original_layout(vocab_size: int, hidden_size: int, num_layers: int, intermediate_size: int) -> dict[str, tuple]:
    """The original checkpoint's keys and shapes for a model of this size: ``{key: shape}``.

    ``time_mix_*`` parameters are (1, 1, C) as the original stores them.
    """
    V, C, L, F = vocab_size, hidden_size, num_layers, intermediate_size
    out: dict[str, tuple] = {"emb.weight": (V, C)}
    for l in range(L):
        p = f"blocks.{l}."
        lns = ("ln0", "ln1", "ln2") if l == 0 else ("ln1", "ln2")
        for ln in lns:
            out[p + ln + ".weight"] = (C,)
            out[p + ln + ".bias"] = (C,)
        out[p + "att.time_decay"] = (C,)
        out[p + "att.time_first"] = (C,)
        for c in "kvr":
            out[p + f"att.time_mix_{c}"] = (1, 1, C)
        for name in ("key", "value", "receptance", "output"):
            out[p + f"att.{name}.weight"] = (C, C)
        for c in "kr":
            out[p + f"ffn.time_mix_{c}"] = (1, 1, C)
        out[p + "ffn.key.weight"] = (F, C)
        out[p + "ffn.receptance.weight"] = (C, C)
        out[p + "ffn.value.weight"] = (C, F)
    out["ln_out.weight"] = (C,)
    out["ln_out.bias"] = (C,)
    out["head.weight"] = (V, C)
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# torch's advice after the reason: loading with weights_only=False (which runs code from the file) or
# allow-listing the file's classes; neither is passed on
_ADVICE = re.compile(r"\s*(Please use `torch\.serialization\.|Check the documentation of torch\.load|"
                     r"Re-running `torch\.load`).*", re.DOTALL)


def _load_failure_message(path: str, error: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed with ``error``, in full and in one line, without
    torch's advice to load the file with ``weights_only=False`` (that runs code from the file)."""
    text = _ANSI.sub("", str(error))
    if "WeightsUnpickler error:" in text:  # the weights-only unpickler refused the file: say what it met
        reason = _ADVICE.sub("", text.split("WeightsUnpickler error:", 1)[1])
        reason = " ".join(reason.split()).rstrip(".") or type(error).__name__
        if reason.startswith("Unsupported global"):
            return (
                f"cannot read {path} safely as a state dict of tensors: it holds more than tensors and plain "
                f"containers (dict, list, tuple, numbers, strings), and unpickling the rest would run code from "
                f"the file ({reason}). A state dict saved with torch.save(model.state_dict(), path) holds only "
                f"tensors"
            )
        return (
            f"cannot read {path} safely as a state dict of tensors: the weights-only unpickler cannot parse it "
            f"({reason}); it is not a file written by torch.save, or it is damaged"
        )
    reason = " ".join(_ADVICE.sub("", text).split()) or type(error).__name__
    return f"cannot read {path} as a PyTorch checkpoint: it is damaged or not a file written by torch.save ({reason})"


def _load(path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict itself: from a file (``weights_only``), or a mapping; unwraps trainer containers."""
    if isinstance(path_or_state_dict, Mapping):
        sd: Any = dict(path_or_state_dict)
        where = "the state dict"
    else:
        path = os.fspath(path_or_state_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickled code, corrupt file, not a torch file at all
            raise ValueError(_load_failure_message(path, e)) from e
        where = path
    for _ in range(2):  # {"state_dict": {...}} or {"model": {...}}
        if isinstance(sd, Mapping) and "emb.weight" not in sd:
            inner = [k for k in WRAPPER_KEYS if isinstance(sd.get(k), Mapping)]
            if len(inner) == 1:
                sd = dict(sd[inner[0]])
    if not isinstance(sd, Mapping):
        raise ValueError(f"{where} holds a {type(sd).__name__}, not a state dict (a mapping of names to tensors)")
    for prefix in WRAPPER_PREFIXES:
        if sd and all(isinstance(k, str) and k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{where} is not a state dict of tensors: entries {', '.join(bad[:8])} are not tensors")
    return dict(sd)


def infer_config(state_dict: Mapping[str, torch.Tensor], **config_overrides: Any) -> SpikeGPTConfig:
    """A :class:`SpikeGPTConfig` for an original-layout state dict: V and C from ``emb.weight``, L from the
    highest block index, F from ``blocks.0.ffn.key.weight``; neuron settings are the original's unless
    overridden. Raises ``ValueError`` when the sizes cannot be read or an override contradicts them."""
    emb = state_dict.get("emb.weight")
    if emb is None or emb.dim() != 2:
        got = "missing" if emb is None else f"shape {tuple(emb.shape)}"
        raise ValueError(f"cannot infer the model size: emb.weight (vocab, hidden) is {got}")
    V, C = emb.shape
    layers = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))}
    if not layers:
        raise ValueError("cannot infer the model size: the checkpoint has no blocks.{l}.* keys")
    L = max(layers) + 1
    fk = state_dict.get("blocks.0.ffn.key.weight")
    F = int(fk.shape[0]) if fk is not None and fk.dim() == 2 else 4 * C
    inferred = {"vocab_size": int(V), "hidden_size": int(C), "num_hidden_layers": L, "intermediate_size": F}
    for key in SHAPE_FIELDS:
        if key in config_overrides and config_overrides[key] != inferred[key]:
            raise ValueError(
                f"config override {key}={config_overrides[key]} contradicts the checkpoint, "
                f"which has {key}={inferred[key]}"
            )
    kwargs = dict(
        spiking=True, tau=2.0, threshold=1.0, v_reset=0.0, detach_reset=False, surrogate="atan", surrogate_alpha=2.0,
        layer_norm_epsilon=1e-5, context_length=1024,
    )
    kwargs.update(config_overrides)
    kwargs.update(inferred)
    return SpikeGPTConfig(**kwargs)


def check_original_state_dict(state_dict: Mapping[str, torch.Tensor], config: SpikeGPTConfig) -> None:
    """Raise ``ValueError`` naming every missing, unexpected or mis-shaped key of an original-layout state dict.

    ``time_mix_*`` may be stored as (1, 1, C) (the original) or (C,).
    """
    want = original_layout(config.vocab_size, config.hidden_size, config.num_hidden_layers, config.intermediate_size)
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want]
    misshaped = []
    for k, shape in want.items():
        if k in state_dict:
            got = tuple(state_dict[k].shape)
            ok = got == shape or (".time_mix_" in k and got == shape[-1:])
            if not ok:
                misshaped.append(f"{k} (checkpoint {got}, expected {shape})")
    def listed(keys):
        return ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {listed(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped tensors: {listed(misshaped)}")
    if problems:
        hint = ""
        if any(".ffnPre." in k for k in unexpected):
            hint = " (the 'RWKV-ffnPre' variant, whose block 0 has a ChannelMix instead of a TimeMix: not supported)"
        elif any(k.startswith(("head_q.", "head_k.", "copy_mask")) for k in unexpected):
            hint = " (trained with RWKV_HEAD_QK_DIM > 0: its head_q/head_k copy mechanism is not supported)"
        raise ValueError("not a SpikeGPT checkpoint in the original layout: " + "; ".join(problems) + hint)
    non_float = [k for k, v in state_dict.items() if not v.is_floating_point()]
    if non_float:
        raise ValueError(f"checkpoint tensors must be floating point; not so for: {', '.join(non_float[:8])}")


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and reshape an original-layout state dict to this package's parameter names
    (``model.`` prefix on everything but ``head.weight``; ``time_mix_*`` flattened to (C,))."""
    out = {}
    for k, v in state_dict.items():
        if ".time_mix_" in k:
            v = v.reshape(-1)
        out[k if k == "head.weight" else "model." + k] = v
    return out


def to_original(model: SpikeGPTForCausalLM) -> dict[str, torch.Tensor]:
    """The inverse of :func:`convert_state_dict`: a model's weights in the original layout (detached copies),
    e.g. to run them in the original code."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.removeprefix("model.")
        if ".time_mix_" in k:
            v = v.reshape(1, 1, -1)
        out[k] = v.detach().clone()
    return out


def from_original(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    **config_overrides: Any,
) -> SpikeGPTForCausalLM:
    """Build a :class:`SpikeGPTForCausalLM` from an original SpikeGPT checkpoint.

    ``path_or_state_dict``: a ``.pth`` file (read with ``torch.load(weights_only=True)``; a container such as
    ``{"state_dict": ...}`` or a ``module.`` prefix is unwrapped) or the state dict itself.
    ``dtype``: parameter dtype of the model; None keeps the checkpoint's (fp32 for the published weights).
    ``config_overrides``: :class:`SpikeGPTConfig` keyword arguments (neuron settings, token ids,
    ``context_length``); the shape fields must agree with the checkpoint.
    Returns the model in eval mode. Raises ``ValueError`` naming every missing, unexpected or mis-shaped key,
    ``FileNotFoundError`` for a missing file.
    """
    sd = _load(path_or_state_dict)
    config = infer_config(sd, **config_overrides)
    check_original_state_dict(sd, config)
    dtypes = {v.dtype for v in sd.values()}
    if dtype is None:
        if len(dtypes) != 1:
            raise ValueError(f"checkpoint mixes dtypes {sorted(map(str, dtypes))}: pass dtype= to choose one")
        dtype = dtypes.pop()
    copy = isinstance(path_or_state_dict, Mapping)  # never alias the caller's tensors
    weights = {k: v.to(dtype=dtype, copy=copy).contiguous() for k, v in convert_state_dict(sd).items()}
    with torch.device("meta"):
        model = SpikeGPTForCausalLM(config)
    # Spike codes of the inputs (``spike_inputs``) are not in an original checkpoint: they start at their init.
    weights.update({f"{name}.gain": torch.tensor(m.initial_gain, dtype=dtype)
                    for name, m in model.named_modules() if isinstance(m, SpikeEncoder)})
    model.load_state_dict(weights, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the checkpoint does not carry (e.g. a new buffer) was never materialised
        raise RuntimeError(f"from_original: {', '.join(left[:8])} not set by the checkpoint")
    n = sum(p.numel() for p in model.parameters())
    logger.info(
        "converted an original SpikeGPT checkpoint: %d layers, width %d, FFN %d, vocab %d, %.1fM parameters, %s",
        config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size, n / 1e6, dtype,
    )
    return model.eval()
