"""Hub: push_to_hub round trip through a local stand-in, and the model card."""

import hashlib
import inspect
import shutil

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from interop_helpers import save_byte_tokenizer, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from spikegpt import SpikeGPTForCausalLM
from spikegpt.interop import hub
from spikegpt.remote_code import REMOTE_CODE_FILE

IDS = [[5, 17, 250, 3, 99, 42, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]]
class LocalHub:
    """Stands in for HfApi: upload_folder writes a snapshot in the layout of the Hugging Face cache, so that
    from_pretrained("user/name", cache_dir=...) resolves the Hub id offline."""

    def __init__(self, cache):
        self.cache = cache
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        files = sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())
        commit = hashlib.sha1(repr((repo_id, files, len(self.calls))).encode()).hexdigest()
        repo = self.cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder_path, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return commit


def test_push_to_hub_round_trip_by_hub_id(tmp_path, monkeypatch):
    model = tiny_model()
    tok_dir = tmp_path / "tok"
    save_byte_tokenizer(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    local = LocalHub(tmp_path / "cache")
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: local)  # the default api= path
    metrics = {"val_loss": 1.2345, "val_bpc": 1.78}
    rates = {"layer0.att": 0.11, "layer0.ffn": 0.09, "layer1.att": 0.13, "layer1.ffn": 0.07}
    commit = hub.push_to_hub(model, "someone/tiny-spikegpt", tokenizer=tok, data="CPython docs, 2 MB",
                             datasets=["someone/docs"], metrics=metrics, firing_rates=rates, private=True)
    assert [c[0] for c in local.calls] == ["create_repo", "upload_folder"]
    inspect.signature(HfApi.create_repo).bind(None, local.calls[0][1], **local.calls[0][2])
    inspect.signature(HfApi.upload_folder).bind(None, repo_id="x", folder_path="y", **local.calls[1][2])
    assert local.calls[0][2]["private"] is True

    again = SpikeGPTForCausalLM.from_pretrained("someone/tiny-spikegpt", cache_dir=tmp_path / "cache")
    auto = AutoModelForCausalLM.from_pretrained("someone/tiny-spikegpt", cache_dir=tmp_path / "cache")
    tok2 = AutoTokenizer.from_pretrained("someone/tiny-spikegpt", cache_dir=tmp_path / "cache")
    assert tok2("hello").input_ids == tok("hello").input_ids
    ids = torch.tensor(IDS)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(auto(ids).logits, model(ids).logits, rtol=0, atol=0)

    snap = tmp_path / "cache" / "models--someone--tiny-spikegpt" / "snapshots" / commit
    assert (snap / REMOTE_CODE_FILE).is_file() and (snap / "model.safetensors").is_file()
    card = ModelCard((snap / "README.md").read_text())
    assert {"spikegpt", "spiking-neural-network"} <= set(card.data.tags)
    assert card.data.library_name == "transformers" and card.data.datasets == ["someone/docs"]
    text = card.text
    assert f"{model.num_parameters():,}" in text and "2 x 32" in text
    assert "1.234" in text and "CPython docs, 2 MB" in text
    assert "| layer1.att | 0.1300 |" in text and "| mean | 0.1000 |" in text
    assert "trust_remote_code=True" in text and '"surrogate": "atan"' in text


def test_push_to_hub_refuses_bad_repo_ids(tmp_path):
    with pytest.raises(ValueError, match="repo_id"):
        hub.push_to_hub(tiny_model(), "not a repo id", api=LocalHub(tmp_path))
