"""benchmarks/snn_methods.py: its memory meter is exact on a graph counted by hand, and in quick mode every method
runs, lands in the table and the JSON, and the measured training memory has the claimed property (BPTT's grows
with T, the online rules' does not)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    name = "_snn_methods_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "snn_methods.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def test_memory_meter_matches_a_hand_count():
    bench = _bench()
    w = torch.nn.Parameter(torch.randn(5, 3))
    x = torch.randn(4, 3)
    with bench.MemoryMeter() as m:
        y = (x @ w.T).exp()  # matmul saves x (4x3; w is a parameter, not counted); exp saves its output (4x5)
        z = (y * y).sum()  # mul saves y twice: the same view, counted once
        assert m.live_bytes == (12 + 20) * 4
        z.backward()
        assert m.live_bytes == 0  # released by backward although `y` is still referenced here
        bench.note_state((torch.zeros(7, dtype=torch.float64), [torch.zeros(3)]))
    assert m.peak == max((12 + 20) * 4, 7 * 8 + 3 * 4)
    assert bench.MemoryMeter.active is None


def test_quick_run_has_every_method_and_the_memory_property(tmp_path):
    bench = _bench()
    out = tmp_path / "snn_methods.json"
    report = bench.main(["--quick", "--quiet", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(report["rows"]))

    by_task = {}
    for r in report["rows"]:
        by_task.setdefault(r["task"].split()[0], set()).add(r["method"].split(" (")[0])
        assert 0.0 <= r["accuracy"] <= 1.0 and r["seconds"] >= 0, r
        assert math.isfinite(r["spikes_per_sample"]) and r["spikes_per_sample"] >= 0, r
    assert by_task["digits"] >= {"BPTT", "TBPTT", "e-prop", "DECOLLE", "OSTL", "OSTTP", "STDP + readout",
                                 "EventProp", "ANN-to-SNN MLP", "ANN-to-SNN CNN"}
    assert by_task["events"] >= {"BPTT", "e-prop", "OSTL"}
    conversion = {r["task"] for r in report["rows"] if r["method"].startswith("ANN-to-SNN MLP")}
    assert conversion == {f"digits analog T={T}" for T in (4, 8, 16, 32, 64)}

    mem = {name: {int(T): v for T, v in m["bytes"].items()} for name, m in report["memory"].items()}
    assert sorted(mem["BPTT"]) == [10, 20, 40, 80]
    assert mem["BPTT"][40] >= 3 * mem["BPTT"][10] > 0  # BPTT holds every step for the backward pass
    for name in ("e-prop", "OSTL", "TBPTT (window 5)"):  # online rules / truncation: bounded in T
        vals = list(mem[name].values())
        assert 0 < max(vals) <= 1.2 * min(vals), (name, vals)
    assert report["memory"]["BPTT"]["exponent"] > 0.8 > 0.2 > abs(report["memory"]["OSTL"]["exponent"])
