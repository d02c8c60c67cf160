"""The Tonic events example learns (short run: well above chance), and the NIR round-trip example gets the trained
network's spikes back from spikegpt, snnTorch and Norse, through a .nir file."""

import argparse
import contextlib
import io
import logging
import warnings

import torch
from example_helpers import load_example


def _args(**kw):
    base = dict(epochs=4, per_class=16, steps=20, batch=16, lr=5e-3, model="linear", seed=0, classes=4)
    return argparse.Namespace(**(base | kw))


def test_tonic_events_example_learns():
    mod = load_example("tonic_events")
    acc, loss = mod.train_events(_args(), torch.Generator().manual_seed(0))
    assert acc > 0.6 and loss == loss  # chance is 0.25


def test_nir_roundtrip_example_reproduces_the_spikes_in_every_reader(tmp_path):
    mod = load_example("nir_roundtrip")
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
