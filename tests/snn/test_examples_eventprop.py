"""The EventProp digits example learns: a short run (1 epoch) is well above chance (0.1)."""

import importlib.util
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "eventprop_latency.py"


def test_eventprop_latency_example_learns():
    spec = importlib.util.spec_from_file_location("eventprop_latency", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    Xtr, Xte, ytr, yte = mod.load(0)
    args = mod.parser().parse_args(["--epochs", "1", "--lr", "5e-3"])
    acc, loss = mod.train(Xtr, ytr, Xte, yte, args, torch.Generator().manual_seed(0))
    assert acc > 0.5, acc
    assert loss == loss  # finite, not NaN
