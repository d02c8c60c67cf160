"""spikegpt: spiking language models (SpikeGPT) as Hugging Face classes, with fused kernels.

>>> import spikegpt
>>> model = spikegpt.SpikeGPTForCausalLM(spikegpt.SpikeGPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2))
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from spikegpt.configuration_spikegpt import SpikeGPTConfig
from spikegpt.modeling_sequence_classification import SpikeGPTForSequenceClassification
from spikegpt.modeling_spikegpt import (
    SpikeGPTCausalLMOutput,
    SpikeGPTForCausalLM,
    SpikeGPTModel,
    SpikeGPTOutput,
    SpikeGPTPreTrainedModel,
)
from spikegpt.state import SpikeGPTState

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
