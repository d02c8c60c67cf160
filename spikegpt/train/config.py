"""Training configuration: one YAML file per recipe, every key overridable from the command line.

A recipe holds the run settings at the top level and the model's ``SpikeGPTConfig`` keyword arguments in a
``model:`` section::

    output_dir: runs/tiny
    data: builtin:python-docs
    max_steps: 300
    model: {hidden_size: 256, num_hidden_layers: 4, spiking: true}

Command-line overrides come as ``--key value`` (or ``--key=value``). A key is a top-level field of
:class:`TrainConfig`, a dotted path into a section (``--model.hidden_size 128``,
``--objective_args.temperature 2``), or a bare key that already exists in the ``model`` section
(``--spiking false``). Values are parsed as YAML scalars (``1e-3``, ``true``, ``null``, ``[1, 2]``) and
checked against the field's type; a key given without a value means ``true`` (``--resume``).

The ``model`` section is checked when the config is built: a key that is not a :data:`MODEL_KEYS` argument
is refused (the error names the closest valid one), and so is a value ``SpikeGPTConfig`` refuses.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spikegpt.configuration_spikegpt import SpikeGPTConfig

# What a recipe's model section may set: the arguments of SpikeGPTConfig (its token ids and
# tie_word_embeddings included), none of the other PretrainedConfig fields.
MODEL_KEYS = tuple(name for name, param in inspect.signature(SpikeGPTConfig.__init__).parameters.items()
                   if name != "self" and param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
# vocab_size of the load-time check when the section leaves it to the tokenizer (any token id passes; the ids
# are checked against the real vocabulary when the model is built)
PLACEHOLDER_VOCAB_SIZE = 2**31 - 1


def closest(name: str, candidates: typing.Iterable[str]) -> str | None:
    """The candidate most like ``name`` (``difflib``), or None when none is close."""
    found = difflib.get_close_matches(name, list(candidates), n=1)
    return found[0] if found else None


def check_model_section(model: dict[str, Any]) -> None:
    """Raise ``ValueError`` for a key of a recipe's model section that is not in :data:`MODEL_KEYS` (naming
    it and the closest valid key) or a value ``SpikeGPTConfig`` refuses (naming the field)."""
    for key in model:
        if key not in MODEL_KEYS:
            near = closest(str(key), MODEL_KEYS)
            hint = f"did you mean {near!r}? " if near else ""
            raise ValueError(f"unknown key {key!r} in the model section: {hint}"
                             f"the model section takes SpikeGPTConfig arguments: {', '.join(MODEL_KEYS)}")
    try:
        SpikeGPTConfig(**{"vocab_size": PLACEHOLDER_VOCAB_SIZE, **model})
    except (TypeError, ValueError) as e:
        raise ValueError(f"model section: {e}") from None


@dataclass
class TrainConfig:
    """Every setting of a pretraining run (see ``configs/*.yaml`` for commented recipes)."""

    # --- run ---
    output_dir: str = "runs/spikegpt"
    seed: int = 0
    resume: str | None = None  # "latest" / "true" (newest checkpoint in output_dir) or a checkpoint directory
    overwrite_output_dir: bool = False  # start a new run in an output_dir holding files (see train.run_dir)
    num_threads: int | None = None  # torch.set_num_threads on CPU; None leaves torch's default
    # --- data ---
    data: str = "builtin:python-docs"  # prepared directory (spikegpt prepare), Megatron .bin/.idx prefix, Hub
    #                                    dataset name, local file/directory/glob, or builtin:python-docs
    data_config: str | None = None  # Hub dataset configuration name
    data_split: str = "train"  # Hub split to read
    data_revision: str | None = None  # Hub revision (branch, tag or commit)
    text_field: str = "text"
    text_unit: str = "paragraph"  # .txt files: one document per "paragraph", "line" or whole "document"
    val_fraction: float = 0.05  # documents held out for validation (chosen by a hash keyed on the seed)
    val_max_tokens: int = 65536  # validation budget in tokens (whole documents); 0 = every held-out document
    shuffle_buffer: int = 10000  # documents in the shuffle buffer of the training stream (streamed text)
    prefetch: int = 4  # batches made ahead by the background data worker
    # --- tokenizer ---
    tokenizer: str = "bpe"  # "bpe" (trained here), "byte", "char", or a Hub name / local directory
    tokenizer_vocab_size: int = 4096  # for "bpe" (merges included) and "char" (most frequent characters)
    tokenizer_train_chars: int = 50_000_000  # text read from the training split to train "bpe" / "char"
    # --- model ---
    model: dict[str, Any] = field(default_factory=dict)  # SpikeGPTConfig keyword arguments
    init_from: str | None = None  # start from these weights (model directory or Hub id) instead of random
    # --- optimisation ---
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum_steps: int = 1
    context_length: int | None = None  # training block length; None = model.context_length
    optimizer: str = "adam"  # "adam" (the original) or "adamw"
    lr: float = 6e-4
    min_lr: float = 1e-5  # cosine floor (the original decays 6e-4 -> 1e-5)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 4e-9
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    mixed_precision: str = "auto"  # "auto" (bf16 on a GPU that has it, else fp32), "no", "bf16", "fp16"
    gradient_checkpointing: bool = False
    parallelism: str = "ddp"  # with several processes: "ddp" (replicated) or "fsdp" (FSDP2, sharded)
    objective: str = "lm"  # training loss, from spikegpt.train.objectives.OBJECTIVES
    objective_args: dict[str, Any] = field(default_factory=dict)
    # --- logging, evaluation, checkpoints ---
    log_interval: int = 10
    eval_interval: int = 0  # steps between validations; 0 = only at the end
    eval_batch_size: int = 8
    sample_interval: int = 0  # steps between generated samples; 0 = only at the end
    sample_prompt: str = "The"
    sample_max_new_tokens: int = 64
    sample_temperature: float = 0.8
    sample_top_k: int = 40
    save_interval: int = 0  # steps between checkpoints; 0 = only at the end (and on Ctrl-C)
    keep_checkpoints: int = 3
    progress: bool = True
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    debug_rank_log: bool = False  # write per-rank parameter checksums and batch hashes (tests)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that is out of range."""
        positive = ["max_steps", "batch_size", "grad_accum_steps", "eval_batch_size", "tokenizer_vocab_size",
                    "keep_checkpoints", "shuffle_buffer", "log_interval", "prefetch"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        non_negative = ["warmup_steps", "eval_interval", "sample_interval", "save_interval", "val_max_tokens",
                        "weight_decay", "grad_clip", "sample_max_new_tokens", "min_lr"]
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must not exceed lr (the cosine decays from lr to min_lr), got min_lr "
                             f"{self.min_lr} > lr {self.lr}")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError(f"context_length must be >= 2 (one input and one target), got {self.context_length}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.parallelism not in ("ddp", "fsdp"):
            raise ValueError(f"parallelism must be 'ddp' or 'fsdp', got {self.parallelism!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.text_unit not in ("paragraph", "line", "document"):
            raise ValueError(f"text_unit must be paragraph, line or document, got {self.text_unit!r}")
        if not isinstance(self.model, dict):
            raise ValueError(f"the model section must be a mapping of SpikeGPTConfig kwargs, got {self.model!r}")
        check_model_section(self.model)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (what is written to ``train_config.yaml``)."""
        return dataclasses.asdict(self)


_SECTIONS = ("model", "objective_args")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check/convert ``value`` (parsed from YAML) against the annotation ``tp`` of field ``name``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{name}: cannot use {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        value = _parse_scalar(value)  # "1e-3" in a YAML file is a string
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value if isinstance(value, str) else str(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    return value


def _parse_scalar(text: str) -> Any:
    """YAML scalar, plus the numbers YAML 1.1 leaves as strings (``1e-3``)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        for number in (int, float):
            try:
                return number(value)
            except ValueError:
                pass
    return value


def parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """Split ``["--a", "1", "--b=2", "--flag"]`` into ``[("a", "1"), ("b", "2"), ("flag", "true")]``."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise ValueError(f"expected --key [value], got {tok!r}")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        pairs.append((key.replace("-", "_") if "." not in key else key, value))
    return pairs


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[str, str]]) -> dict[str, Any]:
    """Apply ``(key, text)`` overrides to a raw config mapping (see the module docstring for key forms)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    fields = _field_types()
    for key, text in overrides:
        if key in fields:
            tp = fields[key]
            # strings stay verbatim ("--data 123" names a file "123"); other types parse as YAML
            value = text if tp in (str, str | None) and text not in ("null", "~") else _parse_scalar(text)
            raw[key] = value
        elif "." in key:
            section, sub = key.split(".", 1)
            if section not in _SECTIONS:
                raise ValueError(f"unknown config section {section!r} in --{key}; sections: {list(_SECTIONS)}")
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ValueError(f"config section {section!r} is not a mapping")
            raw[section][sub] = _parse_scalar(text)
        elif isinstance(raw.get("model"), dict) and key in raw["model"]:
            raw["model"][key] = _parse_scalar(text)
        else:
            raise ValueError(_unknown_key_message(key, raw.get("model")))
    return raw


def _unknown_key_message(key: str, model: Any) -> str:
    """Why ``--key`` is refused, with the closest training setting or model argument."""
    near = closest(key, [*_field_types(), *MODEL_KEYS])
    if near in MODEL_KEYS:
        form = f"--{near}" if isinstance(model, dict) and near in model else f"--model.{near}"
        hint = f"; did you mean {form}?"
    else:
        hint = f"; did you mean --{near}?" if near is not None else ""
    return (f"unknown config key --{key}: not a training setting, nor a key of this recipe's model section"
            f"{hint}")


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from a mapping; unknown keys raise ``ValueError``."""
    fields = _field_types()
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(fields)}")
    kwargs = {k: _coerce(k, v, fields[k]) for k, v in raw.items()}
    return TrainConfig(**kwargs)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or start from the defaults when ``path`` is None) and apply CLI-style overrides.

    ``overrides`` is an argv-like list (``["--max_steps", "10", "--model.spiking=false"]``).
    Raises ``FileNotFoundError`` naming a missing recipe and ``ValueError`` for bad keys or values.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping of settings, got {type(loaded).__name__}")
        raw = loaded or {}
    raw = apply_overrides(raw, parse_overrides(overrides or []))
    return config_from_dict(raw)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Validate ``config`` (``ValueError`` as :meth:`TrainConfig.validate`) and write it as YAML (loadable
    again with :func:`load_config`)."""
    config.validate()
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
