"""Pretraining, evaluation and distillation entry points (installed as ``spikegpt.train``; needs ``datasets``)."""
