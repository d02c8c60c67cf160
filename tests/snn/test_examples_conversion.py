"""The conversion and regression examples on short runs: converted SNNs approach their ANN's accuracy as T
grows (MLP and CNN, max and percentile norm), and the spiking regressor beats the predict-the-mean baseline."""


import torch
from example_helpers import load_example


def test_ann_to_snn_example_converges_to_the_ann_accuracy():
    mod = load_example("ann_to_snn")
    Xtr, Xte, ytr, yte = mod.load(0)
    args = mod.parse_args(["--epochs", "6", "--steps", "4", "64", "--calib", "256"])
    r = mod.train_ann_to_snn(Xtr, ytr, Xte, yte, args, torch.Generator().manual_seed(0))
    assert r["steps"] == [4, 64]
    for name in ("mlp", "cnn"):
        ann = r[name]["ann"]
        assert ann > 0.85, name  # chance is 0.1
        for norm in ("max", "percentile"):
            acc = r[name]["snn"][norm]
            assert acc[64] >= ann - 0.03, (name, norm, acc, ann)
            assert acc[64] > acc[4], (name, norm, acc)
            assert r[name]["snn_spikes"][norm][64] >= ann - 0.05, (name, norm)
        # the percentile scales are below the max scales (layer by layer)
        assert all(p <= m for p, m in zip(r[name]["scales"]["percentile"], r[name]["scales"]["max"]))


def test_regression_example_beats_the_mean_baseline():
    mod = load_example("regression_snn")
    args = mod.parse_args(["--iters", "50", "--hidden", "64", "--steps", "50", "--n-test", "128"])
    r = mod.train_regression(args, torch.Generator().manual_seed(0))
    assert r["mse"] < 0.3 * r["baseline_mse"], r
