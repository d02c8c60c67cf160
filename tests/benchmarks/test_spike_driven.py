"""benchmarks/spike_driven.py at a toy shape (--quick) on a tiny saved spike-driven model and a text file: it runs end
to end and its JSON line holds every speed row and the quality figures."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.train.tokenization import char_tokenizer

ROOT = Path(__file__).resolve().parents[2]
TEXT = "the quick brown fox jumps over the lazy dog. " * 4  # 180 characters: under --quick's 256 tokens


def test_spike_driven_benchmark_smoke(tmp_path):
    tok = char_tokenizer([TEXT], 40)
    torch.manual_seed(0)
    cfg = SpikeGPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, context_length=32,
                         spike_inputs="int3", eos_token_id=tok.eos_token_id)
    SpikeGPTForCausalLM(cfg).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "held_out.txt").write_text(TEXT)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "spike_driven.py"), "--quick", "--model", str(tmp_path / "m"),
           "--text", str(tmp_path / "held_out.txt")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    rows = {"fp32 SpikeGPT", "fp32 spike-driven", "spike-int8"}
    speed = report["speed"]
    for what in ("generation_tokens_per_s", "prefill_tokens_per_s"):
        assert set(speed[what]) == rows and all(v > 0 for v in speed[what].values())
    assert set(speed["ratios"]["prefill"]) == {"fp32 spike-driven vs fp32 SpikeGPT", "spike-int8 vs fp32 SpikeGPT",
                                               "spike-int8 vs fp32 spike-driven"}
    q = report["quality"]
    assert q["spike_inputs"] == "int3" and q["tokens"] == len(TEXT) - 1
    for name in ("spike-int8", "fp64"):
        assert 0 <= q[name]["argmax_agreement"] <= 1 and q[name]["ppl"] > 1
    assert q["fp64"]["argmax_agreement"] > 0.9  # the same model in more precision predicts (nearly) the same
