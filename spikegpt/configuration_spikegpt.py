"""Configuration of SpikeGPT models."""

from __future__ import annotations

import math
import numbers

from transformers import PretrainedConfig

from spikegpt.kernels.backend import BACKENDS
from spikegpt.kernels.surrogate import SURROGATES
from spikegpt.spike_coding import parse_spike_inputs

NO_CONTEXT_LIMIT = 2**63 - 1  # what max_position_embeddings reports: longer than any sequence

# Settings of this run, not of the model: never written to config.json.
RUNTIME_FIELDS = ("kernel_backend", "batch_invariant", "prefill_chunk_size")

# Default tokens per chunk of a long no-grad forward (see ``SpikeGPTConfig``, ``prefill_chunk_size``).
DEFAULT_PREFILL_CHUNK_SIZE = 1024


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


class SpikeGPTConfig(PretrainedConfig):
    r"""Shape and neuron settings of a SpikeGPT model.

    Args:
        vocab_size: number of token ids V (>= 1).
        hidden_size: width C of the residual stream (``n_embd`` in the original code; >= 1).
        num_hidden_layers: number of blocks L (>= 1).
        intermediate_size: FFN width F; default 4C.
        spiking: True for SpikeGPT (binary embedding, a LIF neuron on each branch); False gives the
            non-spiking RWKV-4 architecture (the ablation, and the form RWKV-4 checkpoints convert into).
        tau, threshold: LIF membrane time constant (> 1) and firing threshold (> 0) (original: 2.0 and 1.0).
        v_reset: hard-reset value (original: 0.0); None selects a soft reset (subtract the threshold).
        detach_reset: do not differentiate through the reset (original: False).
        surrogate, surrogate_alpha: surrogate gradient of the Heaviside step (original: "atan", 2.0).
        spike_inputs: the code of every Linear layer's input (the seven of each block and the head):
            ``"none"`` (SpikeGPT as published: real-valued inputs; the default), ``"lif"`` (binary spikes of LIF
            neurons whose membranes are carried over tokens), ``"binary"``, ``"ternary"`` or ``"int<K>"``
            (1 <= K <= 127: integer spike counts in [-K, K], ``"ternary"`` = ``"int1"``; ``"binary"``: 0 or 1),
            each with an adaptive threshold per token and a learnable gain (see :mod:`spikegpt.spike_coding`).
            Independent of ``spiking``.
        spike_gain: initial threshold gain g of the spike codes (``vth = g * mean|x|``; a number > 0), or None for
            each code's default (:func:`spikegpt.spike_coding.initial_gain`). Larger is sparser and coarser.
            Initialisation only: a trained model keeps its learnt gains.
        dropout: dropout after every block, training only, in [0, 1) (original recipe: 0.03).
        layer_norm_epsilon: LayerNorm eps (1e-5).
        l2wrap_coef: the original "L2Wrap" logit regulariser: the loss's backward adds ``l2wrap_coef / n`` times
            each position's largest logit to that logit's gradient, n the number of positions that count in
            the loss (original: 1e-4); 0 turns it off.
        context_length: the training block length of recipes. The model itself has no context limit:
            ``max_position_embeddings`` reports :data:`NO_CONTEXT_LIMIT` to clients that ask.
        initializer_range: std of the initial weights of a classification head (``score``); the language-model
            head starts at std ``0.5 / sqrt(C)``.
        kernel_backend: implementation of the WKV and LIF ops: None (automatic: Triton on CUDA tensors,
            PyTorch elsewhere), "torch", "triton", or "triton_chunked" (the chunk-parallel Triton WKV).
        batch_invariant: compute every batch row as if it were alone, so that its outputs are bit-identical
            whatever else is in the batch and however it is padded (one forward per row; see
            ``docs/batch_invariance.md``). Off by default.
        prefill_chunk_size: tokens per chunk of a long forward without autograd (``torch.no_grad()``,
            ``generate()``'s prefill, evaluation): a longer input runs chunk after chunk, the state carried
            across, so that its working memory stays flat at any length (with ``logits_to_keep=k`` only the
            last k positions' logits are ever computed). Same logits and state as one call, to rounding.
            0 or None: never chunk. Default :data:`DEFAULT_PREFILL_CHUNK_SIZE` (1024, the default
            ``context_length``): inputs up to the training block length run as one call, exactly as without
            chunking; 1024-token chunks are no slower per token than 2048-token chunks or one call (measured
            on CPU); and a chunk's working memory is ~140 MB at the 216M shape in fp32, against ~330 MB for
            2048-token chunks (``benchmarks/long_context.py``, ``docs/inference.md``). On a GPU a larger
            value (e.g. 4096) may amortise kernel launches better. A forward that records gradients is never
            chunked (chunking would save no memory there: autograd keeps every chunk's activations for the
            backward).

    ``kernel_backend``, ``batch_invariant`` and ``prefill_chunk_size`` are choices of the machine and run, not
    of the model: they do not change the math (beyond rounding) and are not saved. ``pad_token_id`` and
    ``eos_token_id`` default to None; recipes set them from their tokenizer. ``generate()`` infers an attention
    mask from ``pad_token_id`` when none is given, so a pad id that is also a real token would mask real
    tokens: pass ``attention_mask`` then.

    Raises:
        ValueError: naming the field, for a value of the wrong type or out of range (no coercion: the
            string ``"false"`` is not a boolean).
    """

    model_type = "spikegpt"

    def __init__(
        self,
        vocab_size: int = 50277,
        hidden_size: int = 768,
        num_hidden_layers: int = 18,
        intermediate_size: int | None = None,
        spiking: bool = True,
        tau: float = 2.0,
        threshold: float = 1.0,
        v_reset: float | None = 0.0,
        detach_reset: bool = False,
        surrogate: str = "atan",
        surrogate_alpha: float = 2.0,
        spike_inputs: str = "none",
        spike_gain: float | None = None,
        dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-5,
        l2wrap_coef: float = 0.0,
        context_length: int = 1024,
        initializer_range: float = 0.02,
        kernel_backend: str | None = None,
        batch_invariant: bool = False,
        prefill_chunk_size: int | None = DEFAULT_PREFILL_CHUNK_SIZE,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = (
            intermediate_size if intermediate_size is not None or not _is_int(hidden_size) else 4 * hidden_size
        )
        self.spiking = spiking
        self.tau = tau
        self.threshold = threshold
        self.v_reset = v_reset
        self.detach_reset = detach_reset
        self.surrogate = surrogate
        self.surrogate_alpha = surrogate_alpha
        self.spike_inputs = spike_inputs
        self.spike_gain = spike_gain
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.l2wrap_coef = l2wrap_coef
        self.context_length = context_length
        self.initializer_range = initializer_range
        self.kernel_backend = kernel_backend
        self.batch_invariant = batch_invariant
        self.prefill_chunk_size = prefill_chunk_size
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate()

    @property
    def max_position_embeddings(self) -> int:
        """No context limit: a recurrent model reads any length. Clients that size windows from this field
        (lm-evaluation-harness, ``generate``) then never cut a sequence."""
        return NO_CONTEXT_LIMIT

    def validate(self, **kwargs) -> None:
        """Raise ``ValueError`` naming the first field whose value has the wrong type or is out of range."""
        def bad(name, want):
            v = getattr(self, name)
            raise ValueError(f"SpikeGPTConfig.{name} must be {want}, got {v!r} ({type(v).__name__})")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "context_length"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                bad(name, "an integer >= 1")
        for name in ("spiking", "detach_reset", "batch_invariant", "use_cache", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "true or false (a bool)")
        checks = {
            "tau": (lambda v: v > 1.0, "a number > 1 (the leak 1 - 1/tau must lie in (0, 1))"),
            "threshold": (lambda v: v > 0.0, "a number > 0"),
            "surrogate_alpha": (lambda v: v > 0.0, "a number > 0"),
            "dropout": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
            "layer_norm_epsilon": (lambda v: v >= 0.0, "a number >= 0"),
            "l2wrap_coef": (lambda v: v >= 0.0, "a number >= 0"),
            "initializer_range": (lambda v: v > 0.0, "a number > 0"),
        }
        for name, (ok, want) in checks.items():
            v = getattr(self, name)
            if not _is_real(v) or not ok(v):
                bad(name, want)
        if self.v_reset is not None and not _is_real(self.v_reset):
            bad("v_reset", "a number (hard reset) or None (soft reset)")
        if self.surrogate not in SURROGATES:
            bad("surrogate", f"one of {sorted(SURROGATES)}")
        if self.spike_gain is not None and not (_is_real(self.spike_gain) and self.spike_gain > 0):
            bad("spike_gain", "None (the code's default) or a number > 0")
        try:
            parse_spike_inputs(self.spike_inputs)
        except ValueError as e:
            raise ValueError(f"SpikeGPTConfig.{e}") from None
        v = self.prefill_chunk_size
        if v is not None and (not _is_int(v) or v < 0):
            bad("prefill_chunk_size", "None or an integer >= 0 (tokens per chunk; 0 or None: never chunk)")
        if self.kernel_backend is not None and self.kernel_backend not in BACKENDS:
            bad("kernel_backend", f"None (automatic) or one of {list(BACKENDS)}")
        for name in ("pad_token_id", "bos_token_id"):
            v = getattr(self, name, None)
            if v is not None and not (_is_int(v) and 0 <= v < self.vocab_size):
                bad(name, f"None or a token id in [0, {self.vocab_size})")
        eos = getattr(self, "eos_token_id", None)
        ids = eos if isinstance(eos, (list, tuple)) else [eos]
        if eos is not None and not all(_is_int(v) and 0 <= v < self.vocab_size for v in ids):
            bad("eos_token_id", f"None, or a token id (or list of ids) in [0, {self.vocab_size})")

    def to_dict(self) -> dict:
        """The serialisable fields; the run-time settings (:data:`RUNTIME_FIELDS`) are left out, so a model saved
        with ``kernel_backend="triton"`` on a GPU still loads and runs on a CPU."""
        out = super().to_dict()
        for name in RUNTIME_FIELDS:
            out.pop(name, None)
        return out
