"""Event-camera data for ``spikegpt.snn``: Tonic's event arrays and transforms as (B, T, *) float tensors.

An event recording, as Tonic (https://tonic.readthedocs.io) holds it, is a numpy structured array with fields
``x``, ``y``, ``t``, ``p`` (pixel column, row, timestamp, polarity), sorted by ``t``. A sensor is
``sensor_size = (W, H, P)``. Tonic's ``ToFrame`` bins events into frames (T, P, H, W) of counts; spikegpt's
multi-step neurons take (B, T, *), so a batch of frames of equal T is what they consume
(``Linear`` layers after ``frames.flatten(2)``, (B, T, P*H*W)).

    tf = frame_transform((16, 16, 2), time_window=4000, end_time=100_000)      # T = 25 frames
    ds = SyntheticEvents(n_per_class=20, transform=tf)                          # duration 100_000
    frames, labels = collate_frames([ds[i] for i in range(8)])                  # (8, 25, 2, 16, 16), (8,)

``events_to_frames`` / ``frame_transform`` fix the time axis: windows ``[start + k w, start + (k + 1) w)`` for
``k < (end - start) / w``, so every recording of one duration gives the same T (Tonic's default ``ToFrame``
starts at the first event and drops the last one). ``SyntheticEvents`` is an in-memory, Tonic-compatible
dataset (``sensor_size``, ``dtype``, ``ordering``, ``classes``, ``transform``, ``target_transform``,
``transforms``) of moving bars and a rotating line on a small sensor, generated from a seed: nothing is
downloaded. ``tonic`` is imported only by the functions that run its transforms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["EVENT_DTYPE", "SyntheticEvents", "check_events", "collate_frames", "denoise", "events_to_frames",
           "frame_transform", "make_events"]

#: Tonic's ``tonic.io.events_struct``: the field layout of an event recording.
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])


def make_events(x, y, t, p) -> np.ndarray:
    """An event array (N,) of ``EVENT_DTYPE`` from equal-length integer sequences, stably sorted by ``t``.

    Raises:
        ValueError: sequences of different lengths or not 1-D, negative coordinates or timestamps.
    """
    cols = [np.asarray(v) for v in (x, y, t, p)]
    if any(c.ndim != 1 for c in cols) or len({len(c) for c in cols}) != 1:
        raise ValueError(f"make_events: x, y, t, p must be 1-D of one length, got shapes {[c.shape for c in cols]}")
    for name, c in zip("xyt", cols[:3]):
        if c.size and (not np.issubdtype(c.dtype, np.integer) or c.min() < 0):
            raise ValueError(f"make_events: {name} must hold non-negative integers")
    ev = np.empty(len(cols[0]), EVENT_DTYPE)
    for name, c in zip("xytp", cols):
        ev[name] = c
    return ev[np.argsort(ev["t"], kind="stable")]


def check_events(events: Any, sensor_size: Sequence[int] | None = None) -> np.ndarray:
    """Validate an event array: structured, with integer fields x, y, t, p, sorted by t; inside
    ``sensor_size = (W, H, P)`` when given (0 <= x < W, 0 <= y < H, 0 <= p < P). Returns ``events``.

    Raises:
        ValueError: naming the first problem found.
    """
    if not isinstance(events, np.ndarray) or events.dtype.names is None:
        raise ValueError(f"events must be a numpy structured array with fields x, y, t, p, got {type(events).__name__}"
                         + (f" of dtype {events.dtype}" if isinstance(events, np.ndarray) else ""))
    missing = [f for f in "xytp" if f not in events.dtype.names]
    if missing:
        raise ValueError(f"events lack the field(s) {missing} (have {list(events.dtype.names)})")
    if events.ndim != 1:
        raise ValueError(f"events must be 1-D (one record per event), got shape {events.shape}")
    for f in "xytp":
        kind = events.dtype[f].kind
        if kind not in "iub":
            raise ValueError(f"events field {f!r} must be integer (or bool for p), got {events.dtype[f]}")
    if events.size and np.any(np.diff(events["t"]) < 0):
        raise ValueError("events must be sorted by t")
    if sensor_size is not None:
        if len(sensor_size) != 3 or any(int(s) < 1 for s in sensor_size):
            raise ValueError(f"sensor_size must be (W, H, P) of positive ints, got {tuple(sensor_size)}")
        if events.size:
            for f, n in zip("xyp", sensor_size):
                v = events[f].astype(np.int64)
                if v.min() < 0 or v.max() >= n:
                    raise ValueError(f"events field {f!r} spans [{v.min()}, {v.max()}], outside [0, {n}) of "
                                     f"sensor_size {tuple(sensor_size)}")
    return events


def denoise(events: np.ndarray, filter_time: float) -> np.ndarray:
    """Tonic's ``transforms.Denoise``: keep an event only if one of its 4 neighbouring pixels had an event in the
    preceding ``filter_time`` (same unit as t). Tonic starts every pixel's memory at ``filter_time``, so an event
    with ``t < filter_time`` that has a neighbouring pixel on the sensor's extent is kept. Returns the kept events.
    """
    import tonic

    if not filter_time > 0:
        raise ValueError(f"denoise: filter_time must be positive, got {filter_time}")
    check_events(events)
    if events.size == 0:
        return events.copy()
    return tonic.transforms.Denoise(filter_time=filter_time)(events)


def _n_windows(start: float, end: float, time_window: float) -> int:
    n = (end - start) / time_window
    if not (n >= 1 and abs(n - round(n)) < 1e-9):
        raise ValueError(f"(end_time - start_time) = {end - start} must be a positive multiple of time_window = "
                         f"{time_window}")
    return int(round(n))


def events_to_frames(events: np.ndarray, sensor_size: Sequence[int], time_window: float, *, start_time: float = 0,
                     end_time: float | None = None, denoise_time: float | None = None, binary: bool = False,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bin events into frames with Tonic (optionally ``Denoise`` first, then ``ToFrame``).

    Args:
        events: an event array (``check_events``), inside ``sensor_size``.
        sensor_size: (W, H, P).
        time_window: frame length (unit of t); frame k counts events with
            ``start_time + k time_window <= t < start_time + (k + 1) time_window``.
        start_time, end_time: the binned span; ``end_time`` None: the end of the window holding the last event.
            ``end_time - start_time`` must be a multiple of ``time_window``; events outside are dropped.
        denoise_time: run ``denoise(events, denoise_time)`` first.
        binary: clamp counts to 1 (a spike per pixel and frame).
        dtype: of the result.

    Returns:
        (T, P, H, W) tensor of event counts, T = (end_time - start_time) / time_window.
    """
    import tonic

    check_events(events, sensor_size)
    if not time_window > 0:
        raise ValueError(f"events_to_frames: time_window must be positive, got {time_window}")
    if end_time is None:
        last = float(events["t"].max()) if events.size else start_time
        end_time = start_time + (math.floor((last - start_time) / time_window) + 1) * time_window
    n = _n_windows(start_time, end_time, time_window)
    W, H, P = (int(s) for s in sensor_size)
    if denoise_time is not None:
        events = denoise(events, denoise_time)
    events = events[(events["t"] >= start_time) & (events["t"] < end_time)]
    if events.size == 0:  # Tonic's slicers need at least one event
        return torch.zeros(n, P, H, W, dtype=dtype)
    to_frame = tonic.transforms.ToFrame(sensor_size=(W, H, P), time_window=time_window, start_time=start_time,
                                        end_time=end_time)
    frames = torch.from_numpy(np.asarray(to_frame(events.copy()), dtype=np.float64)).to(dtype)
    if frames.shape != (n, P, H, W):  # guards the window arithmetic against Tonic's own
        raise RuntimeError(f"tonic ToFrame returned {tuple(frames.shape)}, expected {(n, P, H, W)}")
    return frames.clamp_(max=1) if binary else frames


class _Frames:
    """A picklable Tonic-style transform: events -> ``events_to_frames(events, ...)``."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, events: np.ndarray) -> torch.Tensor:
        return events_to_frames(events, **self.kwargs)

    def __repr__(self) -> str:
        return f"frame_transform({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"


def frame_transform(sensor_size: Sequence[int], time_window: float, *, start_time: float = 0,
                    end_time: float | None = None, denoise_time: float | None = None, binary: bool = False,
                    dtype: torch.dtype = torch.float32) -> Callable[[np.ndarray], torch.Tensor]:
    """``events_to_frames`` with these arguments, as a transform for a Tonic(-compatible) dataset."""
    return _Frames(sensor_size=tuple(sensor_size), time_window=time_window, start_time=start_time,
                   end_time=end_time, denoise_time=denoise_time, binary=binary, dtype=dtype)


def collate_frames(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``DataLoader`` collate: [(frames (T, *), label), ...] -> frames (B, T, *) and labels (B,) int64.

    Raises:
        ValueError: an empty batch, a sample that is not a (tensor, label) pair, or frames of different shapes
            (different T: give the frame transform an ``end_time``).
    """
    if len(batch) == 0:
        raise ValueError("collate_frames: empty batch")
    frames, labels = [], []
    for i, item in enumerate(batch):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
            raise ValueError(f"collate_frames: sample {i} is not a (frames tensor, label) pair; apply a frame "
                             "transform to the dataset")
        frames.append(item[0])
        labels.append(int(item[1]))
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"collate_frames: frames of different shapes {sorted(shapes)}; fix T with end_time")
    if frames[0].dim() < 1:
        raise ValueError("collate_frames: frames must have a time axis (T, *)")
    return torch.stack(frames), torch.tensor(labels, dtype=torch.int64)


# ------------------------------------------------------------------------------------------- synthetic data


def _pattern(cls: int, phase: float, W: int, H: int, width: float) -> np.ndarray:
    """(H, W) bool image of class ``cls`` at ``phase`` in [0, 1): 0 a vertical bar moving right, 1 a horizontal bar
    moving down, 2 a line through the centre rotating clockwise, 3 the same rotating anticlockwise."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    if cls == 0:
        return np.abs(xx - phase * (W - 1)) < width
    if cls == 1:
        return np.abs(yy - phase * (H - 1)) < width
    angle = math.pi * phase * (1 if cls == 2 else -1)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    return np.abs((xx - cx) * math.sin(angle) - (yy - cy) * math.cos(angle)) < width


class SyntheticEvents:
    """An in-memory, Tonic-compatible event dataset: moving bars and rotating lines on a small sensor.

    ``SyntheticEvents(n_per_class=32, sensor_size=(16, 16, 2), n_classes=3, duration=100_000, n_steps=25,
    noise_rate=2e-3, seed=0, transform=None, target_transform=None, transforms=None)``. Classes (``classes``):
    0 a vertical bar sweeping right, 1 a horizontal bar sweeping down, 2 a line rotating clockwise about the
    centre, 3 (``n_classes=4``) anticlockwise. Each recording renders its pattern at ``n_steps`` phases over
    ``duration`` (unit of t, e.g. microseconds) with a random start phase, speed and bar width, and emits an
    ON event (p = 1) where a pixel turns on, an OFF event (p = 0) where it turns off, at a random time inside
    that step; plus uniform noise events (``noise_rate`` per pixel and step). All t lie in [0, duration).
    ``ds[i]`` is ``(events, label)`` as a Tonic dataset returns it (transforms applied); ``ds.events[i]``,
    ``ds.targets[i]`` are the raw recordings. Deterministic in ``seed``; nothing is downloaded.
    """

    ordering = "xytp"
    dtype = EVENT_DTYPE

    def __init__(self, n_per_class: int = 32, sensor_size: Sequence[int] = (16, 16, 2), n_classes: int = 3, *,
                 duration: int = 100_000, n_steps: int = 25, noise_rate: float = 2e-3, seed: int = 0,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 transforms: Callable | None = None):
        if not (isinstance(n_per_class, int) and n_per_class >= 1):
            raise ValueError(f"SyntheticEvents: n_per_class must be a positive int, got {n_per_class!r}")
        if n_classes not in (2, 3, 4):
            raise ValueError(f"SyntheticEvents: n_classes must be 2, 3 or 4, got {n_classes!r}")
        if len(sensor_size) != 3 or int(sensor_size[2]) != 2 or min(sensor_size[:2]) < 4:
            raise ValueError(f"SyntheticEvents: sensor_size must be (W >= 4, H >= 4, 2), got {tuple(sensor_size)}")
        if not (isinstance(duration, int) and isinstance(n_steps, int) and n_steps >= 2 and duration >= n_steps):
            raise ValueError(f"SyntheticEvents: need integer duration >= n_steps >= 2, got {duration}, {n_steps}")
        if not 0 <= noise_rate < 1:
            raise ValueError(f"SyntheticEvents: noise_rate must lie in [0, 1), got {noise_rate}")
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.classes = ["bar right", "bar down", "rotate clockwise", "rotate anticlockwise"][:n_classes]
        self.duration, self.n_steps = duration, n_steps
        self.transform, self.target_transform, self.transforms = transform, target_transform, transforms
        rng = np.random.default_rng(seed)
        W, H, _ = self.sensor_size
        step = duration / n_steps
        self.events: list[np.ndarray] = []
        self.targets: list[int] = []
        for i in range(n_per_class * n_classes):
            cls = i % n_classes
            start, speed, width = rng.uniform(0, 0.3), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.2)
            prev = np.zeros((H, W), bool)
            xs, ys, ts, ps = [], [], [], []
            for k in range(n_steps):
                img = _pattern(cls, (start + speed * k / n_steps) % 1.0, W, H, width)
                for pol, changed in ((1, img & ~prev), (0, prev & ~img)):
                    yy, xx = np.nonzero(changed)
                    xs.append(xx)
                    ys.append(yy)
                    ps.append(np.full(len(xx), pol))
                    ts.append(np.floor((k + rng.random(len(xx))) * step))
                noise = rng.random((H, W)) < noise_rate
                yy, xx = np.nonzero(noise)
                xs.append(xx)
                ys.append(yy)
                ps.append(rng.integers(0, 2, len(xx)))
                ts.append(np.floor((k + rng.random(len(xx))) * step))
                prev = img
            t = np.minimum(np.concatenate(ts), duration - 1).astype(np.int64)
            self.events.append(make_events(np.concatenate(xs).astype(np.int64), np.concatenate(ys).astype(np.int64),
                                           t, np.concatenate(ps)))
            self.targets.append(cls)

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: int):
        events, target = self.events[index].copy(), self.targets[index]
        if self.transform is not None:
            events = self.transform(events)
        if self.target_transform is not None:
            target = self.target_transform(target)
        if self.transforms is not None:
            events, target = self.transforms(events, target)
        return events, target

    def __repr__(self) -> str:
        return (f"SyntheticEvents({len(self)} recordings, classes={self.classes}, sensor_size={self.sensor_size}, "
                f"duration={self.duration})")
