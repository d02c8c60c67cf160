"""The digits example learns with both training rules (a short run: accuracy well above chance)."""

import argparse

import torch
from example_helpers import load_example


def test_digits_example_learns_with_bptt_and_eprop():
    mod = load_example("digits_snn")
    Xtr, Xte, ytr, yte = mod.load(0)
    for fn, epochs in ((mod.train_bptt, 2), (mod.train_eprop, 1)):
        args = argparse.Namespace(epochs=epochs, steps=6, batch=64, seed=0)
        acc, _ = fn(Xtr, ytr, Xte, yte, args, torch.Generator().manual_seed(0))
        assert acc > 0.5, fn.__name__  # chance is 0.1
