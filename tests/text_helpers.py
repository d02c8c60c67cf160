"""Text for the tests: small reproducible pseudo-English documents (no download)."""

import random

_WORDS = ("the spike neuron fires when its membrane crosses the threshold and then resets while the language "
          "model reads one token at a time carrying its state forward through every layer").split()


def documents(n: int, seed: int) -> list[str]:
    """``n`` distinct pseudo-English documents, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [f"Document {i}: " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(15, 45))) + "."
            for i in range(n)]
