"""Ecosystem: transformers' text-generation pipeline, and lm-evaluation-harness's HF adapter (when installed)."""

import pytest
import torch
from interop_helpers import save_byte_tokenizer, tiny_model
from transformers import AutoTokenizer, pipeline

import spikegpt  # noqa: F401  (registers the Auto classes)
from spikegpt import SpikeGPTForCausalLM


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


def test_lm_eval_hf_adapter_loads_a_saved_model(model_dir):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=1)
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
