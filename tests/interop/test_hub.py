"""Hub: remote code that loads without the package, push_to_hub round trip through a local stand-in, model card."""

import hashlib
import importlib.util
import inspect
import json
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from interop_helpers import save_byte_tokenizer, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.dynamic_module_utils import get_imports, get_relative_imports

from spikegpt import SpikeGPTForCausalLM, SpikeGPTForSequenceClassification
from spikegpt.interop import hub
from spikegpt.remote_code import REMOTE_CODE_FILE

IDS = [[5, 17, 250, 3, 99, 42, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]]
MASK = [[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1]]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    lm = tiny_model(dtype=torch.float64)
    hub.save_with_card(lm, root / "lm")
    clf = SpikeGPTForSequenceClassification.from_pretrained(root / "lm", num_labels=3, dtype=torch.float64)
    hub.save_with_card(clf, root / "clf", card=False)
    return root, lm, clf


def test_remote_code_needs_only_torch_and_transformers(saved):
    root, _, _ = saved
    code = root / "lm" / REMOTE_CODE_FILE
    assert set(get_imports(code)) <= {"importlib", "linecache", "sys", "torch", "transformers"}
    assert get_relative_imports(code) == []  # transformers would look for those files next to it
    cfg = json.loads((root / "lm" / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "spikegpt_remote.SpikeGPTForCausalLM"
    assert cfg["model_type"] == "spikegpt"


ISOLATED = r"""
import importlib.util, json, sys
sys.path.append(SITE)
assert importlib.util.find_spec("spikegpt") is None, "spikegpt must not be importable in this process"
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

ids, mask = torch.tensor(IDS), torch.tensor(MASK)
lm = AutoModelForCausalLM.from_pretrained(ROOT + "/lm", trust_remote_code=True, dtype=torch.float64)
out = {"lm_class": type(lm).__name__, "lm": lm(ids).logits.tolist()}
out["gen"] = lm.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=4, do_sample=False).tolist()
lm.save_pretrained(ROOT + "/resaved")
again = AutoModelForCausalLM.from_pretrained(ROOT + "/resaved", trust_remote_code=True, dtype=torch.float64)
out["resaved"] = again(ids).logits.tolist()
clf = AutoModelForSequenceClassification.from_pretrained(ROOT + "/clf", trust_remote_code=True, dtype=torch.float64)
out["clf"] = clf(ids, attention_mask=mask).logits.tolist()
kernels = sys.modules[type(lm).__module__]._load("spikegpt.kernels")  # the bundled ops
if importlib.util.find_spec("triton") is not None:
    g = torch.Generator().manual_seed(0)
    k, v, w, u = (torch.randn(*s, generator=g) for s in ((1, 6, 16), (1, 6, 16), (16,), (16,)))
    y_triton, _ = kernels.wkv(w, u, k, v, backend="triton")  # Triton interpreter: needs the kernels' source text
    y_torch, _ = kernels.wkv(w, u, k, v, backend="torch")
    out["wkv_triton_err"] = float((y_triton - y_torch).abs().max())
out["spikegpt_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "spikegpt")
print("RESULT " + json.dumps(out))
"""


def test_trust_remote_code_works_without_the_package(saved, tmp_path):
    root, lm, clf = saved
    site = sysconfig.get_paths()["purelib"]
    script = (f"SITE, ROOT, IDS, MASK = {site!r}, {str(root)!r}, {IDS!r}, {MASK!r}\n") + ISOLATED
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "TRITON_INTERPRET": "1",
           "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    # -I: no PYTHONPATH, no user site, no current directory; -S: no site-packages .pth files, so the editable
    # install's finder is not there either. site-packages is then added for torch and transformers only.
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert res["lm_class"] == "SpikeGPTForCausalLM" and res["spikegpt_modules"] == []
    ids, mask = torch.tensor(IDS), torch.tensor(MASK)
    with torch.no_grad():
        want = lm(ids).logits
        torch.testing.assert_close(torch.tensor(res["lm"], dtype=torch.float64), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.tensor(res["resaved"], dtype=torch.float64), want, rtol=1e-12, atol=1e-12)
        gen = lm.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=4, do_sample=False)
        assert res["gen"] == gen.tolist()
        clf_logits = clf(ids, attention_mask=mask).logits
        torch.testing.assert_close(torch.tensor(res["clf"], dtype=torch.float64), clf_logits, rtol=1e-12, atol=1e-12)
    if importlib.util.find_spec("triton") is not None:  # Triton is Linux-only
        assert res["wkv_triton_err"] < 1e-5


def test_remote_code_coexists_with_the_installed_package(saved):
    """Imported next to the package, the bundle keeps its own modules and custom-op names."""
    pytest.importorskip("triton")  # the custom ops live in the Triton modules
    from spikegpt.kernels.lif import triton_recurrent as ours  # registers the package's custom ops

    root, lm, _ = saved
    spec = importlib.util.spec_from_file_location("bundle_under_test", root / "lm" / REMOTE_CODE_FILE)
    bundle = importlib.util.module_from_spec(spec)
    sys.modules["bundle_under_test"] = bundle
    try:
        spec.loader.exec_module(bundle)
        assert bundle.SpikeGPTForCausalLM is not SpikeGPTForCausalLM
        assert bundle.SpikeGPTForCausalLM.__module__ == "bundle_under_test"
        theirs = bundle._load("spikegpt.kernels.lif.triton_recurrent")
        assert theirs is not ours and theirs.__name__.startswith(bundle._NAMESPACE + ".")
        assert ours._lif_fwd_op._qualname == "spikegpt::lif_fwd"
        assert theirs._lif_fwd_op._qualname == f"{bundle._NAMESPACE}::lif_fwd"
        model = bundle.SpikeGPTForCausalLM.from_pretrained(root / "lm", dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(model(torch.tensor(IDS)).logits, lm(torch.tensor(IDS)).logits, rtol=0, atol=0)
    finally:
        del sys.modules["bundle_under_test"]


def test_installed_package_needs_no_remote_code(saved):
    root, lm, _ = saved
    model = AutoModelForCausalLM.from_pretrained(root / "lm", dtype=torch.float64)  # no trust_remote_code
    assert type(model) is SpikeGPTForCausalLM
    ids = torch.tensor(IDS)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, lm(ids).logits, rtol=0, atol=0)


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
