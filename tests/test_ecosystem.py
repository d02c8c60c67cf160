"""Ecosystem: transformers' pipelines, and lm-evaluation-harness's HF adapter both ways (package imported, or
remote code only)."""

import json
import os
import subprocess
import sys
import sysconfig

import pytest
import torch
from interop_helpers import save_byte_tokenizer, tiny_model
from text_helpers import documents
from transformers import AutoTokenizer, pipeline

import spikegpt  # noqa: F401  (registers the Auto classes)
from spikegpt import SpikeGPTForCausalLM
from spikegpt.configuration_spikegpt import NO_CONTEXT_LIMIT


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(d)
    save_byte_tokenizer(d)
    return d


def greedy_ids(model, ids, n):
    """Greedy decoding written out: full forward each step, argmax of the last position."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


def test_text_generation_pipeline(model_dir):
    model = SpikeGPTForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = "Spikes"
    ids = tok(prompt, add_special_tokens=False).input_ids
    want = tok.decode(greedy_ids(model, ids, 8))
    for pipe in (pipeline("text-generation", model=str(model_dir)),            # by path
                 pipeline("text-generation", model=model, tokenizer=tok)):     # by object
        out = pipe(prompt, max_new_tokens=8, do_sample=False)
        assert out[0]["generated_text"] == want
    tok.pad_token, tok.padding_side = tok.eos_token, "left"  # batched: left padding; the mask holds the state
    prompts = ["Spikes", "A longer prompt"]
    batch = pipe(prompts, max_new_tokens=4, do_sample=False, batch_size=2)
    for p, out in zip(prompts, batch):
        assert out[0]["generated_text"] == tok.decode(greedy_ids(model, tok(p, add_special_tokens=False).input_ids, 4))


def test_text_classification_pipeline(model_dir, tmp_path):
    from spikegpt import SpikeGPTForSequenceClassification

    clf = SpikeGPTForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    with torch.no_grad():
        clf.score.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    clf.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.save_pretrained(tmp_path)
    out = pipeline("text-classification", model=str(tmp_path))("a spiking sentence", top_k=None)
    ids = tok("a spiking sentence", add_special_tokens=False).input_ids
    with torch.no_grad():
        probs = torch.softmax(clf(torch.tensor([ids])).logits[0], -1)
    got = {d["label"]: d["score"] for d in out}
    assert got == pytest.approx({"neg": float(probs[0]), "pos": float(probs[1])}, rel=1e-5)


def test_lm_eval_hf_adapter_loglikelihood(model_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=1, backend="causal")
    context, continuation = "The neuron", " fires"
    req = Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)
    (ll, _), = lm.loglikelihood([req])
    model = SpikeGPTForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ctx = tok(context, add_special_tokens=False).input_ids
    cont = tok(continuation, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), -1)
    want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert ll == pytest.approx(want, rel=1e-4, abs=1e-4)


@pytest.fixture(scope="module")
def eval_docs(tmp_path_factory):
    """Held-out documents, one of them longer than lm-eval's default window of 2048 tokens."""
    docs = documents(5, seed=99) + [" ".join(documents(60, seed=7))]
    path = tmp_path_factory.mktemp("eval") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return docs, path


def spikegpt_eval_nats(run, data, capsys):
    from spikegpt.tools.cli import main

    capsys.readouterr()
    assert main(["eval", "--model", str(run), "--data", str(data), "--batch_size", "16", "--no_progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return result["loss"] * result["tokens"], result["tokens"]


LM_EVAL_ROLLING = r"""
import json, sys
if SITE:
    sys.path.append(SITE)
    import importlib.util
    assert importlib.util.find_spec("spikegpt") is None, "spikegpt must not be importable in this process"
else:
    import spikegpt  # registers the Auto classes
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

lm = HFLM(pretrained=RUN, device="cpu", batch_size=4, backend="causal", trust_remote_code=bool(SITE))
reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(d,), idx=i) for i, d in enumerate(DOCS)]
print("RESULT " + json.dumps({"ll": lm.loglikelihood_rolling(reqs, disable_tqdm=True), "max_length": lm.max_length,
                              "class": type(lm.model).__module__}))
"""


@pytest.mark.parametrize("how", ["import spikegpt", "trust_remote_code, no spikegpt"])
def test_lm_eval_rolling_perplexity_equals_spikegpt_eval(trained_run, eval_docs, capsys, tmp_path, how):
    """lm-evaluation-harness on a trained tiny model, with the package imported and in a process where it cannot
    be imported (remote code): its rolling log-likelihood equals ``spikegpt eval`` on the same documents. The
    model reports no context limit, so lm-eval reads each document in one window (a recurrent state has no limit)
    instead of cutting it at its default 2048 tokens."""
    docs, path = eval_docs
    nats, tokens = spikegpt_eval_nats(trained_run, path, capsys)
    assert tokens > 2048  # one document is longer than lm-eval's default window
    site = sysconfig.get_paths()["purelib"] if how.startswith("trust") else ""
    script = f"SITE, RUN, DOCS = {site!r}, {str(trained_run)!r}, {docs!r}\n" + LM_EVAL_ROLLING
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HOME": str(tmp_path)}
    flags = ["-I", "-S"] if site else []
    proc = subprocess.run([sys.executable, *flags, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert res["max_length"] == NO_CONTEXT_LIMIT
    assert res["class"].startswith("spikegpt.") != bool(site)  # the package's class, or the bundled one
    assert -sum(res["ll"]) == pytest.approx(nats, rel=1e-6)
