"""The recurrent state of a SpikeGPT model: everything needed to continue a sequence.

Per layer and batch row, seven vectors of width C:

| field      | what                                                       | dtype            |
|------------|------------------------------------------------------------|------------------|
| att_shift  | last normalised input of TimeMix (token-shift source)      | model dtype      |
| ffn_shift  | last normalised input of ChannelMix                        | model dtype      |
| wkv_num    | WKV numerator, scaled by e^-max                            | fp32 (fp64)      |
| wkv_den    | WKV denominator, scaled by e^-max                          | fp32 (fp64)      |
| wkv_max    | WKV running max                                            | fp32 (fp64)      |
| att_mem    | membrane of the TimeMix branch LIF                         | fp32 (fp64)      |
| ffn_mem    | membrane of the ChannelMix branch LIF                      | fp32 (fp64)      |

A spike-driven model with LIF spike codes (``spike_inputs="lif"``) has two more fields, None otherwise:

| field      | what                                                                       | shape          |
|------------|----------------------------------------------------------------------------|----------------|
| enc_mem    | membranes of each block's seven input codes (TimeMix k, v, r, o; ChannelMix k, r, v) | (L, B, 6C + F) |
| head_mem   | membrane of the head's input code                                          | (1, B, C)      |

Each field is one (L, B, C) tensor (the two optional ones as in the table), so reordering beams or selecting rows
is one ``index_select`` along dim 1; the accumulating fields are fp64 for an fp64 model and fp32 otherwise. The
memory is constant in the sequence length. The class is a registered pytree node, so ``torch.export`` and
``torch.compile`` take it as an input and an output.

A state is saved to and loaded from a safetensors file (:meth:`SpikeGPTState.save`, :meth:`SpikeGPTState.load`,
:meth:`SpikeGPTState.load_with_info`); the file records the model config that made it (:func:`state_config_hash`
over :data:`STATE_CONFIG_FIELDS`), the dtype, the shape and the number of tokens consumed, and loading refuses a
file made by another model or dtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from spikegpt.kernels.wkv.common import NEG_INF
from spikegpt.spike_coding import encoder_state_width

_SHIFT_FIELDS = ("att_shift", "ffn_shift")

STATE_FILE_FORMAT = "spikegpt-state"
STATE_FILE_VERSION = 1

# The config fields that decide what a state means: what the forward computes from the token ids up to the state
# (shape, vocabulary, neuron dynamics, LayerNorm). Their values are what ``state_config_hash`` hashes.
STATE_CONFIG_FIELDS = (
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "spiking", "tau",
    "threshold", "v_reset", "layer_norm_epsilon", "spike_inputs",
)
# Fields hashed only when they differ from these values (so the hash of a model without them is unchanged).
_DEFAULTED_CONFIG_FIELDS = {"spike_inputs": "none"}
_OPTIONAL_FIELDS = ("enc_mem", "head_mem")
# Every other field of SpikeGPTConfig, and why it does not count (a test keeps the two lists complete).
STATE_CONFIG_IGNORED = {
    "surrogate": "backward only (the forward is a Heaviside step)",
    "surrogate_alpha": "backward only",
    "detach_reset": "backward only",
    "dropout": "training only (states are made in eval mode)",
    "l2wrap_coef": "loss only",
    "context_length": "a training-recipe setting",
    "initializer_range": "initialisation only",
    "spike_gain": "initialisation only (the codes' gains are weights)",
    "kernel_backend": "run-time setting, same math",
    "batch_invariant": "run-time setting, same math",
    "prefill_chunk_size": "run-time setting, same math to rounding",
    "use_cache": "generation bookkeeping",
    "pad_token_id": "generation bookkeeping",
    "bos_token_id": "generation bookkeeping",
    "eos_token_id": "generation bookkeeping",
    "tie_word_embeddings": "the head only, which the state does not depend on",
}
_FLOAT_CONFIG_FIELDS = ("tau", "threshold", "v_reset", "layer_norm_epsilon")


def accumulation_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """dtype of the WKV and membrane fields for a model of ``model_dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


def state_config(config) -> dict:
    """The :data:`STATE_CONFIG_FIELDS` of ``config`` (a SpikeGPTConfig), normalised (numbers as ``float``, so
    ``tau=2`` and ``tau=2.0`` agree): what :func:`state_config_hash` hashes."""
    out = {}
    for name in STATE_CONFIG_FIELDS:
        if not hasattr(config, name):
            raise ValueError(f"the config has no field {name!r}: not a SpikeGPT config ({type(config).__name__})")
        v = getattr(config, name)
        if name in _DEFAULTED_CONFIG_FIELDS and v == _DEFAULTED_CONFIG_FIELDS[name]:
            continue
        out[name] = float(v) if name in _FLOAT_CONFIG_FIELDS and v is not None else v
    return out


def _canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _hash_fields(fields_: Mapping) -> str:
    return hashlib.sha256(_canonical_json(dict(fields_)).encode()).hexdigest()


def state_config_hash(config) -> str:
    """SHA-256 (hex) of the canonical JSON (sorted keys, no spaces) of :func:`state_config`: equal for two configs
    exactly when they agree on every field that changes what a state means or its shape. Run-time settings, names,
    versions and generation or training bookkeeping are left out (see :data:`STATE_CONFIG_IGNORED`). It does not
    cover the weights: two checkpoints of one architecture share it."""
    return _hash_fields(state_config(config))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parse_dtype(name: str, path) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{path} is not a valid SpikeGPT state file: unknown dtype {name!r} in its metadata")
    return dtype


def _describe_config(values: Mapping, names: Sequence[str]) -> str:
    return ", ".join(f"{n} {values.get(n, _DEFAULTED_CONFIG_FIELDS.get(n))!r}" for n in names)


def _optional_widths(config) -> dict[str, tuple[int, int] | None]:
    """(leading dim, width) of each optional field a model of ``config`` carries, None for those it has not."""
    width = encoder_state_width(config)
    if not width:
        return {"enc_mem": None, "head_mem": None}
    return {"enc_mem": (config.num_hidden_layers, width), "head_mem": (1, config.hidden_size)}


def _tensor_digest(tensors: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_tokens(tokens, batch_size: int):
    if tokens is None:
        return None
    if isinstance(tokens, bool):
        raise ValueError(f"tokens must be an int or a list of {batch_size} ints (one per row), got {tokens!r}")
    if isinstance(tokens, int):
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        return tokens
    if isinstance(tokens, Sequence) and not isinstance(tokens, str):
        out = list(tokens)
        if len(out) != batch_size or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in out):
            raise ValueError(f"tokens must be an int or a list of {batch_size} ints >= 0 (one per row), got {tokens!r}")
        return out
    raise ValueError(f"tokens must be an int or a list of {batch_size} ints (one per row), got {tokens!r}")


@dataclass(frozen=True)
class StateFileInfo:
    """What a state file says about itself (its metadata; see :meth:`SpikeGPTState.save`).

    Attributes:
        path: the file.
        format_version: version of the file layout.
        tokens: the number of tokens the state has consumed, as given to ``save`` (an int, a list of one int per
            row, or None when not recorded).
        dtype: the dtype of the model that made it (that of the shift fields); ``accumulation_dtype`` that of
            the other five.
        num_layers, batch_size, hidden_size: L, B, C.
        config_sha256: :func:`state_config_hash` of the model's config, None for a file saved without a config.
        config: the hashed fields themselves (empty without a config).
        model: the model's ``name_or_path`` when it was saved (informational, never checked).
        extra: the caller's ``metadata`` given to ``save``.
    """

    path: Path
    format_version: int
    tokens: int | list[int] | None
    dtype: torch.dtype
    accumulation_dtype: torch.dtype
    num_layers: int
    batch_size: int
    hidden_size: int
    config_sha256: str | None
    config: dict = field(default_factory=dict)
    model: str | None = None
    extra: dict = field(default_factory=dict)

    def check_config(self, config) -> None:
        """Raise ``ValueError`` unless the file was made by a model with ``config``'s :func:`state_config_hash`,
        naming the fields that differ. A file saved without a config can only be checked for its shape."""
        want = state_config(config)
        if self.config_sha256 is not None and self.config_sha256 != _hash_fields(want):
            diff = [n for n in STATE_CONFIG_FIELDS if self.config.get(n) != want.get(n)]
            if diff:
                raise ValueError(
                    f"state {self.path} was made by a model with {_describe_config(self.config, diff)}; this model "
                    f"has {_describe_config(want, diff)}: a state continues only the model that made it"
                )
            raise ValueError(f"state {self.path} was made by a model with config hash {self.config_sha256}; this "
                             f"model has {_hash_fields(want)}")
        shape = (config.num_hidden_layers, config.hidden_size)
        if (self.num_layers, self.hidden_size) != shape:
            raise ValueError(
                f"state {self.path} has {self.num_layers} layers of width {self.hidden_size}; this model has "
                f"{shape[0]} of width {shape[1]}"
            )

    def check_dtype(self, dtype: torch.dtype) -> None:
        """Raise ``ValueError`` unless the file was made by a model of ``dtype``."""
        if dtype != self.dtype:
            raise ValueError(
                f"state {self.path} was made by a {_dtype_name(self.dtype)} model; loading it for a "
                f"{_dtype_name(dtype)} model (dtype={dtype}) is refused: a state continues the dtype that made it. "
                f"Load it without dtype= and convert with state.to(dtype={dtype}) to accept the rounding"
            )


@dataclass
class SpikeGPTState:
    """Recurrent state of all layers; each field is an (L, B, C) tensor, the optional ``enc_mem`` (L, B, 6C + F)
    and ``head_mem`` (1, B, C) None unless the model has LIF spike codes (see the module docstring)."""

    att_shift: torch.Tensor
    ffn_shift: torch.Tensor
    wkv_num: torch.Tensor
    wkv_den: torch.Tensor
    wkv_max: torch.Tensor
    att_mem: torch.Tensor
    ffn_mem: torch.Tensor
    enc_mem: torch.Tensor | None = None
    head_mem: torch.Tensor | None = None

    @classmethod
    def empty(cls, config, batch_size: int, device=None, dtype: torch.dtype = torch.float32) -> SpikeGPTState:
        """The state of a fresh sequence for ``config`` and ``batch_size`` rows of a ``dtype`` model: zeros,
        and a very negative WKV max."""
        L, C = config.num_hidden_layers, config.hidden_size
        acc = accumulation_dtype(dtype)
        z = torch.zeros(L, batch_size, C, device=device, dtype=dtype)
        za = torch.zeros(L, batch_size, C, device=device, dtype=acc)
        extra = {name: None if dims is None else torch.zeros(dims[0], batch_size, dims[1], device=device, dtype=acc)
                 for name, dims in _optional_widths(config).items()}
        return cls(
            att_shift=z, ffn_shift=z.clone(), wkv_num=za, wkv_den=za.clone(),
            wkv_max=torch.full_like(za, NEG_INF), att_mem=za.clone(), ffn_mem=za.clone(), **extra,
        )

    def names(self) -> list[str]:
        """The names of the fields this state has (the seven, then those of ``enc_mem`` / ``head_mem`` not None)."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def tensors(self) -> list[torch.Tensor]:
        """The fields this state has (see :meth:`names`), in field order."""
        return [getattr(self, n) for n in self.names()]

    def _map(self, fn) -> SpikeGPTState:
        """A state of ``fn(name, tensor)`` for every field present (the absent stay None)."""
        return SpikeGPTState(**{n: fn(n, getattr(self, n)) for n in self.names()})

    @property
    def batch_size(self) -> int:
        return self.att_shift.shape[1]

    @property
    def num_layers(self) -> int:
        return self.att_shift.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.att_shift.shape[2]

    def layers(self) -> list[tuple[torch.Tensor | None, ...]]:
        """Per layer, its seven (B, C) tensors in field order, then its (B, 6C + F) ``enc_mem`` (or None): views,
        one ``unbind`` per field."""
        L = self.num_layers
        per_field = [(None,) * L if t is None else t.unbind(0) for t in (
            self.att_shift, self.ffn_shift, self.wkv_num, self.wkv_den, self.wkv_max, self.att_mem, self.ffn_mem,
            self.enc_mem)]
        return list(zip(*per_field))

    @classmethod
    def stack(cls, layers: Sequence[Sequence[torch.Tensor | None]], head_mem: torch.Tensor | None = None,
              ) -> SpikeGPTState:
        """Build a state from per-layer tuples as :meth:`layers` gives them (its inverse), and ``head_mem``."""
        stacked = [None if ts[0] is None else torch.stack(ts) for ts in zip(*layers)]
        return cls(*stacked, head_mem=head_mem)

    @classmethod
    def cat(cls, states: Sequence[SpikeGPTState]) -> SpikeGPTState:
        """The rows of several states, one after another along the batch axis."""
        if not states:
            raise ValueError("SpikeGPTState.cat needs at least one state")
        names = states[0].names()
        if any(s.names() != names for s in states):
            raise ValueError("SpikeGPTState.cat: the states have different fields (models with and without LIF codes)")
        return cls(**{n: torch.cat([getattr(s, n) for s in states], dim=1) for n in names})

    def index_select(self, index: torch.Tensor) -> SpikeGPTState:
        """Rows ``index`` of the batch (beam reordering, row selection)."""
        index = index.to(self.att_shift.device)
        return self._map(lambda n, t: t.index_select(1, index))

    def repeat_interleave(self, repeats: int) -> SpikeGPTState:
        """Each batch row repeated ``repeats`` times (for beams or several samples per prompt)."""
        return self._map(lambda n, t: t.repeat_interleave(repeats, dim=1))

    def detach(self) -> SpikeGPTState:
        """The same values with no autograd history (truncated BPTT across windows)."""
        return self._map(lambda n, t: t.detach())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SpikeGPTState:
        """The same state on ``device`` and/or for a model of ``dtype`` (the shift fields take ``dtype``, the
        accumulating fields its accumulation dtype)."""
        acc = None if dtype is None else accumulation_dtype(dtype)
        return self._map(lambda n, t: t.to(device=device, dtype=dtype if n in _SHIFT_FIELDS else acc))

    def validate(self, config, batch_size: int, dtype: torch.dtype | None = None, device=None) -> None:
        """Raise ``ValueError`` when this state cannot continue a batch of ``batch_size`` for ``config``
        (and, when given, a model of ``dtype`` on ``device``), naming the field and what it needs."""
        core = (config.num_hidden_layers, batch_size, config.hidden_size)
        optional = _optional_widths(config)
        for f in fields(self):
            t = getattr(self, f.name)
            want = core
            if f.name in _OPTIONAL_FIELDS:
                dims = optional[f.name]
                if dims is None and t is not None:
                    raise ValueError(f"state.{f.name} is set, but this model has no LIF spike codes (spike_inputs="
                                     f"{config.spike_inputs!r}): the state comes from a different model")
                if dims is None:
                    continue
                if t is None:
                    raise ValueError(f"state.{f.name} is missing: this model's LIF spike codes (spike_inputs='lif') "
                                     "keep membranes there; the state comes from a model without them")
                want = (dims[0], batch_size, dims[1])
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"state.{f.name} must be a tensor, got {type(t).__name__}")
            if f.name in _OPTIONAL_FIELDS and tuple(t.shape) != want:
                raise ValueError(f"state.{f.name} has shape {tuple(t.shape)} but this call needs {want}: the state "
                                 "comes from a different batch or model")
            if tuple(t.shape) != want:
                what = (
                    "batch size" if t.dim() == 3 and t.shape[0] == want[0] and t.shape[2] == want[2]
                    else "model (layers or hidden size)"
                )
                raise ValueError(
                    f"state.{f.name} has shape {tuple(t.shape)} but this call needs (layers, batch, hidden) = "
                    f"{want}: the state comes from a different {what}"
                )
            if dtype is not None:
                need = dtype if f.name in _SHIFT_FIELDS else accumulation_dtype(dtype)
                if t.dtype != need:
                    raise ValueError(
                        f"state.{f.name} is {t.dtype} but a {dtype} model needs {need}: convert it with "
                        f"state.to(dtype={dtype})"
                    )
            if device is not None and t.device != torch.device(device):
                raise ValueError(f"state.{f.name} is on {t.device} but the model is on {device}: use state.to(device)")

    # --- files ---

    def save(
        self,
        path: str | os.PathLike,
        *,
        config=None,
        tokens: int | Sequence[int] | None = None,
        overwrite: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        """Write the state to a safetensors file at ``path``; returns the path.

        The file holds the fields (on the CPU, under their names; ``enc_mem`` and ``head_mem`` when present) and
        the metadata ``format`` (``"spikegpt-state"``), ``format_version``, ``dtype`` / ``accumulation_dtype``,
        ``num_layers`` / ``batch_size`` / ``hidden_size``, ``tokens`` (JSON: ``tokens`` as given, or null),
        ``tensors_sha256`` (of the tensor bytes, checked on load), ``spikegpt_version``, ``extra`` (JSON of
        ``metadata``), and with a
        ``config``: ``config_sha256`` (:func:`state_config_hash`), ``config`` (JSON of the hashed fields) and
        ``model`` (its ``name_or_path``, informational).

        Args:
            config: the config of the model that made the state (checked against the state's shape); without
                it the file carries no config hash and loading can check only the shape.
            tokens: how many tokens the state has consumed: an int, or one int per batch row.
            overwrite: replace an existing file (default: refuse).
            metadata: extra string keys and values to keep in the file (``info.extra`` on load).

        The write is atomic: a temporary file in the same directory, then a rename; an interrupted save leaves
        any existing file as it was.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
            FileNotFoundError: the directory of ``path`` does not exist.
            ValueError: an inconsistent state (shapes, dtypes), one that does not fit ``config``, bad ``tokens``.
        """
        from safetensors.torch import save as st_save

        path = Path(os.fspath(path))
        self._check_consistent()
        if config is not None:
            self.validate(config, self.batch_size)
        tokens = _check_tokens(tokens, self.batch_size)
        extra = dict(metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise ValueError("metadata must map strings to strings")
        if path.is_dir():
            raise IsADirectoryError(f"cannot save the state to {path}: it is a directory")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot save the state to {path}: directory {path.parent} does not exist")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists: pass overwrite=True to replace it")
        tensors = {n: t.detach().to("cpu", copy=True).contiguous() for n, t in zip(self.names(), self.tensors())}
        meta = {
            "format": STATE_FILE_FORMAT,
            "format_version": str(STATE_FILE_VERSION),
            "dtype": _dtype_name(self.att_shift.dtype),
            "accumulation_dtype": _dtype_name(self.wkv_num.dtype),
            "num_layers": str(self.num_layers),
            "batch_size": str(self.batch_size),
            "hidden_size": str(self.hidden_size),
            "tokens": json.dumps(tokens),
            "tensors_sha256": _tensor_digest(list(tensors.values())),
            "spikegpt_version": _package_version(),
            "extra": _canonical_json(extra),
        }
        if config is not None:
            fields_ = state_config(config)
            meta.update(config_sha256=_hash_fields(fields_), config=_canonical_json(fields_),
                        model=str(getattr(config, "name_or_path", "") or ""))
        data = st_save(tensors, metadata=meta)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # fails if the name was taken meanwhile: never clobbers
                except FileExistsError:
                    raise FileExistsError(f"{path} exists: pass overwrite=True to replace it") from None
                except OSError:  # no hard links on this filesystem
                    if path.exists():
                        raise FileExistsError(f"{path} exists: pass overwrite=True to replace it") from None
                    os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        return path

    @staticmethod
    def read_info(path: str | os.PathLike) -> StateFileInfo:
        """The metadata of the state file at ``path`` (see :meth:`save`), without reading the tensors.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: naming ``path``: not a safetensors file, truncated, or not a SpikeGPT state file.
        """
        return _read_file(path, tensors=False)[1]

    @classmethod
    def load(cls, path: str | os.PathLike, *, config=None, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None) -> SpikeGPTState:
        """The state saved at ``path`` (see :meth:`load_with_info`, which also returns the file's metadata)."""
        return cls.load_with_info(path, config=config, dtype=dtype, device=device)[0]

    @classmethod
    def load_with_info(cls, path: str | os.PathLike, *, config=None, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> tuple[SpikeGPTState, StateFileInfo]:
        """The state saved at ``path`` and the file's metadata (``info.tokens``: the tokens it has consumed).

        Args:
            config: the config of the model that will continue the state: refused unless the file was made by a
                model with the same :func:`state_config_hash` (the error names the fields that differ).
            dtype: the dtype of that model: refused unless the file was made by a model of this dtype (no
                conversion on load; ``state.to(dtype=...)`` converts explicitly).
            device: where to put the tensors (default: the CPU).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: naming ``path``: not a state file, truncated or corrupt, another model, another dtype.
        """
        tensors, info = _read_file(path, tensors=True)
        if config is not None:
            info.check_config(config)
        if dtype is not None:
            info.check_dtype(dtype)
        state = cls(**tensors)
        if device is not None:
            state = state.to(device=device)
        return state, info

    def _check_consistent(self) -> None:
        """Raise ``ValueError`` unless the seven fields are (L, B, C) tensors of one shape, ``enc_mem`` /
        ``head_mem`` both absent or (L, B, W) / (1, B, C), the shift fields of one floating dtype and the others
        of its accumulation dtype."""
        shape = None
        if (self.enc_mem is None) != (self.head_mem is None):
            raise ValueError("state.enc_mem and state.head_mem must both be set (LIF spike codes) or both be None")
        for n in self.names():
            t = getattr(self, n)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"state.{n} must be a tensor, got {type(t).__name__}")
            if t.dim() != 3:
                raise ValueError(f"state.{n} must be (layers, batch, width), got shape {tuple(t.shape)}")
            shape = shape or tuple(t.shape)
            want = {"enc_mem": (shape[0], shape[1], t.shape[2]), "head_mem": (1, shape[1], shape[2])}.get(n, shape)
            if tuple(t.shape) != want:
                raise ValueError(f"state.{n} has shape {tuple(t.shape)} but state.att_shift {shape} needs {want}")
        dtype = self.att_shift.dtype
        if not dtype.is_floating_point:
            raise ValueError(f"state.att_shift must be floating point, got {dtype}")
        for n in self.names():
            need = dtype if n in _SHIFT_FIELDS else accumulation_dtype(dtype)
            if getattr(self, n).dtype != need:
                raise ValueError(f"state.{n} is {getattr(self, n).dtype} but a {dtype} state needs {need}")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spikegpt")
    except PackageNotFoundError:
        return "unknown"


def _read_file(path, tensors: bool):
    """(tensors or None, info) of a state file; every failure names the path."""
    from safetensors import safe_open

    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"state file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a SpikeGPT state file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            names = set(fh.keys())
            data = {n: fh.get_tensor(n) for n in names} if tensors else None
    except Exception as e:  # not safetensors, truncated header or data
        raise ValueError(f"{path} is not a readable SpikeGPT state file (not safetensors, truncated or corrupt?): "
                         f"{type(e).__name__}: {e}") from e
    if meta.get("format") != STATE_FILE_FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a SpikeGPT state file (no format={STATE_FILE_FORMAT!r}"
                         f" in its metadata)")
    try:
        version = int(meta["format_version"])
        values = dict(
            tokens=json.loads(meta["tokens"]), dtype=meta["dtype"], accumulation_dtype=meta["accumulation_dtype"],
            num_layers=int(meta["num_layers"]), batch_size=int(meta["batch_size"]),
            hidden_size=int(meta["hidden_size"]), config=json.loads(meta["config"]) if "config" in meta else {},
            extra=json.loads(meta.get("extra", "{}")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a valid SpikeGPT state file: bad or missing metadata ({e!r})") from e
    if not isinstance(values["config"], dict) or not isinstance(values["extra"], dict):
        raise ValueError(f"{path} is not a valid SpikeGPT state file: bad config or extra in its metadata")
    if version > STATE_FILE_VERSION:
        raise ValueError(f"{path} is a SpikeGPT state file of format version {version}; this spikegpt reads up to "
                         f"version {STATE_FILE_VERSION} (upgrade spikegpt)")
    values.update(dtype=_parse_dtype(values["dtype"], path),
                  accumulation_dtype=_parse_dtype(values["accumulation_dtype"], path))
    info = StateFileInfo(path=path, format_version=version, config_sha256=meta.get("config_sha256"),
                         model=meta.get("model") or None, **values)
    core = {f.name for f in fields(SpikeGPTState)} - set(_OPTIONAL_FIELDS)
    if names not in (core, core | set(_OPTIONAL_FIELDS)):
        raise ValueError(f"{path} is not a valid SpikeGPT state file: it holds tensors {sorted(names)}, expected "
                         f"{sorted(core)} (and {list(_OPTIONAL_FIELDS)} for a model with LIF spike codes)")
    if info.config_sha256 is not None and _hash_fields(info.config) != info.config_sha256:
        raise ValueError(f"{path} is corrupt: its config does not match its config_sha256")
    if data is not None:
        shape = (info.num_layers, info.batch_size, info.hidden_size)
        order = [f.name for f in fields(SpikeGPTState) if f.name in names]
        for n in order:
            t = data[n]
            need = info.dtype if n in _SHIFT_FIELDS else info.accumulation_dtype
            want = {"enc_mem": (shape[0], shape[1], t.shape[-1]), "head_mem": (1, *shape[1:])}.get(n, shape)
            if t.dim() != 3 or tuple(t.shape) != want or t.dtype != need:
                raise ValueError(f"{path} is corrupt: {n} is {tuple(t.shape)} {t.dtype}, its metadata says "
                                 f"{want} {need}")
        if _tensor_digest([data[n] for n in order]) != meta.get("tensors_sha256"):
            raise ValueError(f"{path} is corrupt: its tensors do not match their checksum (tensors_sha256)")
    return data, info


torch.export.register_dataclass(SpikeGPTState, serialized_type_name=f"{SpikeGPTState.__module__}.SpikeGPTState")
