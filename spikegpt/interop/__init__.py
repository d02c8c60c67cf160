"""SpikeGPT and the checkpoints of others: the original SpikeGPT code, RWKV-4, and the Hugging Face Hub.

| module        | what                                                                                     |
|---------------|------------------------------------------------------------------------------------------|
| ``original``  | checkpoints of the original SpikeGPT code: :func:`from_original`, :func:`to_original`    |
| ``rwkv``      | RWKV-4 models and states, both ways: :func:`from_rwkv`, :func:`to_rwkv`, LIF calibration |
| ``hub``       | model cards and :func:`push_to_hub`                                                      |
"""

from spikegpt.interop.original import from_original, to_original
from spikegpt.interop.rwkv import calibrate_lif_scales, from_rwkv, state_from_rwkv, state_to_rwkv, to_rwkv

__all__ = [
    "calibrate_lif_scales",
    "from_original",
    "from_rwkv",
    "state_from_rwkv",
    "state_to_rwkv",
    "to_original",
    "to_rwkv",
]
