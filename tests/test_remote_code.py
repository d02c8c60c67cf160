"""Every directory the project writes loads with ``trust_remote_code=True`` in a process that never imports
spikegpt (``model.save_pretrained``, a training run and its checkpoints, ``spikegpt convert``), and the bundle
never shadows an installed spikegpt."""

import importlib.util
import json
import subprocess
import sys
import sysconfig

import pytest
import torch
from interop_helpers import random_original_checkpoint, tiny_model
from transformers import AutoModelForCausalLM
from transformers.dynamic_module_utils import get_imports, get_relative_imports

from spikegpt import SpikeGPTForCausalLM, SpikeGPTForSequenceClassification, SpikeGPTModel
from spikegpt.remote_code import AUTO_MAP, REMOTE_CODE_FILE

IDS = [[5, 17, 200, 3, 99, 42, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]]
MASK = [[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1]]


@pytest.fixture(scope="module")
def written(tmp_path_factory, trained_run):
    """Directories written by each of the project's writers, with the classes to load them as."""
    from spikegpt.tools.cli import main as cli

    root = tmp_path_factory.mktemp("written")
    lm = tiny_model(dtype=torch.float64)
    lm.save_pretrained(root / "save_pretrained")
    SpikeGPTForSequenceClassification.from_pretrained(root / "save_pretrained", num_labels=3).save_pretrained(
        root / "classifier")
    lm.model.save_pretrained(root / "base")
    torch.save(random_original_checkpoint(V=257, C=16, L=2, seed=3), root / "orig.pth")
    assert cli(["convert", str(root / "orig.pth"), str(root / "convert")]) == 0
    return {
        "save_pretrained": (root / "save_pretrained", "AutoModelForCausalLM"),
        "classifier": (root / "classifier", "AutoModelForSequenceClassification"),
        "base": (root / "base", "AutoModel"),
        "convert": (root / "convert", "AutoModelForCausalLM"),
        "training output": (trained_run, "AutoModelForCausalLM"),
        "training checkpoint": (trained_run / "checkpoint-20", "AutoModelForCausalLM"),
    }


def test_every_written_directory_carries_the_code_and_auto_map(written):
    for name, (d, _) in written.items():
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["auto_map"] == AUTO_MAP, name
        code = d / REMOTE_CODE_FILE
        assert set(get_imports(code)) <= {"importlib", "linecache", "sys", "torch", "transformers"}, name
        assert get_relative_imports(code) == [], name  # transformers would look for those files next to it


ISOLATED = r"""
import importlib.util, json, sys
sys.path.append(SITE)
assert importlib.util.find_spec("spikegpt") is None, "spikegpt must not be importable in this process"
import torch
import transformers

ids, mask = torch.tensor(IDS), torch.tensor(MASK)
out = {}
for name, (path, auto) in DIRS.items():
    model = getattr(transformers, auto).from_pretrained(path, trust_remote_code=True, dtype=torch.float64).eval()
    with torch.no_grad():
        res = model(ids, attention_mask=mask)
    value = res.logits if hasattr(res, "logits") else res.last_hidden_state
    out[name] = {"class": type(model).__name__, "value": value.tolist()}
    if name == "save_pretrained":
        out[name]["gen"] = model.generate(ids[1:], attention_mask=mask[1:], max_new_tokens=4, do_sample=False).tolist()
        model.save_pretrained(ROOT + "/resaved")  # saved again from the bundle, without the package
        again = transformers.AutoModelForCausalLM.from_pretrained(ROOT + "/resaved", trust_remote_code=True,
                                                                  dtype=torch.float64)
        with torch.no_grad():
            out[name]["resaved"] = again(ids, attention_mask=mask).logits.tolist()
        kernels = sys.modules[type(model).__module__]._load("spikegpt.kernels")  # the bundled ops
        if importlib.util.find_spec("triton") is not None:
            g = torch.Generator().manual_seed(0)
            k, v, w, u = (torch.randn(*s, generator=g) for s in ((1, 6, 16), (1, 6, 16), (16,), (16,)))
            y_triton, _ = kernels.wkv(w, u, k, v, backend="triton")  # the interpreter needs the kernels' source
            y_torch, _ = kernels.wkv(w, u, k, v, backend="torch")
            out["wkv_triton_err"] = float((y_triton - y_torch).abs().max())
out["spikegpt_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "spikegpt")
print("RESULT " + json.dumps(out))
"""


def run_isolated(script, tmp_path):
    """Run ``script`` where spikegpt cannot be imported: -I (no PYTHONPATH, user site or current directory)
    and -S (no .pth files, so not the editable install's finder); site-packages is added for torch and
    transformers only."""
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "TRITON_INTERPRET": "1",
           "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def test_trust_remote_code_loads_every_written_directory_without_the_package(written, tmp_path):
    dirs = {name: (str(d), auto) for name, (d, auto) in written.items()}
    site = sysconfig.get_paths()["purelib"]
    script = f"SITE, ROOT, IDS, MASK, DIRS = {site!r}, {str(tmp_path)!r}, {IDS!r}, {MASK!r}, {dirs!r}\n" + ISOLATED
    res = run_isolated(script, tmp_path)
    assert res["spikegpt_modules"] == []
    ids, mask = torch.tensor(IDS), torch.tensor(MASK)
    classes = {"AutoModelForCausalLM": SpikeGPTForCausalLM, "AutoModel": SpikeGPTModel,
               "AutoModelForSequenceClassification": SpikeGPTForSequenceClassification}
    for name, (d, auto) in written.items():
        ours = classes[auto].from_pretrained(d, dtype=torch.float64).eval()
        assert res[name]["class"] == classes[auto].__name__
        with torch.no_grad():
            r = ours(ids, attention_mask=mask)
            want = r.logits if hasattr(r, "logits") else r.last_hidden_state
        torch.testing.assert_close(torch.tensor(res[name]["value"], dtype=torch.float64), want, rtol=1e-12,
                                   atol=1e-12, msg=name)
        if name == "save_pretrained":
            torch.testing.assert_close(torch.tensor(res[name]["resaved"], dtype=torch.float64), want, rtol=1e-12,
                                       atol=1e-12)
            gen = ours.generate(ids[1:], attention_mask=mask[1:], max_new_tokens=4, do_sample=False)
            assert res[name]["gen"] == gen.tolist()
    if importlib.util.find_spec("triton") is not None:  # Triton is Linux-only
        assert res["wkv_triton_err"] < 1e-5


def test_resaving_from_the_bundle_writes_the_same_code(written, tmp_path):
    """The bundle re-saved by a remote-code model is byte-identical to the one the package wrote."""
    d, _ = written["save_pretrained"]
    site = sysconfig.get_paths()["purelib"]
    script = (f"SITE, SRC, DST = {site!r}, {str(d)!r}, {str(tmp_path / 'again')!r}\n" + r"""
import sys, json
sys.path.append(SITE)
import torch, transformers
m = transformers.AutoModelForCausalLM.from_pretrained(SRC, trust_remote_code=True)
m.save_pretrained(DST)
print("RESULT " + json.dumps({}))
""")
    run_isolated(script, tmp_path)
    assert (tmp_path / "again" / REMOTE_CODE_FILE).read_bytes() == (d / REMOTE_CODE_FILE).read_bytes()


def test_remote_code_coexists_with_the_installed_package(written):
    """Imported next to the package, the bundle keeps its own modules and custom-op names."""
    pytest.importorskip("triton")  # the custom ops live in the Triton modules; Triton is Linux-only
    from spikegpt.kernels.lif import triton_recurrent as ours  # registers the package's custom ops

    d, _ = written["save_pretrained"]
    spec = importlib.util.spec_from_file_location("bundle_under_test", d / REMOTE_CODE_FILE)
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
        model = bundle.SpikeGPTForCausalLM.from_pretrained(d, dtype=torch.float64)
        lm = SpikeGPTForCausalLM.from_pretrained(d, dtype=torch.float64)
        with torch.no_grad():
            assert torch.equal(model(torch.tensor(IDS)).logits, lm(torch.tensor(IDS)).logits)
    finally:
        del sys.modules["bundle_under_test"]


def test_installed_package_needs_no_remote_code(written):
    d, _ = written["save_pretrained"]
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64)  # no trust_remote_code: the package's class
    assert type(model) is SpikeGPTForCausalLM
