"""Every training method of ``spikegpt.snn`` on the same tasks: accuracy, spikes, training memory, time.

Methods (each run through its example's own training function where one exists):

- digits, rate-coded (T steps): BPTT and e-prop (``examples/digits_snn.py``), truncated BPTT (this script, the
  BPTT network trained by ``spikegpt.snn.truncated_bptt``), DECOLLE, OSTL, OSTTP (``examples/online_learning.py``),
  STDP + logistic readout (this script: ``spikegpt.snn.STDP`` on a competitive hidden layer) with its control
  (the same layer untrained);
- digits, latency-coded in continuous time: EventProp (``examples/eventprop_latency.py``);
- digits, analog input: ANN-to-SNN conversion (``examples/ann_to_snn.py``) at T in {4, 8, 16, 32, 64};
- synthetic event-camera recordings (Tonic format, ``examples/tonic_events.py``): BPTT, and e-prop and OSTL on the
  same frames flattened to (B, T, 512) (this script: the library's ``EProp`` / ``OSTL`` learners).

Spikes per sample: hidden + output spikes per test sample (input spikes not counted; non-spiking readouts count 0).
Peak training memory: bytes of the tensors autograd holds for the backward pass during ONE training step
(``torch.autograd.graph.saved_tensors_hooks``, from each save until autograd releases it; parameters excluded,
each saved view counted once as ``numel * element_size``), plus the learning rule's state carried between steps
(membranes, eligibility traces); the peak of the sum over the step. Measured at T in ``--mem-steps`` to test
"BPTT memory grows O(nT), online rules O(n)": a second table gives bytes against T, the least-squares slope and
the log-log exponent. The trained networks are taken from the examples by wrapping their constructors while an
example runs (``capture``), to count their spikes on the test set.

    python benchmarks/snn_methods.py [--epochs 15] [--steps 20] [--quick] [--out runs/snn_methods.json]

Needs scikit-learn (digits, logistic readout) and tonic (event frames); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

import spikegpt.snn as snn
from spikegpt.snn import functional as SF
from spikegpt.snn import spikegen
from spikegpt.snn.decolle import DECOLLE
from spikegpt.snn.eprop import EProp
from spikegpt.snn.neurons import LeakyState, leaky_step
from spikegpt.snn.ostl import OSTL, LIFStack

ROOT = Path(__file__).resolve().parents[1]
ANN_STEPS = (4, 8, 16, 32, 64)


def _example(name: str):
    """Import ``examples/<name>.py`` once (the examples are scripts, not a package)."""
    key = f"_snn_methods_example_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "examples" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


@contextlib.contextmanager
def capture(owner, name: str):
    """Replace ``owner.name`` (a class or factory) by a wrapper that records what it returns; yields the list."""
    orig = getattr(owner, name)
    made = []

    def wrapper(*args, **kwargs):
        obj = orig(*args, **kwargs)
        made.append(obj)
        return obj

    setattr(owner, name, wrapper)
    try:
        yield made
    finally:
        setattr(owner, name, orig)


# ------------------------------------------------------------------------------------------ training memory


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _key(t: torch.Tensor):
    return t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _is_param(t: torch.Tensor) -> bool:
    base = t._base if t._base is not None else t
    return base.is_leaf and base.requires_grad


class _Saved:
    """What the pack hook hands autograd instead of a tensor: freed (``__del__``) when autograd releases it."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key, meter: MemoryMeter):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        self.meter._release(self.key)


class MemoryMeter:
    """Peak bytes of (tensors autograd holds for a backward pass) + (the learning rule's current state).

    Inside ``with MemoryMeter() as m:`` every tensor autograd saves (parameters and views of them excluded) counts
    from the moment it is saved until autograd releases it (after ``backward``, or when the graph is dropped);
    ``EProp.step``, ``OSTL.step`` (so ``OSTTP``) and ``DECOLLE.step`` report the state they take and return, and
    :func:`note_state` lets a trainer in this script report its own. ``m.peak`` is the largest total seen, each
    distinct view (data pointer, shape, strides, dtype) counted once, as ``numel * element_size``.
    """

    active: MemoryMeter | None = None

    def __init__(self):
        self.live: dict = {}  # key -> [bytes, number of saves holding it]
        self.live_bytes = 0
        self.state: list[torch.Tensor] = []
        self.peak = 0
        self._stack = contextlib.ExitStack()

    def _update(self) -> None:
        extra = sum(_nbytes(t) for t in {_key(t): t for t in self.state}.values() if _key(t) not in self.live)
        self.peak = max(self.peak, self.live_bytes + extra)

    def _release(self, key) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self.live[key]

    def _pack(self, t: torch.Tensor):
        if _is_param(t):
            return t
        key = _key(t)
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [_nbytes(t), 0]
            self.live_bytes += entry[0]
        entry[1] += 1
        self._update()
        return _Saved(t, key, self)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Saved) else packed

    def note_state(self, state) -> None:
        self.state = list(_tensors(state))
        self._update()

    def _patch(self, cls) -> None:
        orig = cls.step
        meter = self

        def step(learner, *args, **kwargs):
            meter.note_state(kwargs.get("state", args[2] if len(args) > 2 else None))
            out = orig(learner, *args, **kwargs)
            meter.note_state(out[2])
            return out

        cls.step = step
        self._stack.callback(setattr, cls, "step", orig)

    def __enter__(self) -> MemoryMeter:
        if MemoryMeter.active is not None:
            raise RuntimeError("MemoryMeter: already measuring")
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack))
        for cls in (EProp, OSTL, DECOLLE):
            self._patch(cls)
        MemoryMeter.active = self
        return self

    def __exit__(self, *exc) -> None:
        MemoryMeter.active = None
        self.state = []
        self._stack.close()


def note_state(state) -> None:
    """Report a learning rule's current state (nested tensors) to the active :class:`MemoryMeter`, if any."""
    if MemoryMeter.active is not None:
        MemoryMeter.active.note_state(state)


def measure(fn, *args, **kwargs) -> int:
    """Peak training bytes of ``fn(*args, **kwargs)`` (see :class:`MemoryMeter`)."""
    with MemoryMeter() as m:
        fn(*args, **kwargs)
    return m.peak


def fit_memory(steps, values) -> dict:
    """Least-squares line bytes = a + b T and the log-log exponent (1: O(T), 0: independent of T)."""
    n = len(steps)
    mt, mv = sum(steps) / n, sum(values) / n
    slope = sum((t - mt) * (v - mv) for t, v in zip(steps, values)) / sum((t - mt) ** 2 for t in steps)
    if min(values) > 0:
        lt, lv = [math.log(t) for t in steps], [math.log(v) for v in values]
        mlt, mlv = sum(lt) / n, sum(lv) / n
        expo = sum((a - mlt) * (b - mlv) for a, b in zip(lt, lv)) / sum((a - mlt) ** 2 for a in lt)
    else:
        expo = float("nan")
    return {"slope_bytes_per_step": slope, "exponent": expo}


# ------------------------------------------------------------------------------------------ methods written here


def _window_loss(out: torch.Tensor, _, *, y: torch.Tensor, T: int) -> torch.Tensor:
    """``ce_rate_loss`` of one window (B, w, K), weighted w / T: the windows' losses add up to BPTT's."""
    return SF.ce_rate_loss(out, y) * out.shape[1] / T


def train_tbptt(Xtr, ytr, Xte, yte, args, gen):
    """The BPTT network of ``examples/digits_snn.py`` trained by ``truncated_bptt`` in windows of ``args.window``
    steps (gradients of all windows summed, one optimiser step per batch; the windows' losses weighted so that
    they add up to BPTT's loss). Returns (held-out accuracy, last training loss)."""
    digits = _example("digits_snn")
    torch.manual_seed(args.seed)
    net = digits.FeedForwardSNN()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)

    def forward(x, state):
        m1, m2 = (None, None) if state is None else state
        spk1, mem1 = net.lif1(net.fc1(x), m1)
        spk2, mem2 = net.lif2(net.fc2(spk1), m2)
        return spk2, (mem1[:, -1], mem2[:, -1])

    loss = float("nan")
    for _ in range(args.epochs):
        for idx in digits.batches(len(Xtr), args.batch, gen):
            x, y = spikegen.rate(Xtr[idx], args.steps, generator=gen), ytr[idx]
            opt.zero_grad()
            losses, _ = snn.truncated_bptt(forward, x, functools.partial(_window_loss, y=y, T=args.steps),
                                           args.window)
            opt.step()
            loss = sum(losses)
    with torch.no_grad():
        return SF.accuracy_rate(net(spikegen.rate(Xte, args.steps, generator=gen)), yte), loss


class STDPLayer:
    """A competitive hidden layer learnt by STDP: ``n_in -> n_hidden`` non-negative weights (rows normalised to
    ``norm``), LIF membranes (``leaky_step``, no built-in reset) and adaptive thresholds ``1 + theta``.

    Learning (``run(x, learn=True)``): at each step only the neuron furthest above its threshold fires (1-WTA),
    it resets to 0 and inhibits the others by ``inhibition``; ``snn.STDP`` (soft bounds, SGD(lr=1)) updates the
    weights, rows are renormalised, the winner's theta grows by ``dtheta`` (decay ``theta_decay`` per step).
    Features (``learn=False``): every neuron above threshold fires and resets by subtraction; no competition.
    """

    def __init__(self, n_in=64, n_hidden=128, *, norm=3.0, beta=0.9, inhibition=0.5, dtheta=0.05,
                 theta_decay=0.999, a_plus=0.02, tau=5.0, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(n_in, n_hidden, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.rand(n_hidden, n_in, generator=g))
        self.norm, self.beta, self.inhibition = norm, beta, inhibition
        self.dtheta, self.theta_decay = dtheta, theta_decay
        self._normalise()
        self.theta = torch.zeros(n_hidden)
        self.rule = snn.STDP(self.fc, tau_pre=tau, tau_post=tau, a_plus=a_plus, a_minus=a_plus / 2, bounds="soft")
        self.opt = torch.optim.SGD(self.fc.parameters(), lr=1.0)

    @torch.no_grad()
    def _normalise(self) -> None:
        w = self.fc.weight
        w.mul_(self.norm / w.sum(1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def run(self, x: torch.Tensor, learn: bool) -> torch.Tensor:
        """x (B, T, n_in) spikes -> hidden spike counts (B, n_hidden); learns when ``learn``."""
        B, T, _ = x.shape
        N = self.fc.out_features
        st = LeakyState(torch.zeros(B, N))
        counts = torch.zeros(B, N)
        self.rule.reset()
        for t in range(T):
            _, st = leaky_step(self.fc(x[:, t]), st, beta=self.beta, reset_mechanism="none")
            v = st.mem - (1.0 + self.theta)
            if learn:
                vmax, win = v.max(1)
                fired = (vmax > 0).to(v.dtype).unsqueeze(1)
                z = nn.functional.one_hot(win, N).to(v.dtype) * fired
                st = LeakyState(st.mem * (1 - z) - self.inhibition * fired * (1 - z))
                self.opt.zero_grad()
                self.rule(x[:, t], z)
                self.opt.step()
                self._normalise()
                self.theta = self.theta * self.theta_decay + self.dtheta * z.mean(0)
                note_state((st, self.rule.state, self.theta, counts))
            else:
                z = (v > 0).to(v.dtype)
                st = LeakyState(st.mem - (1.0 + self.theta) * z)
            counts += z
        return counts


def train_stdp(Xtr, ytr, Xte, yte, args, gen, *, learn=True):
    """Unsupervised STDP (``args.stdp_epochs`` epochs, batches of ``args.stdp_batch``) on rate-coded digits, then
    a logistic-regression readout of the hidden spike counts. ``learn=False``: the readout on the untrained
    layer (the control). Returns (held-out accuracy, readout's training log-loss, test spikes per sample)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    digits = _example("digits_snn")
    layer = STDPLayer(seed=args.seed)
    if learn:
        for _ in range(args.stdp_epochs):
            for idx in digits.batches(len(Xtr), args.stdp_batch, gen):
                layer.run(spikegen.rate(Xtr[idx], args.steps, generator=gen), learn=True)
    ftr = layer.run(spikegen.rate(Xtr, args.steps, generator=gen), learn=False)
    fte = layer.run(spikegen.rate(Xte, args.steps, generator=gen), learn=False)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(ftr.numpy(), ytr.numpy())
    loss = log_loss(ytr.numpy(), clf.predict_proba(ftr.numpy()), labels=list(range(10)))
    return float(clf.score(fte.numpy(), yte.numpy())), float(loss), fte.sum().item() / len(Xte)


def train_events_online(kind, data, args, gen):
    """e-prop (``RSNN`` + ``EProp``) or OSTL (``LIFStack`` + ``OSTL``, one hidden layer) on event frames
    ``data = (xtr, ytr, xte, yte)``, frames (N, T, 2, H, W) flattened to (N, T, 2 H W); the digits examples' neuron
    settings, ``args.hidden`` neurons, Adam(``args.lr``), ``args.epochs`` of batches of ``args.batch``. Returns
    (held-out accuracy, last training loss, trained network)."""
    xtr, ytr, xte, yte = (d.flatten(2) if d.dim() > 2 else d for d in data)
    torch.manual_seed(args.seed)
    n_in, K = xtr.shape[2], args.classes
    grad = snn.surrogate.fast_sigmoid(slope=5)
    if kind == "eprop":
        net = snn.RSNN(n_in, args.hidden, K, beta=0.9, kappa=0.8, spike_grad=grad)
        learner = EProp(net, loss="ce")
    else:
        net = LIFStack([n_in, args.hidden, K], beta=0.9, spike_grad=grad)
        learner = OSTL(net)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    loss = float("nan")
    for _ in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), args.batch):
            idx = perm[i : i + args.batch]
            opt.zero_grad()
            loss, _ = learner.accumulate(xtr[idx], ytr[idx])
            opt.step()
    with torch.no_grad():
        y, _ = net(xte)
    return (y.mean(1).argmax(1) == yte).float().mean().item(), loss, net


# ------------------------------------------------------------------------------------------ spike counts


def _count(spikes) -> int:
    return sum(int(torch.count_nonzero(s)) for s in _tensors(spikes))


def _recorded(net: nn.Module, fn) -> int:
    with snn.record_spikes(net) as rec:
        fn()
    return sum(rec.counts.values())


# ------------------------------------------------------------------------------------------ the benchmark


def _ns(**kw) -> argparse.Namespace:
    return argparse.Namespace(**kw)


class Bench:
    """Runs the methods; ``rows`` (main table) and ``memory`` ({method: {T: bytes}}) fill up as it goes."""

    def __init__(self, args):
        self.args = args
        self.rows: list[dict] = []
        self.memory: dict[str, dict] = {}
        self.extra: dict = {}
        digits = _example("digits_snn")
        Xtr, Xte, ytr, yte = digits.load(args.seed)
        self.digits = self.subset(Xtr, ytr, Xte, yte)

    def subset(self, Xtr, ytr, Xte, yte):
        """The first ``--train-subset`` / ``--test-subset`` samples of a split (0: all)."""
        a = self.args
        if a.train_subset:
            Xtr, ytr = Xtr[: a.train_subset], ytr[: a.train_subset]
        if a.test_subset:
            Xte, yte = Xte[: a.test_subset], yte[: a.test_subset]
        return Xtr, ytr, Xte, yte

    def gen(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.args.seed + offset)

    def row(self, method, task, acc, spikes, mem, seconds, **notes) -> None:
        r = dict(method=method, task=task, accuracy=float(acc), spikes_per_sample=float(spikes),
                 peak_train_bytes=int(mem), seconds=float(seconds), **notes)
        self.rows.append(r)
        a = self.args
        if a.verbose:
            print(f"  {method:28s} {task:24s} acc {acc:.3f}  spikes/sample {spikes:8.1f}  mem {mem / 1024:9.1f} KiB  "
                  f"{seconds:6.1f} s", flush=True)

    def rate_args(self, **kw) -> argparse.Namespace:
        a = self.args
        return _ns(**{**dict(epochs=a.epochs, steps=a.steps, batch=a.batch, seed=a.seed, window=a.window,
                             stdp_epochs=a.stdp_epochs, stdp_batch=a.stdp_batch), **kw})

    def memory_curve(self, name: str, step_fn) -> int:
        """``step_fn(T)`` runs one training step at T; fills ``memory[name]``; returns the bytes at ``--steps``."""
        steps = sorted(set(self.args.mem_steps) | {self.args.steps})
        curve = {T: measure(step_fn, T) for T in steps}
        self.memory[name] = {T: curve[T] for T in self.args.mem_steps}
        return curve[self.args.steps]

    # --- digits, rate coded: functions with the examples' signature ---

    def rate_methods(self) -> dict:
        """{row name: (training function, kind of network it builds: a key of :meth:`capturing`)}."""
        digits, online = _example("digits_snn"), _example("online_learning")
        return {
            "BPTT": (digits.train_bptt, "ff"),
            f"TBPTT (window {self.args.window})": (train_tbptt, "ff"),
            "e-prop": (digits.train_eprop, "rsnn"),
            "DECOLLE": (online.train_decolle, "decolle"),
            "OSTL": (online.train_ostl, "stack"),
            "OSTTP": (online.train_osttp, "stack"),
        }

    @contextlib.contextmanager
    def capturing(self):
        """Record the networks the rate-coded examples build, by kind (FeedForwardSNN, RSNN, DECOLLE, LIFStack)."""
        digits, online = _example("digits_snn"), _example("online_learning")
        with capture(digits, "FeedForwardSNN") as ff, capture(snn, "RSNN") as rsnn, \
                capture(online, "DECOLLE") as dec, capture(online, "LIFStack") as stack:
            yield {"ff": ff, "rsnn": rsnn, "decolle": dec, "stack": stack}

    def spikes_per_test_sample(self, kind: str, net) -> float:
        """Hidden + output spikes per test sample of a trained rate-coded digits network (a fresh rate code)."""
        _, _, Xte, _ = self.digits
        x = spikegen.rate(Xte, self.args.steps, generator=self.gen(1))
        with torch.no_grad():
            if kind == "ff":
                n = _recorded(net, lambda: net(x))
            else:  # RSNN: (readout, hidden spikes); DECOLLE / LIFStack: (readout, [spikes per layer])
                n = _count(net(x)[1])
        return n / len(Xte)

    def run_rate(self, only):
        Xtr, ytr, Xte, yte = self.digits
        B = self.args.mem_batch
        task = f"digits rate T={self.args.steps}"
        for name, (fn, kind) in self.rate_methods().items():
            if only and name.split()[0] not in only:
                continue
            with self.capturing() as made:
                t0 = time.perf_counter()
                acc, loss = fn(Xtr, ytr, Xte, yte, self.rate_args(), self.gen())
                seconds = time.perf_counter() - t0
                net = made[kind][-1]
            spikes = self.spikes_per_test_sample(kind, net)
            mem = self.memory_curve(name, lambda T, fn=fn: fn(Xtr[:B], ytr[:B], Xte[:2], yte[:2],
                                                              self.rate_args(epochs=1, steps=T, batch=B), self.gen()))
            self.row(name, task, acc, spikes, mem, seconds, last_loss=float(loss))

    def run_stdp(self):
        Xtr, ytr, Xte, yte = self.digits
        B, task = self.args.mem_batch, f"digits rate T={self.args.steps}"
        t0 = time.perf_counter()
        acc, loss, spikes = train_stdp(Xtr, ytr, Xte, yte, self.rate_args(), self.gen())
        seconds = time.perf_counter() - t0

        def one_step(T):
            STDPLayer(seed=self.args.seed).run(spikegen.rate(Xtr[:B], T, generator=self.gen()), learn=True)

        mem = self.memory_curve("STDP + readout", one_step)
        self.row("STDP + readout", task, acc, spikes, mem, seconds, readout_log_loss=loss)
        t0 = time.perf_counter()
        acc, loss, spikes = train_stdp(Xtr, ytr, Xte, yte, self.rate_args(), self.gen(), learn=False)
        self.row("untrained layer + readout", task, acc, spikes, 0, time.perf_counter() - t0, readout_log_loss=loss,
                 note="control for STDP: the same layer before learning; no training step, memory 0")

    def run_eventprop(self):
        ep = _example("eventprop_latency")
        a = self.args
        Xtr, Xte, ytr, yte = ep.load(a.seed)
        Xtr, ytr, Xte, yte = self.subset(Xtr, ytr, Xte, yte)
        eargs = ep.parser().parse_args(["--seed", str(a.seed)] + (["--epochs", str(a.eventprop_epochs)]
                                                                  if a.eventprop_epochs else []))
        self.extra["eventprop_args"] = vars(eargs)
        with capture(ep, "build") as made:
            t0 = time.perf_counter()
            acc, loss = ep.train(Xtr, ytr, Xte, yte, eargs, self.gen())
            seconds = time.perf_counter() - t0
        net = made[-1]
        with torch.no_grad():
            out = net(ep.latency_times(Xte, eargs.t_in))
        spikes = sum(int(torch.isfinite(o).sum()) for o in out) / len(Xte)
        B = a.mem_batch

        def one_step(T):  # the latency window scales with T: t_in = T, t_max = 3 T (the example's 20 / 60 at T=20)
            targs = _ns(**{**vars(eargs), "epochs": 1, "batch": B, "t_in": float(T), "t_max": 3.0 * T})
            ep.train(Xtr[:B], ytr[:B], Xte[:2], yte[:2], targs, self.gen())

        curve = {T: measure(one_step, T) for T in a.mem_steps}
        self.memory["EventProp"] = curve
        ref = _ns(**{**vars(eargs), "epochs": 1, "batch": B})
        mem = measure(lambda: ep.train(Xtr[:B], ytr[:B], Xte[:2], yte[:2], ref, self.gen()))
        self.row("EventProp", f"digits latency t<{eargs.t_in:g}", acc, spikes, mem, seconds, last_loss=float(loss),
                 note="memory-vs-T: latency window t_in = T, t_max = 3T (continuous time, no T grid)")

    def run_ann(self):
        a2 = _example("ann_to_snn")
        a = self.args
        Xtr, ytr, Xte, yte = self.digits
        aargs = a2.parse_args(["--seed", str(a.seed), "--steps", *map(str, ANN_STEPS)]
                              + (["--epochs", str(a.ann_epochs)] if a.ann_epochs else []))
        with capture(a2, "convert_to_snn") as made:
            r = a2.train_ann_to_snn(Xtr, ytr, Xte, yte, aargs, self.gen())
        self.extra["ann_to_snn"] = r
        nets = dict(zip(("mlp max", "mlp percentile", "cnn max", "cnn percentile"), made))
        B = a.mem_batch
        shapes = {"mlp": (64,), "cnn": (1, 8, 8)}
        mems = {}
        for kind, make in (("mlp", a2.make_mlp), ("cnn", a2.make_cnn)):
            targs = _ns(**{**vars(aargs), "epochs": 1, "batch": B})
            mems[kind] = measure(a2.train_ann, make(), Xtr[:B].reshape(-1, *shapes[kind]), ytr[:B], targs, self.gen())
        self.memory["ANN-to-SNN (MLP)"] = dict.fromkeys(a.mem_steps, mems["mlp"])
        for kind in ("mlp", "cnn"):
            net = nets[f"{kind} percentile"]
            with snn.record_spikes(net, keep="outputs") as rec, torch.no_grad():
                net(Xte.reshape(-1, *shapes[kind]), max(ANN_STEPS))
            per_step = [sum(int(torch.count_nonzero(rec.tensors[s][t])) for s in rec.tensors)
                        for t in range(max(ANN_STEPS))]
            for T in ANN_STEPS:
                self.row(f"ANN-to-SNN {kind.upper()}", f"digits analog T={T}", r[kind]["snn"]["percentile"][T],
                         sum(per_step[:T]) / len(Xte), mems[kind], r["seconds"], ann_accuracy=r[kind]["ann"],
                         note="percentile norm, membrane readout; time = both ANNs + all conversions")

    def run_events(self, only):
        te = _example("tonic_events")
        a = self.args
        eargs = te.parser().parse_args(["--seed", str(a.seed)] + (a.events_args or []))
        self.extra["events_args"] = vars(eargs)
        data = te.load(eargs)
        task = f"events T={eargs.steps}"
        B = min(a.mem_batch, len(data[0]))
        if not only or "BPTT" in only:
            with capture(te, "EventSNN") as made:
                t0 = time.perf_counter()
                acc, loss = te.train_events(eargs, self.gen())
                seconds = time.perf_counter() - t0
            net = made[-1]
            with torch.no_grad():
                spikes = _recorded(net, lambda: net(data[2])) / len(data[2])
            small = (data[0][:B], data[1][:B], data[2][:2], data[3][:2])
            mem = measure(lambda: te.fit(te.EventSNN(eargs.model, n_out=eargs.classes), small,
                                         _ns(**{**vars(eargs), "epochs": 1, "batch": B}), self.gen()))
            self.row("BPTT", task, acc, spikes, mem, seconds, last_loss=float(loss))
        oargs = _ns(**{**vars(eargs), "epochs": a.events_online_epochs or eargs.epochs, "hidden": 64})
        for kind, name in (("eprop", "e-prop"), ("ostl", "OSTL")):
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            acc, loss, net = train_events_online(kind, data, oargs, self.gen())
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                spikes = _count(net(data[2].flatten(2))[1]) / len(data[2])
            small = (data[0][:B], data[1][:B], data[2][:2], data[3][:2])
            mem = measure(train_events_online, kind, small, _ns(**{**vars(oargs), "epochs": 1, "batch": B}), self.gen())
            self.row(name, task, acc, spikes, mem, seconds, last_loss=float(loss))


# ------------------------------------------------------------------------------------------ output


def format_tables(rows, memory, mem_steps) -> str:
    lines = [f"{'method':28s} {'task':24s} {'accuracy':>8s} {'spikes/sample':>13s} {'peak train mem':>15s} "
             f"{'time (s)':>8s}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r['method']:28s} {r['task']:24s} {r['accuracy']:8.3f} {r['spikes_per_sample']:13.1f} "
                     f"{r['peak_train_bytes'] / 1024:11.1f} KiB {r['seconds']:8.1f}")
    lines.append("")
    head = "".join(f"{'T=' + str(T):>11s}" for T in mem_steps)
    lines.append(f"{'training memory (KiB) vs T':28s}{head} {'slope B/step':>13s} {'exponent':>9s} "
                 f"{'T' + str(mem_steps[-1]) + '/T' + str(mem_steps[0]):>9s}")
    lines.append("-" * len(lines[-1]))
    for name, m in memory.items():
        vals = [m["bytes"][str(T)] for T in mem_steps]
        ratio = vals[-1] / vals[0] if vals[0] else float("nan")
        lines.append(f"{name:28s}" + "".join(f"{v / 1024:11.1f}" for v in vals)
                     + f" {m['slope_bytes_per_step']:13.1f} {m['exponent']:9.2f} {ratio:9.2f}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15, help="epochs of every rate-coded digits method")
    ap.add_argument("--steps", type=int, default=20, help="rate-code time steps for the digits methods")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--window", type=int, default=5, help="truncated BPTT window")
    ap.add_argument("--stdp-epochs", type=int, default=1)
    ap.add_argument("--stdp-batch", type=int, default=16)
    ap.add_argument("--eventprop-epochs", type=int, default=None, help="default: the example's")
    ap.add_argument("--ann-epochs", type=int, default=None, help="default: the example's")
    ap.add_argument("--events-online-epochs", type=int, default=None,
                    help="e-prop / OSTL epochs on the event frames (default: the example's, as its BPTT)")
    ap.add_argument("--events-args", nargs=argparse.REMAINDER, default=None,
                    help="extra arguments for examples/tonic_events.py's parser (last on the command line)")
    ap.add_argument("--mem-steps", type=int, nargs="+", default=[10, 20, 40, 80])
    ap.add_argument("--mem-batch", type=int, default=64, help="batch of the one training step measured for memory")
    ap.add_argument("--train-subset", type=int, default=0, help="use only the first N training digits (0: all)")
    ap.add_argument("--test-subset", type=int, default=0, help="use only the first N test digits (0: all)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="run only these (BPTT TBPTT e-prop DECOLLE OSTL OSTTP STDP EventProp ANN-to-SNN events)")
    ap.add_argument("--quick", action="store_true", help="a smoke run of every method (< 1 minute)")
    ap.add_argument("--out", default="runs/snn_methods.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", dest="verbose", action="store_false", help="print only the tables")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.steps, args.stdp_epochs, args.train_subset, args.test_subset = 1, 10, 1, 128, 150
        args.eventprop_epochs, args.ann_epochs, args.events_online_epochs = 1, 1, 1
        args.mem_batch = 16
        args.events_args = ["--epochs", "1", "--per-class", "8"] + (args.events_args or [])
    if sorted(set(args.mem_steps)) != args.mem_steps or len(args.mem_steps) < 2 or args.mem_steps[0] < 1:
        raise SystemExit(f"--mem-steps must be >= 2 increasing positive ints, got {args.mem_steps}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bench = Bench(args)
    only = set(args.methods or [])
    Xtr, _, Xte, _ = bench.digits
    if args.verbose:
        print(f"digits: {len(Xtr)} train / {len(Xte)} test; rate code T={args.steps}, {args.epochs} epochs; "
              f"memory of one training step, batch {args.mem_batch}, T in {args.mem_steps}", flush=True)
    bench.run_rate(only)
    if not only or "STDP" in only:
        bench.run_stdp()
    if not only or "EventProp" in only:
        bench.run_eventprop()
    if not only or "ANN-to-SNN" in only:
        bench.run_ann()
    if not only or only & {"events", "BPTT", "e-prop", "OSTL"}:
        bench.run_events(only - {"events"})
    memory = {name: {"bytes": {str(T): int(v) for T, v in curve.items()},
                     **fit_memory(list(curve), list(curve.values()))}
              for name, curve in bench.memory.items()}
    report = {"date": datetime.date.today().isoformat(),
              "command": " ".join(["python benchmarks/snn_methods.py", *(sys.argv[1:] if argv is None else argv)]),
              "args": {k: v for k, v in vars(args).items()}, "rows": bench.rows, "memory": memory,
              "mem_steps": args.mem_steps, "extra": bench.extra, "total_seconds": time.perf_counter() - t0}
    print(format_tables(bench.rows, memory, args.mem_steps))
    print(f"\ntotal {report['total_seconds']:.1f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    if args.verbose:
        print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
