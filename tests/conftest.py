"""Test-session setup.

``TRITON_INTERPRET=1`` is set before anything imports a Triton kernel module (they are imported lazily,
on the first ``backend="triton"`` call), so Triton kernels run on CPU tensors in the interpreter.
Automatic dispatch still picks the PyTorch path for CPU tensors.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tests use small tensors, for which intra-op threads cost more than they give (and CI has 2 cores).
import torch  # noqa: E402

torch.set_num_threads(1)
