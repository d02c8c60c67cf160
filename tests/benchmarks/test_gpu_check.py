"""benchmarks/gpu_check.sh and bench_kernels.py: the one-command GPU check must not waste a device session.

The script's plumbing runs here in its CPU smoke mode (toy sizes, Triton interpreter); the table's bookkeeping
(failed rows kept, comparisons with the PyTorch path, the goal verdicts) is checked on synthetic rows.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "bench_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_smoke_mode_runs_every_stage_and_checks_triton_rows(tmp_path):
    env = {**os.environ, "SMOKE": "1", "SWEEP": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((tmp_path / "kernels.json").read_text())["rows"]
    triton = [row for row in rows if row.get("impl", "").startswith("t") and row.get("impl") != "torch"]
    kinds = {(row["op"], row["pass"]) for row in triton}
    assert {("wkv", "fwd"), ("wkv", "fwd+bwd"), ("wkv", "step"), ("lif", "infer"), ("lif", "fwd+bwd"),
            ("gate+lif", "fwd+bwd")} <= kinds
    assert any(row["impl"] == "t16x4" for row in triton)  # the sweep ran
    assert all(row["err_vs_torch"] < 1e-5 for row in triton), triton  # fp32: the same numbers as the torch path
    assert not [row for row in rows if "error" in row]
    assert any(row["op"] == "model" and row["tokens_per_s"] > 0 for row in rows)
    assert (tmp_path / "tests.xml").exists()
    summary = (tmp_path / "summary.txt").read_text()
    assert "rows that failed: 0" in summary and "1 passed" in summary and summary.strip().endswith("exit status 0")


def test_table_keeps_a_failed_row_and_compares_with_torch(tmp_path, capsys):
    bench = _bench()
    path = tmp_path / "t.json"
    table = bench.Table(100.0, {"device": "test"}, str(path))
    want = torch.ones(4)
    table.add("wkv", "torch", "fwd", 1, 2, 3, 2e7, lambda: 2.0, lambda: (want,))
    table.add("wkv", "triton", "fwd", 1, 2, 3, 2e7, lambda: 0.5, lambda: (want * 1.01,))

    def broken():
        raise RuntimeError("out of resources")

    table.add("lif", "triton", "fwd", 1, 2, 3, 2e7, broken)
    rows = json.loads(path.read_text())["rows"]
    assert [r["impl"] for r in rows] == ["torch", "triton", "triton"]
    assert rows[1]["speedup_vs_torch"] == pytest.approx(4.0)
    assert rows[1]["err_vs_torch"] == pytest.approx(0.01, rel=1e-4)
    assert rows[1]["gb_s"] == pytest.approx(2e7 / 0.5e-3 / 1e9)  # bytes / seconds
    assert rows[1]["copy_share"] == pytest.approx(rows[1]["gb_s"] / 100.0)
    assert "out of resources" in rows[2]["error"] and "ms" not in rows[2]
    assert "FAILED" in capsys.readouterr().out


def test_goal_verdicts():
    bench = _bench()

    def row(op, impl, pas, **kw):
        return {"op": op, "impl": impl, "pass": pas, "B": 8, "T": 1024, "C": 768, "ms": 1.0, "copy_share": 0.5, **kw}

    rows = [
        row("wkv", "triton", "fwd+bwd", copy_share=0.65, ms=2.0, err_vs_torch=3e-3),
        row("wkv", "fla", "fwd+bwd", ms=3.0),
        row("wkv", "tchunk", "fwd+bwd", copy_share=0.55, ms=1.5),
        row("lif", "triton", "fwd+bwd"),
        row("wkv", "triton", "step", speedup_vs_torch=0.8),
        {"op": "model", "mfu": 0.4, "backend": "triton"},
        {"op": "lif", "impl": "triton", "pass": "fwd", "error": "boom"},
    ]
    lines = bench.goals(rows)
    text = "\n".join(lines)
    assert "WKV (per-channel) fwd+bwd, share of copy bandwidth: worst 65% (target 60%): met" in text
    assert "LIF fwd+bwd, share of copy bandwidth: worst 50% (target 70%): NOT met" in text
    assert "WKV (per-channel) fwd+bwd, speed relative to fla: worst 1.50x (target 1.00x): met" in text
    assert "WKV (chunk-parallel) fwd+bwd, share of copy bandwidth: worst 55% (target 60%): NOT met" in text
    assert "WKV (chunk-parallel) fwd+bwd, speed relative to fla: worst 2.00x (target 1.00x): met" in text
    assert "step, speed relative to the PyTorch step: worst 0.80x (target 1.00x): NOT met" in text
    assert "model training (triton), MFU: worst 40% (target 35%): met" in text
    assert "3.0e-03 (wkv triton fwd+bwd" in text
    assert lines[-1] == "rows that failed: 1"
