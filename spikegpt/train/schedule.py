"""Learning-rate schedules: multipliers of the base learning rate by optimizer step, for ``LambdaLR``.

- :func:`warmup_cosine`: pretraining (and distillation) through the trainer.
- :func:`warmup_linear`: classification fine-tuning (``spikegpt.train.finetune_classification``).
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier at optimizer step ``step`` (0-based): linear warmup over ``warmup_steps`` steps (the first
    step already moves: ``(step + 1) / warmup_steps``), then a cosine from 1 down to ``min_ratio`` at
    ``max_steps``, and ``min_ratio`` after it."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_linear(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier at optimizer step ``step`` (0-based): a linear ramp ``min(1, (step + 1) / warmup_steps)``
    (none when ``warmup_steps`` is 0) times a linear decay ``1 - step / total_steps``, which reaches 0 at
    ``total_steps`` and stays there."""
    ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return ramp * max(0.0, 1.0 - step / max(total_steps, 1))
