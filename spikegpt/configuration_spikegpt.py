"""Configuration of SpikeGPT models."""

from __future__ import annotations

from transformers import PretrainedConfig

from spikegpt.kernels._backend import BACKENDS
from spikegpt.kernels.surrogate import SURROGATES


class SpikeGPTConfig(PretrainedConfig):
    r"""Shape and neuron settings of a SpikeGPT model.

    Args:
        vocab_size: number of token ids V.
        hidden_size: width C of the residual stream (``n_embd`` in the original code).
        num_hidden_layers: number of blocks L.
        intermediate_size: FFN width F; default 4C.
        spiking: True for SpikeGPT (binary embedding, a LIF neuron on each branch); False gives the
            non-spiking RWKV-4 architecture (the ablation, and the form RWKV-4 checkpoints convert into).
        tau, threshold: LIF membrane time constant and firing threshold (original: 2.0 and 1.0).
        v_reset: hard-reset value (original: 0.0); None selects a soft reset (subtract the threshold).
        detach_reset: do not differentiate through the reset (original: False).
        surrogate, surrogate_alpha: surrogate gradient of the Heaviside step (original: "atan", 2.0).
        dropout: dropout after every block, training only (original recipe: 0.03).
        layer_norm_epsilon: LayerNorm eps (1e-5).
        l2wrap_coef: the original "L2Wrap" logit regulariser in the loss: adds ``l2wrap_coef / (B*T)``
            times each position's largest logit to that logit's gradient (original: 1e-4); 0 turns it off.
        context_length: the training block length of recipes. The model itself has no context limit.
        initializer_range: scale of the head initialisation (see ``SpikeGPTPreTrainedModel._init_weights``).
        kernel_backend: implementation of the WKV and LIF ops: None (automatic: Triton on CUDA tensors,
            PyTorch elsewhere), "torch", "triton", or "triton_chunked" (the chunk-parallel Triton WKV);
            a Triton choice on CPU tensors raises a ValueError outside the Triton interpreter. A run-time
            choice of this machine, not part of the model: it does not change the math and is not saved.

    ``pad_token_id`` and ``eos_token_id`` default to None; recipes set them from their tokenizer. Note that
    ``generate()`` infers an attention mask from ``pad_token_id`` when none is given, so a pad id that is
    also a real token would mask real tokens: pass ``attention_mask`` explicitly in that case.
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
        dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-5,
        l2wrap_coef: float = 0.0,
        context_length: int = 1024,
        initializer_range: float = 0.02,
        kernel_backend: str | None = None,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        if surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {sorted(SURROGATES)}")
        if kernel_backend not in (None, *BACKENDS):
            raise ValueError(f"kernel_backend must be None (automatic) or one of {BACKENDS}, got {kernel_backend!r}")
        if tau <= 1.0:
            raise ValueError(f"tau must be > 1 (the leak 1 - 1/tau must lie in (0, 1)), got {tau}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        self.spiking = spiking
        self.tau = tau
        self.threshold = threshold
        self.v_reset = v_reset
        self.detach_reset = detach_reset
        self.surrogate = surrogate
        self.surrogate_alpha = surrogate_alpha
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.l2wrap_coef = l2wrap_coef
        self.context_length = context_length
        self.initializer_range = initializer_range
        self.kernel_backend = kernel_backend
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def to_dict(self) -> dict:
        """The serialisable fields; ``kernel_backend`` is left out, so a model saved on a GPU with
        ``kernel_backend="triton"`` still loads and runs on a CPU."""
        out = super().to_dict()
        out.pop("kernel_backend", None)
        return out
