"""The Tonic events example learns (short run: well above chance), and the NIR round-trip example gets the trained
network's spikes back from spikegpt, snnTorch and Norse, through a .nir file."""

import argparse
import contextlib
import importlib.util
import io
import logging
import warnings
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(**kw):
    base = dict(epochs=4, per_class=16, steps=20, batch=16, lr=5e-3, model="linear", seed=0, classes=4)
    return argparse.Namespace(**(base | kw))


def test_tonic_events_example_learns():
    mod = _load("tonic_events")
    acc, loss = mod.train_events(_args(), torch.Generator().manual_seed(0))
    assert acc > 0.6 and loss == loss  # chance is 0.25


def test_nir_roundtrip_example_reproduces_the_spikes_in_every_reader(tmp_path):
    mod = _load("nir_roundtrip")
    out = tmp_path / "events.nir"
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            results = mod.run(_args(out=str(out), only={"spikegpt", "snntorch", "norse"}),
                              torch.Generator().manual_seed(0))
    finally:
        logging.disable(logging.NOTSET)
    assert results.pop("_path") == str(out) and out.stat().st_size > 0
    n_spikes, _, acc = results["trained"]
    assert n_spikes > 0 and acc > 0.5
    assert set(results) == {"trained", "spikegpt", "snntorch", "norse"}
    for lib, (n, diff, lib_acc) in results.items():
        assert (n, diff, lib_acc) == (n_spikes, 0, acc), lib
