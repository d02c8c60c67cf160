"""Training objectives: the loss the trainer minimises, chosen by the ``objective`` setting.

An objective is built once per run by a factory ``factory(config, accelerator) -> objective`` registered
under a name with :func:`register_objective` (in this module, or in a module ``spikegpt.train.<name>``,
imported on first use: ``objective: distill`` loads ``spikegpt.train.distill``), or named as
``package.module:factory``. The trainer then calls ``objective(model, batch)`` on every micro-batch and
back-propagates the returned loss. ``batch`` is ``{"input_ids": (B, T) long}``; the second
return value holds extra float metrics to log (averaged over the logging interval). The factory may load
and prepare further models (a frozen teacher for distillation: ``objective: distill`` with its settings in
``objective_args``), and read its own settings from ``config.objective_args``.

The default ``lm`` objective is the model's own causal-LM loss (``labels=input_ids``, shifted inside the
model; ``model.l2wrap_coef`` in the recipe turns on the original L2Wrap term).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any, Protocol

import torch


class Objective(Protocol):
    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ...


OBJECTIVES: dict[str, Callable[[Any, Any], Objective]] = {}


def register_objective(name: str):
    """Decorator registering an objective factory ``factory(config, accelerator)`` under ``name``."""

    def deco(factory):
        OBJECTIVES[name] = factory
        return factory

    return deco


# objectives that register themselves in their own module, imported when a recipe names them
PLUGINS = {"distill": "spikegpt.train.distill"}


def build_objective(config: Any, accelerator: Any) -> Objective:
    """The objective named by ``config.objective``: a registered name (its module imported on first use, see
    the module docstring) or ``"package.module:factory"``. ``ValueError`` listing the known names otherwise."""
    name = config.objective
    if ":" in name:
        module, attr = name.split(":", 1)
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"objective {name!r} cannot be imported: {e}") from e
        return factory(config, accelerator)
    if name not in OBJECTIVES:
        module = PLUGINS.get(name, f"spikegpt.train.{name}" if name.isidentifier() else None)
        if module is not None and importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known objectives: {sorted(OBJECTIVES)} "
                         "(or name a factory as 'package.module:factory')")
    return OBJECTIVES[name](config, accelerator)


@register_objective("lm")
class LanguageModelingObjective:
    """Next-token cross-entropy as computed by the model (``model(input_ids=x, labels=x).loss``)."""

    def __init__(self, config: Any = None, accelerator: Any = None):
        if config is not None and config.objective_args:
            raise ValueError(f"objective 'lm' takes no objective_args, got {sorted(config.objective_args)}")

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ids = batch["input_ids"]
        return model(input_ids=ids, labels=ids, use_cache=False).loss, {}
