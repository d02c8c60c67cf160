"""The online-learning example learns with DECOLLE, OSTL and OSTTP (a short run: accuracy well above chance)."""

import argparse

import pytest
import torch
from example_helpers import load_example


@pytest.fixture(scope="module")
def example():
    mod = load_example("online_learning")
    return mod, mod.load(0)


# OSTTP's target projection gets going more slowly (about 0.6 after 2 epochs, 0.8 after 3)
@pytest.mark.parametrize(("method", "epochs"), [("train_decolle", 2), ("train_ostl", 2), ("train_osttp", 3)])
def test_online_example_learns(example, method, epochs):
    mod, (Xtr, Xte, ytr, yte) = example
    args = argparse.Namespace(epochs=epochs, steps=6, batch=64, seed=0)
    acc, loss = getattr(mod, method)(Xtr, ytr, Xte, yte, args, torch.Generator().manual_seed(0))
    assert acc > 0.5, (method, acc)  # chance is 0.1
    assert isinstance(loss, float) and loss == loss
