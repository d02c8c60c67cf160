"""benchmarks/cpu_inference.py at a toy shape: it runs end to end (speed table against the rwkv package, with its
fp32 agreement check) and its JSON line holds every row."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("extra", [["--compiled", "fp32"], ["--spiking", "--compiled"]], ids=["rwkv4", "spiking"])
def test_cpu_inference_benchmark_smoke(extra):
    pytest.importorskip("torchao")
    spiking = "--spiking" in extra
    if not spiking:
        pytest.importorskip("rwkv.model")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu_inference.py"), "--layers", "2", "--width", "128",
           "--vocab", "96", "--prompt", "4", "--steps", "2", "--rounds", "1", "--threads", "1", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    rows = report["speed"]["tokens_per_s"]
    assert set(rows) == {"1", "8"}
    want = {f"spikegpt {s}" for s in ("fp32", "fp32-plain", "bf16", "int8", "int4", "int8-dynamic")}
    if not spiking:  # with the compiled fp32 row, whose step must give the eager step's logits
        want |= {"rwkv cpu fp32", "rwkv cpu bf16", "spikegpt fp32 compiled"}
        assert report["speed"]["agree"]["cpu fp32"] < 1e-4
        assert report["speed"]["compiled_agree"]["fp32"] < 1e-5
    assert set(rows["1"]) == want and all(v > 0 for v in rows["8"].values())


def test_step_perplexity_is_the_parallel_forwards():
    """The compiled-decoding quality rows read text one step at a time: that perplexity must be the parallel forward's
    (the recurrent mode equals it), here with the eager call."""
    import importlib.util
    import math

    import torch
    import torch.nn.functional as F

    spec = importlib.util.spec_from_file_location("cpu_inference_bench", ROOT / "benchmarks" / "cpu_inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from interop_helpers import tiny_model

    model = tiny_model(vocab_size=64, spiking=True)
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    want = math.exp(F.cross_entropy(logits, ids[0, 1:]).item())
    assert math.isclose(bench.step_perplexity(model, model, ids), want, rel_tol=1e-5)
