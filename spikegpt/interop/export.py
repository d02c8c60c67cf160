"""Export of the one-token generation step, ``(input_ids (B, 1), state) -> (logits (B, V), state)``, for deployment.

| what                    | gives                                                                               |
|-------------------------|-------------------------------------------------------------------------------------|
| :func:`export_step`     | a ``torch.export.ExportedProgram`` of the step (the state a :class:`SpikeGPTState`)   |
| :func:`export_onnx`     | the same step as an ONNX file: named inputs/outputs, the config in its metadata     |
| :func:`quantize_onnx`   | int8 weights for the file's MatMuls (ONNX Runtime dynamic quantisation)             |
| :class:`OnnxStep`       | that file in ONNX Runtime: numpy tokens and state in, logits out; a greedy loop      |
| :func:`state_to_numpy`, :func:`state_from_numpy` | a state between torch and the numpy dict of :class:`OnnxStep` |

The step is the model in recurrent mode with ``use_cache=True, logits_to_keep=1``, traced under ``torch.no_grad``,
where both ops take their one-token PyTorch paths (plain ATen ops: the WKV update and the LIF step), so
``torch.export`` and the dynamo ONNX exporter (``torch.onnx.export(..., dynamo=True)``) need nothing special. The
batch axis is dynamic by default (``batch_size=None``); the layer and width axes are fixed by the config.

ONNX names: ``input_ids`` (B, 1) int64 and ``state.<field>`` (L, B, C) in; ``logits`` (B, V) and
``new_state.<field>`` out, the fields in :class:`SpikeGPTState` order (``att_shift``, ``ffn_shift``, ``wkv_num``,
``wkv_den``, ``wkv_max``, ``att_mem``, ``ffn_mem``). A fresh state is zeros with ``wkv_max = -1e38``
(:meth:`OnnxStep.empty_state`). onnx, onnxscript and onnxruntime are imported only inside the functions that need
them (the ``spikegpt[deploy]`` extra). :class:`OnnxStep` itself uses numpy and onnxruntime only.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spikegpt.kernels.wkv.common import NEG_INF
from spikegpt.modeling_spikegpt import LIF, SpikeGPTForCausalLM, TimeMix
from spikegpt.state import SpikeGPTState

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "STATE_FIELDS",
    "OneTokenStep",
    "OnnxStep",
    "export_onnx",
    "export_step",
    "quantize_onnx",
    "state_from_numpy",
    "state_to_numpy",
]

# The seven fields of every model's state (a model with LIF spike codes, which adds two, is not exported).
STATE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SpikeGPTState) if f.name not in ("enc_mem", "head_mem"))
INPUT_NAMES: tuple[str, ...] = ("input_ids", *(f"state.{n}" for n in STATE_FIELDS))
OUTPUT_NAMES: tuple[str, ...] = ("logits", *(f"new_state.{n}" for n in STATE_FIELDS))
FORMAT_VERSION = "1"  # of the metadata below; bumped when the inputs, outputs or metadata change meaning
_META = "spikegpt."
_EXPORTABLE_BACKENDS = (None, "torch")
_ONNX_DTYPES = (torch.float32, torch.float64, torch.float16)
_NUMPY_OF_ORT = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _require(module: str, what: str):
    """Import ``module`` or raise ImportError naming the ``spikegpt[deploy]`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{what} needs the {module.split('.')[0]} package: pip install 'spikegpt[deploy]' "
            f"(onnx, onnxscript, onnxruntime)"
        ) from e


class OneTokenStep(nn.Module):
    """The one-token step as a module: ``(input_ids (B, 1), state) -> (logits (B, V), new state)``.

    What :func:`export_step` traces (and an eager reference for it): ``model(input_ids, state=state,
    use_cache=True, logits_to_keep=1)`` with the logits of the one position.
    """

    def __init__(self, model: SpikeGPTForCausalLM):
        super().__init__()
        self.lm = model

    def forward(self, input_ids: torch.Tensor, state: SpikeGPTState) -> tuple[torch.Tensor, SpikeGPTState]:
        out = self.lm(input_ids=input_ids, state=state, use_cache=True, logits_to_keep=1, return_dict=True)
        return out.logits[:, -1], out.state


def _check_exportable(model) -> None:
    """Raise TypeError/ValueError when ``model``'s step cannot be exported faithfully, saying what to change."""
    if not isinstance(model, SpikeGPTForCausalLM):
        raise TypeError(f"export needs a SpikeGPTForCausalLM (the step returns logits), got {type(model).__name__}")
    if model.config.batch_invariant:
        raise ValueError(
            "this model has config.batch_invariant=True, which runs every batch row in its own forward; an exported "
            "graph computes the batch in one pass and cannot keep that promise. Set model.config.batch_invariant = "
            "False before exporting (for per-row results independent of the batch, run the exported step with one "
            "row per call)"
        )
    backends = {m.backend for m in model.modules() if isinstance(m, TimeMix)}
    backends |= {m.kwargs["backend"] for m in model.modules() if isinstance(m, LIF)}
    bad = sorted(str(b) for b in backends if b not in _EXPORTABLE_BACKENDS)
    if bad:
        raise ValueError(
            f"this model runs its ops with kernel_backend={bad[0]!r}: Triton kernels cannot be traced into an "
            "exported graph. The exported step uses the PyTorch one-token path, the same math: load the model with "
            "kernel_backend='torch' (or None), e.g. SpikeGPTForCausalLM.from_pretrained(path, kernel_backend='torch')"
        )
    if model.config.spike_inputs == "lif":
        raise ValueError(
            "this model has spike_inputs='lif', whose input codes carry LIF membranes in two more state fields "
            "(enc_mem, head_mem); the exported step takes and returns the seven fields of the other models. Export a "
            "model with a stateless code (spike_inputs='binary', 'ternary' or 'int<K>') or run it in PyTorch"
        )
    dtype = model.get_input_embeddings().weight.dtype
    if not dtype.is_floating_point:
        raise ValueError(f"cannot export a model with {dtype} weights (quantised?): export the float model")


@contextlib.contextmanager
def _tracing(model: SpikeGPTForCausalLM) -> Iterator[None]:
    """Eval mode, no autograd, and the PyTorch op paths pinned (``None`` would pick Triton on CUDA tensors);
    the model is restored afterwards."""
    training = model.training
    att = [m for m in model.modules() if isinstance(m, TimeMix)]
    lifs = [m for m in model.modules() if isinstance(m, LIF)]
    saved = [m.backend for m in att], [m.kwargs["backend"] for m in lifs]
    try:
        model.eval()
        for m in att:
            m.backend = "torch"
        for m in lifs:
            m.kwargs["backend"] = "torch"
        with torch.no_grad():
            yield
    finally:
        model.train(training)
        for m, b in zip(att, saved[0]):
            m.backend = b
        for m, b in zip(lifs, saved[1]):
            m.kwargs["backend"] = b


def export_step(model: SpikeGPTForCausalLM, *, batch_size: int | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` the one-token step ``(input_ids (B, 1) long, state) -> (logits (B, V), state)``.

    Args:
        model: a :class:`SpikeGPTForCausalLM` (any float dtype and device); it is traced in eval mode, without
            autograd, on the PyTorch op paths, and left as it was.
        batch_size: None (default) makes the batch axis B dynamic (any B >= 1); an int fixes it.

    Returns:
        an ``ExportedProgram``; ``program.module()(input_ids, state)`` returns ``(logits, SpikeGPTState)``, the
        state taking and giving (L, B, C) fields of the model's dtypes (see :class:`SpikeGPTState`). Run it under
        ``torch.no_grad()``.

    Raises:
        TypeError: not a SpikeGPTForCausalLM. ValueError: ``config.batch_invariant``, a Triton ``kernel_backend``,
        non-float weights, or ``batch_size < 1``.
    """
    _check_exportable(model)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None (dynamic) or an integer >= 1, got {batch_size!r}")
    weight = model.get_input_embeddings().weight
    B = 2 if batch_size is None else batch_size  # a dynamic axis is traced at 2: sizes 0 and 1 get specialised
    ids = torch.zeros(B, 1, dtype=torch.long, device=weight.device)
    state = SpikeGPTState.empty(model.config, B, device=weight.device, dtype=weight.dtype)
    dynamic_shapes = None
    if batch_size is None:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = ({0: batch}, [{1: batch}] * len(STATE_FIELDS))
    with _tracing(model):
        return torch.export.export(OneTokenStep(model).eval(), (ids, state), dynamic_shapes=dynamic_shapes)


def _metadata(model: SpikeGPTForCausalLM, batch_size: int | None, opset: int) -> dict[str, str]:
    from spikegpt import __version__

    cfg = model.config
    dtype = model.get_input_embeddings().weight.dtype
    meta = {
        "format_version": FORMAT_VERSION,
        "spikegpt_version": __version__,
        "step": "(input_ids (B, 1), state.* (L, B, C)) -> (logits (B, V), new_state.* (L, B, C))",
        "vocab_size": str(cfg.vocab_size),
        "hidden_size": str(cfg.hidden_size),
        "num_hidden_layers": str(cfg.num_hidden_layers),
        "spiking": json.dumps(cfg.spiking),
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": "dynamic" if batch_size is None else str(batch_size),
        "state_fields": ",".join(STATE_FIELDS),
        "wkv_max_init": repr(NEG_INF),
        "opset": str(opset),
        "config": json.dumps(json.loads(cfg.to_json_string(use_diff=False)), sort_keys=True, separators=(",", ":")),
    }
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(cfg, name, None) is not None:
            meta[name] = json.dumps(getattr(cfg, name))
    return {_META + k: v for k, v in meta.items()}


def export_onnx(
    model: SpikeGPTForCausalLM,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    batch_size: int | None = None,
    optimize: bool = True,
) -> Path:
    """Write the one-token step of ``model`` to ``path`` as ONNX (the dynamo exporter, from :func:`export_step`).

    Inputs ``input_ids`` (B, 1) int64 and ``state.<field>`` (L, B, C); outputs ``logits`` (B, V) and
    ``new_state.<field>``; B is named ``batch`` and dynamic unless ``batch_size`` is given. The metadata
    (``spikegpt.*`` keys) holds the config (``spikegpt.config``, JSON), ``vocab_size``, ``hidden_size``,
    ``num_hidden_layers``, ``dtype``, the state field order and the initial WKV max: all that
    :class:`OnnxStep` needs to run it without torch.

    Args:
        model: a float32 (or float64 / float16) :class:`SpikeGPTForCausalLM`; left as it was.
        path: the ``.onnx`` file to write (parent folders are created). Weights over 2 GB go to a side file.
        opset: ONNX opset, >= 18 (None: the exporter's default; 20 with torch 2.13).
        batch_size: None for a dynamic batch, or a fixed one (static shapes suit ONNX Runtime Mobile).
        optimize: run the exporter's graph optimiser (constant folding, dead code removal).

    Returns:
        the path written.

    Raises:
        ImportError: onnx / onnxscript missing (``pip install 'spikegpt[deploy]'``). TypeError / ValueError: as
        :func:`export_step`, for bfloat16 weights, which ONNX Runtime's CPU kernels do not take, and for quantised
        (tensor-subclass, e.g. torchao) weights: quantise the ONNX file instead (:func:`quantize_onnx`).
    """
    _check_exportable(model)
    _require("onnx", "export_onnx")
    _require("onnxscript", "export_onnx")
    dtype = model.get_input_embeddings().weight.dtype
    if dtype not in _ONNX_DTYPES:
        raise ValueError(
            f"export_onnx takes float32, float64 or float16 models, got {dtype} (ONNX Runtime's CPU provider has "
            "almost no bfloat16 kernels): export model.float() and quantise the ONNX file instead"
        )
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 18):
        raise ValueError(f"opset must be None (default) or an integer >= 18 (the dynamo exporter's), got {opset!r}")
    subclassed = sorted({type(p.data).__name__ for p in model.parameters() if type(p.data) is not torch.Tensor})
    if subclassed:
        raise ValueError(
            f"this model holds quantised weights ({', '.join(subclassed)}, e.g. from spikegpt.interop.quantization), "
            "which the ONNX exporter cannot translate: export the float model, then quantise the ONNX file with "
            "spikegpt.interop.export.quantize_onnx"
        )
    program = export_step(model, batch_size=batch_size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        onnx_program = torch.onnx.export(
            program, (), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), opset_version=opset,
            dynamo=True, optimize=optimize, verbose=False,
        )
    if batch_size is None:  # the traced symbol (s23, ...) becomes the axis name "batch"
        onnx_program.rename_axes({onnx_program.model.graph.inputs[0].shape[0]: "batch"})
    used = next((v for d, v in onnx_program.model.opset_imports.items() if d == ""), opset)
    onnx_program.model.metadata_props.update(_metadata(model, batch_size, used))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(path)
    return path


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, per_channel: bool = False) -> Path:
    """int8 dynamic quantisation of a step file of :func:`export_onnx`: ``src`` -> ``dst`` (metadata kept).

    ONNX Runtime's ``quantize_dynamic`` restricted to the MatMul nodes (int8 weights, activations quantised per
    call): its default would also quantise the embedding table (the ``Gather``), and rounding the entries near 0
    flips the spikes of the binary embedding ``H(E[idx])``. The logits move (spikes near threshold flip): check the
    argmax agreement on real text (``benchmarks/export_step.py --trained DIR``) before deploying.
    """
    _require("onnx", "quantize_onnx")
    quantization = _require("onnxruntime.quantization", "quantize_onnx")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantization.quantize_dynamic(Path(src), dst, weight_type=quantization.QuantType.QInt8,
                                  op_types_to_quantize=["MatMul"], per_channel=per_channel)
    return dst


def state_to_numpy(state: SpikeGPTState) -> dict[str, np.ndarray]:
    """The state as a ``{field: (L, B, C) numpy array}`` dict, the form :class:`OnnxStep` carries."""
    return {name: t.detach().cpu().numpy() for name, t in zip(STATE_FIELDS, state.tensors())}


def state_from_numpy(arrays: Mapping[str, np.ndarray], device=None) -> SpikeGPTState:
    """A :class:`SpikeGPTState` from a ``{field: array}`` dict (e.g. :class:`OnnxStep`'s), on ``device``."""
    missing = [n for n in STATE_FIELDS if n not in arrays]
    if missing:
        raise ValueError(f"the state dict lacks the fields {missing} (it needs {list(STATE_FIELDS)})")
    return SpikeGPTState(*(torch.as_tensor(np.asarray(arrays[n]), device=device) for n in STATE_FIELDS))


class OnnxStep:
    """A step file of :func:`export_onnx` in ONNX Runtime: numpy in, numpy out (no torch involved).

    >>> step = OnnxStep("spikegpt_step.onnx")                       # doctest: +SKIP
    >>> logits, state = step(np.array([[42]]))                      # a fresh state when none is given
    >>> tokens = step.generate(prompt_ids, max_new_tokens=32)       # greedy, (B, T + new)

    The state is a ``{field: (L, B, C) array}`` dict (:data:`STATE_FIELDS`; convert with :func:`state_to_numpy`
    and :func:`state_from_numpy`). ``providers`` and ``session_options`` go to ``onnxruntime.InferenceSession``
    (default: the CPU provider).
    """

    def __init__(self, path: str | os.PathLike, *, providers: Sequence | None = None, session_options=None):
        ort = _require("onnxruntime", "OnnxStep")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} not found: write it with spikegpt.interop.export.export_onnx")
        self.session = ort.InferenceSession(
            str(self.path), sess_options=session_options, providers=list(providers or ["CPUExecutionProvider"])
        )
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        names = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if _META + "format_version" not in meta or tuple(names[0]) != INPUT_NAMES or tuple(names[1]) != OUTPUT_NAMES:
            raise ValueError(
                f"{self.path} is not a SpikeGPT step written by spikegpt.interop.export.export_onnx (no spikegpt.* "
                f"metadata, or inputs {names[0]} / outputs {names[1]} instead of {list(INPUT_NAMES)} / "
                f"{list(OUTPUT_NAMES)})"
            )
        if meta[_META + "format_version"] != FORMAT_VERSION:
            raise ValueError(f"{self.path} has step format {meta[_META + 'format_version']}, this code reads "
                             f"{FORMAT_VERSION}: export it again with this spikegpt")
        self.metadata = {k.removeprefix(_META): v for k, v in meta.items() if k.startswith(_META)}
        self.config = json.loads(self.metadata["config"])
        self.vocab_size = int(self.metadata["vocab_size"])
        self.num_layers = int(self.metadata["num_hidden_layers"])
        self.hidden_size = int(self.metadata["hidden_size"])
        fixed = self.metadata["batch_size"]
        self.batch_size = None if fixed == "dynamic" else int(fixed)  # None: any batch
        self._wkv_max_init = float(self.metadata["wkv_max_init"])
        self._dtypes = {n: np.dtype(_NUMPY_OF_ORT[i.type]) for n, i in zip(STATE_FIELDS, self.session.get_inputs()[1:])}
        eos = self.metadata.get("eos_token_id")
        self.eos_token_id = None if eos is None else json.loads(eos)

    def empty_state(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        """The state of ``batch_size`` fresh sequences: zeros, and ``wkv_max = -1e38``."""
        shape = (self.num_layers, batch_size, self.hidden_size)
        return {n: np.full(shape, self._wkv_max_init if n == "wkv_max" else 0.0, dtype=self._dtypes[n])
                for n in STATE_FIELDS}

    def _check(self, input_ids, state) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ids = np.asarray(input_ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids must be integer token ids, got {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[:, None]
        if ids.ndim != 2 or ids.shape[1] != 1 or ids.shape[0] == 0:
            raise ValueError(f"input_ids must be (batch, 1) (one token per row; or (batch,)), got shape {ids.shape}")
        B = ids.shape[0]
        if self.batch_size is not None and B != self.batch_size:
            raise ValueError(f"{self.path} was exported for batch size {self.batch_size}, got {B} rows")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"input_ids contains token id {lo if lo < 0 else hi}, outside the vocabulary "
                             f"[0, {self.vocab_size})")
        if state is None:
            return ids.astype(np.int64, copy=False), self.empty_state(B)
        want = (self.num_layers, B, self.hidden_size)
        checked = {}
        for n in STATE_FIELDS:
            if n not in state:
                raise ValueError(f"the state lacks the field {n!r} (it needs {list(STATE_FIELDS)})")
            a = np.asarray(state[n])
            if a.shape != want:
                raise ValueError(f"state[{n!r}] has shape {a.shape} but this call needs (layers, batch, hidden) = "
                                 f"{want}")
            if a.dtype != self._dtypes[n]:
                raise ValueError(f"state[{n!r}] is {a.dtype} but the model takes {self._dtypes[n]}")
            checked[n] = a
        return ids.astype(np.int64, copy=False), checked

    def step(self, input_ids, state: Mapping[str, np.ndarray] | None = None):
        """One token per row: ``input_ids`` (B, 1) or (B,) ints, ``state`` None (fresh) or a state dict.
        Returns ``(logits (B, V), new state dict)``."""
        ids, state = self._check(input_ids, state)
        feed = {"input_ids": ids, **{f"state.{n}": state[n] for n in STATE_FIELDS}}
        logits, *new = self.session.run(None, feed)
        return logits, dict(zip(STATE_FIELDS, new))

    __call__ = step

    def prefill(self, prompt_ids, state: Mapping[str, np.ndarray] | None = None):
        """Feed a (B, T) prompt one column at a time; returns the last token's logits (B, V) and the state."""
        ids = np.asarray(prompt_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"the prompt must be (batch, seq_len) with seq_len >= 1, got shape {ids.shape}")
        logits = None
        for t in range(ids.shape[1]):
            logits, state = self.step(ids[:, t : t + 1], state)
        return logits, state

    def generate(self, prompt_ids, max_new_tokens: int, *, eos_token_id=None, state=None) -> np.ndarray:
        """Greedy decoding: the prompt (B, T) (or (T,)) followed by up to ``max_new_tokens`` argmax tokens, (B, T + n).

        ``eos_token_id`` (an id or a list, ``[]`` for none; default the config's) ends a row, which is then
        filled with it; the loop stops when every row has ended. ``state`` continues an earlier sequence.
        """
        ids = np.asarray(prompt_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        eos = self.eos_token_id if eos_token_id is None else eos_token_id
        eos = None if eos is None else np.atleast_1d(np.asarray(eos, dtype=np.int64))
        if eos is not None and eos.size == 0:  # [] turns the config's eos off
            eos = None
        logits, state = self.prefill(ids, state)
        out = [ids]
        done = np.zeros(ids.shape[0], dtype=bool)
        for i in range(max_new_tokens):
            nxt = logits.argmax(-1).astype(np.int64)
            if eos is not None:
                nxt = np.where(done, eos[0], nxt)
                done |= np.isin(nxt, eos)
            out.append(nxt[:, None])
            if (eos is not None and done.all()) or i + 1 == max_new_tokens:
                break
            logits, state = self.step(nxt[:, None], state)
        return np.concatenate(out, axis=1)
