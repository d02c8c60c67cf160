"""Small datasets that ship with the libraries the examples already use: nothing is downloaded."""

from __future__ import annotations

import torch

__all__ = ["digits"]


def digits(seed: int = 0, test_size: float = 0.25, dtype: torch.dtype = torch.float32,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), pixels scaled to [0, 1].

    Returns ``(Xtr, Xte, ytr, yte)``: (N, 64) images of ``dtype`` and int64 (N,) labels, a split stratified by class
    with ``test_size`` of the data held out (``seed`` picks it). Needs scikit-learn.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=dtype)
    y = torch.tensor(y)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    return Xtr, Xte, ytr, yte
