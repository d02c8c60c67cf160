"""The learning-rate schedules against their closed forms."""

import math

import pytest

from spikegpt.train.schedule import warmup_cosine, warmup_linear


def test_warmup_cosine_closed_form():
    # warmup 4 of 100 steps, floor 0.1: (s + 1) / 4, then 0.1 + 0.9 * (1 + cos(pi * (s - 4) / 96)) / 2
    assert [warmup_cosine(s, 4, 100, 0.1) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert warmup_cosine(4, 4, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(28, 4, 100, 0.1) == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2)  # a quarter
    assert warmup_cosine(52, 4, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half way
    assert warmup_cosine(76, 4, 100, 0.1) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)) / 2)
    assert warmup_cosine(100, 4, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(250, 4, 100, 0.1) == pytest.approx(0.1)  # past max_steps: the floor


def test_warmup_cosine_without_warmup_and_flat_floor():
    assert warmup_cosine(0, 0, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(5, 0, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(10, 0, 10, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert all(warmup_cosine(s, 0, 10, 1.0) == pytest.approx(1.0) for s in range(12))  # min_lr = lr: constant


def test_warmup_cosine_decays_monotonically_after_warmup():
    values = [warmup_cosine(s, 10, 200, 0.05) for s in range(10, 220)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert min(values) == pytest.approx(0.05) and max(values) == pytest.approx(1.0)


def test_warmup_linear_closed_form():
    # warmup 2 of 4 steps: min(1, (s + 1) / 2) * (1 - s / 4)
    assert [warmup_linear(s, 2, 4) for s in range(5)] == pytest.approx([0.5, 0.75, 0.5, 0.25, 0.0])
    assert warmup_linear(0, 0, 10) == 1.0
    assert warmup_linear(5, 0, 10) == pytest.approx(0.5)
    assert warmup_linear(12, 0, 10) == 0.0  # past the end: stays at 0
