"""Tonic event data -> (B, T, *) tensors: frames against an independent numpy histogram, Tonic's denoising on a
hand-worked case, the synthetic dataset, batching, and bad input."""

import numpy as np
import pytest
import torch

import spikegpt.snn as snn
from spikegpt.snn.events import (
    EVENT_DTYPE,
    SyntheticEvents,
    check_events,
    collate_frames,
    denoise,
    events_to_frames,
    frame_transform,
    make_events,
)


def _random_events(rng, n, W, H, P, t_max):
    return make_events(rng.integers(0, W, n), rng.integers(0, H, n), rng.integers(0, t_max, n), rng.integers(0, P, n))


def _histogram(events, W, H, P, start, end, window):
    """Counts per (frame, polarity, row, column) by numpy alone; events at t >= end are outside."""
    ev = events[(events["t"] >= start) & (events["t"] < end)]
    edges = (np.arange(start, end + window, window), np.arange(P + 1), np.arange(H + 1), np.arange(W + 1))
    sample = np.stack([ev["t"], ev["p"], ev["y"], ev["x"]], 1).astype(np.float64)
    return np.histogramdd(sample, bins=edges)[0]


@pytest.mark.parametrize("start, end", [(0, 70), (14, 56), (0, None)])
def test_frames_equal_an_independent_histogram(start, end):
    rng = np.random.default_rng(0)
    W, H, P = 5, 4, 2
    ev = _random_events(rng, 400, W, H, P, 80)
    ev["t"][:5] = [0, 7, 14, 56, 70]  # events on window boundaries
    ev = ev[np.argsort(ev["t"], kind="stable")]
    frames = events_to_frames(ev, (W, H, P), 7, start_time=start, end_time=end)
    stop = end if end is not None else (int(ev["t"].max()) // 7 + 1) * 7
    ref = _histogram(ev, W, H, P, start, stop, 7)
    assert frames.dtype == torch.float32 and frames.shape == ref.shape == ((stop - start) // 7, P, H, W)
    np.testing.assert_array_equal(frames.numpy(), ref)
    assert ref.max() > 1  # counts, not just spikes
    binary = events_to_frames(ev, (W, H, P), 7, start_time=start, end_time=end, binary=True, dtype=torch.float64)
    assert binary.dtype == torch.float64
    np.testing.assert_array_equal(binary.numpy(), np.minimum(ref, 1))


def test_single_polarity_and_empty_recordings():
    rng = np.random.default_rng(1)
    ev = _random_events(rng, 50, 3, 3, 1, 30)
    frames = events_to_frames(ev, (3, 3, 1), 10, end_time=30)
    np.testing.assert_array_equal(frames.numpy(), _histogram(ev, 3, 3, 1, 0, 30, 10))
    empty = make_events([], [], [], [])
    assert torch.equal(events_to_frames(empty, (3, 3, 2), 10, end_time=30), torch.zeros(3, 2, 3, 3))


def test_denoise_removes_an_isolated_event_and_keeps_a_correlated_one():
    """Tonic's rule: keep an event when a 4-neighbour fired within the preceding filter_time. Hand-worked: the
    second event of an adjacent pair is kept, the first (nothing before it) and the isolated one are dropped, and
    a pair further apart in time than filter_time is dropped."""
    ev = make_events(x=[3, 4, 9, 1, 1], y=[3, 3, 9, 7, 8], t=[5000, 5300, 8000, 9000, 9000 + 1500], p=[1, 1, 0, 1, 1])
    kept = denoise(ev, filter_time=1000)
    assert kept.dtype == EVENT_DTYPE
    assert [(int(e["x"]), int(e["y"]), int(e["t"])) for e in kept] == [(4, 3, 5300)]
    frames = events_to_frames(ev, (10, 10, 2), 1000, end_time=11000, denoise_time=1000)
    assert frames.sum() == 1 and frames[5, 1, 3, 4] == 1
    assert len(denoise(ev, filter_time=2000)) == 2  # the slow pair is now close enough: its second event stays


def test_synthetic_dataset_is_tonic_compatible_and_deterministic():
    import tonic

    assert EVENT_DTYPE == tonic.io.events_struct
    ds = SyntheticEvents(n_per_class=4, seed=3)
    assert len(ds) == 12 and ds.sensor_size == (16, 16, 2) and ds.ordering == "xytp"
    assert sorted(set(ds.targets)) == [0, 1, 2] and len(ds.classes) == 3
    for i, (ev, label) in enumerate(ds[i] for i in range(len(ds))):
        check_events(ev, ds.sensor_size)
        assert ev["t"].min() >= 0 and ev["t"].max() < ds.duration and len(ev) > 50 and label == ds.targets[i]
    again = SyntheticEvents(n_per_class=4, seed=3)
    other = SyntheticEvents(n_per_class=4, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(ds.events, again.events))
    assert not np.array_equal(ds.events[0], other.events[0])
    # Tonic's own transforms accept the recordings: ToFrame over n_time_bins, Denoise, Compose
    tonic_frames = tonic.transforms.ToFrame(sensor_size=ds.sensor_size, n_time_bins=5)(ds.events[0].copy())
    assert tonic_frames.shape == (5, 2, 16, 16)
    pipeline = tonic.transforms.Compose([tonic.transforms.Denoise(filter_time=8000),
                                         frame_transform(ds.sensor_size, 4000, end_time=ds.duration)])
    assert pipeline(ds.events[0]).sum() == len(denoise(ds.events[0], 8000))


def test_synthetic_frames_put_each_event_in_its_step():
    """Frames of the dataset: T = n_steps, each event counted once, in frame t // (duration / n_steps)."""
    step = 4000
    ds = SyntheticEvents(n_per_class=2, duration=25 * step, n_steps=25,
                         transform=frame_transform((16, 16, 2), step, end_time=25 * step))
    for i in range(len(ds)):
        frames, label = ds[i]
        ev = ds.events[i]
        assert frames.shape == (25, 2, 16, 16) and label == ds.targets[i]
        per_step = np.bincount(ev["t"] // step, minlength=25)
        np.testing.assert_array_equal(frames.sum((1, 2, 3)).numpy(), per_step)
        on = ev[ev["p"]]
        np.testing.assert_array_equal(frames[:, 1].sum(0).numpy(),
                                      np.histogram2d(on["y"], on["x"], bins=(np.arange(17), np.arange(17)))[0])


def test_classes_differ_in_where_events_go():
    """The bar sweeping right moves its mean x over time, the bar sweeping down its mean y: a learnable signal."""
    ds = SyntheticEvents(n_per_class=6, noise_rate=0.0, seed=5)
    slope = {0: [], 1: []}
    for ev, label in zip(ds.events, ds.targets):
        if label in slope:
            on = ev[ev["p"]]
            early, late = on["t"] < ds.duration * 0.3, (on["t"] > ds.duration * 0.3) & (on["t"] < ds.duration * 0.6)
            axis = "x" if label == 0 else "y"
            slope[label].append(on[axis][late].mean() - on[axis][early].mean())
    assert min(slope[0]) > 1 and min(slope[1]) > 1


def test_collate_batches_frames_for_multi_step_neurons():
    ds = SyntheticEvents(n_per_class=3, transform=frame_transform((16, 16, 2), 4000, end_time=100_000))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, collate_fn=collate_frames)
    frames, labels = next(iter(loader))
    assert frames.shape == (4, 25, 2, 16, 16) and frames.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == ds.targets[:4]
    lif = snn.Leaky(beta=0.9, step_mode="multi")
    spk, mem = lif(torch.nn.Linear(512, 3)(frames.flatten(2)))
    assert spk.shape == mem.shape == (4, 25, 3)
    assert sum(len(b[1]) for b in loader) == len(ds)


def test_bad_input_raises_clear_errors():
    ev = make_events([1, 2], [0, 1], [5, 9], [0, 1])
    with pytest.raises(ValueError, match="structured array"):
        check_events(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"lack the field\(s\) \['p'\]"):
        check_events(np.zeros(3, np.dtype([("x", int), ("y", int), ("t", int)])))
    with pytest.raises(ValueError, match="sorted by t"):
        check_events(ev[::-1])
    with pytest.raises(ValueError, match="field 'x' spans"):
        check_events(ev, (2, 2, 2))
    with pytest.raises(ValueError, match="must be integer"):
        check_events(np.zeros(2, np.dtype([("x", float), ("y", int), ("t", int), ("p", int)])))
    with pytest.raises(ValueError, match="sensor_size"):
        events_to_frames(ev, (4, 4), 5)
    with pytest.raises(ValueError, match="multiple of time_window"):
        events_to_frames(ev, (4, 4, 2), 4, end_time=10)
    with pytest.raises(ValueError, match="time_window must be positive"):
        events_to_frames(ev, (4, 4, 2), 0)
    with pytest.raises(ValueError, match="filter_time"):
        denoise(ev, 0)
    with pytest.raises(ValueError, match="one length"):
        make_events([1], [1, 2], [0], [0])
    with pytest.raises(ValueError, match="non-negative"):
        make_events([-1], [1], [0], [0])
    with pytest.raises(ValueError, match="different shapes"):
        collate_frames([(torch.zeros(3, 2), 0), (torch.zeros(4, 2), 1)])
    with pytest.raises(ValueError, match="frame transform"):
        collate_frames([(ev, 0)])
    with pytest.raises(ValueError, match="empty"):
        collate_frames([])
    with pytest.raises(ValueError, match="n_classes"):
        SyntheticEvents(n_classes=7)
    with pytest.raises(ValueError, match="sensor_size"):
        SyntheticEvents(sensor_size=(16, 16, 1))
