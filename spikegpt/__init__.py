"""spikegpt: spiking language models (SpikeGPT) as Hugging Face classes, with fused kernels.

>>> import spikegpt
>>> model = spikegpt.SpikeGPTForCausalLM(spikegpt.SpikeGPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2))
"""

import logging as _logging


class _DropImportNoise(_logging.Filter):
    """transformers imports torchao whenever it is installed; on a torch without CUDA torchao then warns that
    its CUDA extensions do not load, and torch that torchao registers Enum pytree constants. Those two
    messages (and only those) are dropped: they come with every import and say nothing about this package."""

    def filter(self, record: _logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Failed to load") and "torchao" in message
                    or "is an Enum subclass and is now natively supported" in message)


for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).addFilter(_DropImportNoise())

# The filter goes on before transformers is imported, hence the imports below it.
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from spikegpt.configuration_spikegpt import SpikeGPTConfig  # noqa: E402
from spikegpt.modeling_sequence_classification import SpikeGPTForSequenceClassification  # noqa: E402
from spikegpt.modeling_spikegpt import (  # noqa: E402
    SpikeGPTCausalLMOutput,
    SpikeGPTForCausalLM,
    SpikeGPTModel,
    SpikeGPTOutput,
    SpikeGPTPreTrainedModel,
)
from spikegpt.state import SpikeGPTState  # noqa: E402

__version__ = "0.1.0"

AutoConfig.register(SpikeGPTConfig.model_type, SpikeGPTConfig, exist_ok=True)
AutoModel.register(SpikeGPTConfig, SpikeGPTModel, exist_ok=True)
AutoModelForCausalLM.register(SpikeGPTConfig, SpikeGPTForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(SpikeGPTConfig, SpikeGPTForSequenceClassification, exist_ok=True)

__all__ = [
    "SpikeGPTCausalLMOutput",
    "SpikeGPTConfig",
    "SpikeGPTForCausalLM",
    "SpikeGPTForSequenceClassification",
    "SpikeGPTModel",
    "SpikeGPTOutput",
    "SpikeGPTPreTrainedModel",
    "SpikeGPTState",
]
