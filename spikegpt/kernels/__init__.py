"""The two ops behind SpikeGPT: ``wkv`` (the linear-attention recurrence) and ``lif`` (the multi-step LIF neuron).

One folder per op (``wkv/``, ``lif/``): the public function with its dispatch in the folder's ``__init__``,
each implementation (PyTorch, Triton) in its own file, and a plain loop reference (``naive.py``) that the
tests compare every implementation with. ``backend.py`` chooses between PyTorch and Triton. Design notes:
``docs/kernels.md``.
"""

from .lif import lif
from .wkv import wkv

__all__ = ["lif", "wkv"]
