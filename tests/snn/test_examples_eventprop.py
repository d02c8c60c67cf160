"""The EventProp digits example learns: a short run (1 epoch) is well above chance (0.1)."""


import torch
from example_helpers import load_example


def test_eventprop_latency_example_learns():
    mod = load_example("eventprop_latency")
    Xtr, Xte, ytr, yte = mod.load(0)
    args = mod.parser().parse_args(["--epochs", "1", "--lr", "5e-3"])
    acc, loss = mod.train(Xtr, ytr, Xte, yte, args, torch.Generator().manual_seed(0))
    assert acc > 0.5, acc
    assert loss == loss  # finite, not NaN
