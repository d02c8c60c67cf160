"""The two ops behind SpikeGPT: ``wkv`` (linear-attention recurrence) and ``lif`` (multi-step LIF neuron).

Each has a PyTorch implementation (every device; the fast CPU path), a Triton implementation (CUDA, and
CPU under ``TRITON_INTERPRET=1`` for tests) and a plain loop reference used by the tests.
"""

from .lif import lif
from .wkv import wkv

__all__ = ["lif", "wkv"]
