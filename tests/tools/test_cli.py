"""The spikegpt command: every subcommand end to end on tiny models, --help everywhere, one-line errors."""

import fractions
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, run
from interop_helpers import random_original_checkpoint, tiny_model
from reference_model import reference_logits
from transformers import AutoTokenizer

from spikegpt import SpikeGPTForCausalLM
from spikegpt.tools.cli import main

REPO = Path(__file__).resolve().parents[2]
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?"
TEXT = "the spike neuron fires when its membrane crosses the threshold, and then it resets. " * 4


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from spikegpt.train.tokenization import char_tokenizer

    d = tmp_path_factory.mktemp("tok")
    char_tokenizer([ALPHABET], 64).save_pretrained(d)  # ids: 0 end of text, 1 <unk>, 2.. characters
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok_dir):
    d = tmp_path_factory.mktemp("model")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tiny_model(vocab_size=len(tok), context_length=32, eos_token_id=tok.eos_token_id).save_pretrained(d)
    tok.save_pretrained(d)
    return d


# ----------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("cmd", [[], ["generate"], ["convert"], ["energy"], ["spikes"], ["train"], ["eval"],
                                 ["prepare"]])
def test_help_everywhere(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spikegpt") and (" ".join(["spikegpt", *cmd]) in out)
    if not cmd:
        for sub in ("generate", "eval", "train", "prepare", "convert", "energy", "spikes"):
            assert sub in out


def test_console_script_is_declared_and_module_runs():
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '[project.scripts]\nspikegpt = "spikegpt.tools.cli:main"\n' in pyproject
    proc = subprocess.run([sys.executable, "-m", "spikegpt.tools.cli", "convert", "missing.pth", "out"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == "spikegpt: error: checkpoint not found: missing.pth"


def test_no_command_and_bad_options(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "usage: spikegpt" in out
    with pytest.raises(SystemExit) as e:
        main(["generate", "m", "--max-new-tokens", "0"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------- convert


def test_convert_original_checkpoint_with_tokenizer(capsys, tmp_path, tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    sd = random_original_checkpoint(V=len(tok), C=16, L=2)
    torch.save(sd, tmp_path / "SpikeGPT.pth")
    out = tmp_path / "converted"
    code, stdout, err = run(capsys, "convert", tmp_path / "SpikeGPT.pth", out, "--tokenizer", tok_dir)
    assert code == 0, err
    names = set(p.name for p in out.iterdir())
    assert {"model.safetensors", "config.json", "spikegpt_remote.py", "README.md", "tokenizer.json"} <= names
    model = SpikeGPTForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float64 and model.config.eos_token_id == tok.eos_token_id
    ids = tok("the cat sat.", add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits, reference_logits(sd, ids), rtol=1e-9, atol=1e-9)
    assert AutoTokenizer.from_pretrained(out)("abc").input_ids == tok("abc").input_ids
    assert "Converted from an original SpikeGPT checkpoint (SpikeGPT.pth)" in (out / "README.md").read_text()

    code, _, err = run(capsys, "convert", tmp_path / "SpikeGPT.pth", out)
    assert_one_line_error(code, err, "not empty", "--overwrite")
    code, _, err = run(capsys, "convert", tmp_path / "SpikeGPT.pth", out, "--overwrite", "--dtype", "float32",
                       "--set", "spiking=false")
    assert code == 0, err
    again = SpikeGPTForCausalLM.from_pretrained(out)
    assert again.dtype == torch.float32 and not again.config.spiking
    assert "AutoModelForCausalLM" in json.loads((out / "config.json").read_text())["auto_map"]


def test_convert_refuses_damaged_checkpoints_in_one_line(capsys, tmp_path):
    sd = random_original_checkpoint(V=11, C=8, L=1)
    del sd["blocks.0.ffn.value.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    code, _, err = run(capsys, "convert", tmp_path / "bad.pth", tmp_path / "o")
    assert_one_line_error(code, err, "missing keys: blocks.0.ffn.value.weight")
    code, _, err = run(capsys, "convert", tmp_path / "x.pth", tmp_path / "o", "--set", "novalue")
    assert_one_line_error(code, err, "--set takes KEY=VALUE")


def test_convert_refuses_a_file_that_is_not_only_tensors_with_the_whole_reason(capsys, tmp_path):
    """A pickled object is not unpickled (that would run code from the file); the message says so in full."""
    sd = random_original_checkpoint(V=11, C=8, L=1)
    torch.save({**sd, "extra": fractions.Fraction(1, 3)}, tmp_path / "objects.pth")
    code, _, err = run(capsys, "convert", tmp_path / "objects.pth", tmp_path / "o")
    assert_one_line_error(code, err, "objects.pth", "cannot read", "safely as a state dict of tensors",
                          "fractions.Fraction", "would run code from the file")
    assert "weights_only" not in err and "trust" not in err  # torch's advice to load it anyway is not passed on
    assert not (tmp_path / "o").exists()


def test_convert_from_rwkv(capsys, tmp_path):
    """An RWKV-4 checkpoint (BlinkDL's layout is the original layout) through spikegpt.interop.rwkv.from_rwkv."""
    sd = random_original_checkpoint(V=23, C=16, L=2, seed=4)
    torch.save(sd, tmp_path / "RWKV-4.pth")
    code, _, err = run(capsys, "convert", "--from", "rwkv", tmp_path / "RWKV-4.pth", tmp_path / "o",
                       "--set", "spiking=false")
    assert code == 0, err
    model = SpikeGPTForCausalLM.from_pretrained(tmp_path / "o")
    assert not model.config.spiking
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits, reference_logits(sd, ids, spiking=False), rtol=1e-9, atol=1e-9)
    assert "RWKV-4 checkpoint" in (tmp_path / "o" / "README.md").read_text()


# ------------------------------------------------------------------------------------------------- generate


def greedy_continuation(model_dir, prompt, n):
    """Greedy decoding written out: full forward each step, argmax of the last position."""
    model = SpikeGPTForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(prompt, add_special_tokens=False).input_ids
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == tok.eos_token_id:
                break
    return tok.decode(new, skip_special_tokens=True)


def test_generate_streams_greedy_text(capsys, model_dir, monkeypatch):
    want = greedy_continuation(model_dir, "the cat", 12)
    code, out, err = run(capsys, "generate", model_dir, "the cat", "--greedy", "--max-new-tokens", "12",
                         "--device", "cpu")
    assert code == 0, err
    assert out == want + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("the cat"))  # prompt from stdin, printed at the end
    code, out2, err = run(capsys, "generate", model_dir, "--greedy", "--max-new-tokens", "12", "--no-stream")
    assert code == 0, err
    assert out2 == out


def test_generate_samples_with_a_seed(capsys, model_dir):
    args = ("generate", model_dir, "the", "--max-new-tokens", "10", "--temperature", "1.0", "--top-k", "20",
            "--top-p", "0.9", "--seed", "3", "--dtype", "float32")
    code, a, _ = run(capsys, *args)
    code2, b, _ = run(capsys, *args)
    assert code == code2 == 0 and a == b and len(a) > 1


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--temperature", "-1", "must be > 0"),
        ("--temperature", "nan", "finite"),
        ("--top-p", "2", "(0, 1]"),
        ("--top-p", "0", "(0, 1]"),
        ("--top-k", "-1", "must be >= 0"),
        ("--top-k", "2.5", "expected an integer"),
        ("--repetition-penalty", "0", "must be > 0"),
        ("--repetition-penalty", "-1.5", "must be > 0"),
    ],
)
def test_generate_refuses_bad_sampling_settings_naming_the_option(capsys, model_dir, option, value, needle):
    with pytest.raises(SystemExit) as e:
        main(["generate", str(model_dir), "hi", option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {option}: " in err and needle in err, err


def test_generate_temperature_zero_is_greedy(capsys, model_dir):
    want = greedy_continuation(model_dir, "the cat", 8)
    code, out, err = run(capsys, "generate", model_dir, "the cat", "--temperature", "0", "--max-new-tokens", "8",
                         "--no-stream")
    assert code == 0, err
    assert out == want + "\n"


def test_generate_errors_are_one_line(capsys, tmp_path, model_dir, monkeypatch):
    code, _, err = run(capsys, "generate", tmp_path / "nowhere", "hi")
    assert_one_line_error(code, err, "model directory not found")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(capsys, "generate", model_dir)
    assert_one_line_error(code, err, "prompt is empty")
    code, _, err = run(capsys, "generate", model_dir, "hi", "--device", "cuda:7")
    if not torch.cuda.is_available():
        assert_one_line_error(code, err, "CUDA is not available")


# ----------------------------------------------------------------------------------------- energy and spikes


def test_energy_prints_a_table_and_writes_json(capsys, tmp_path, model_dir):
    from spikegpt.tools.energy import energy_report

    (tmp_path / "text.txt").write_text(TEXT)
    code, out, err = run(capsys, "energy", model_dir, "--text", tmp_path / "text.txt", "--max-tokens", "60",
                         "--json", tmp_path / "e.json", "--no-progress", "--context", "16")
    assert code == 0, err
    assert "SPIKEGPT" in out and "TRANSFORMER" in out and "transformer / SpikeGPT" in out
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["tokens"] == 60 and rep["context"] == 16
    model = SpikeGPTForCausalLM.from_pretrained(model_dir)
    ids = AutoTokenizer.from_pretrained(model_dir)(TEXT, add_special_tokens=False).input_ids[:60]
    want = energy_report(model, [ids], context=16)
    assert rep["spikegpt"]["ops"] == want["spikegpt"]["ops"] and rep["firing_rates"] == want["firing_rates"]
    code, _, err = run(capsys, "energy", model_dir, "--text", tmp_path / "none.txt")
    assert_one_line_error(code, err, "text file not found")
    code, _, err = run(capsys, "energy", model_dir, "--text", tmp_path / "text.txt", "--ac-pj", "-1")
    assert_one_line_error(code, err, "energy per ac")


def test_spikes_writes_pngs(capsys, tmp_path, model_dir):
    out_dir = tmp_path / "plots"
    code, out, err = run(capsys, "spikes", model_dir, "--text", TEXT[:40], "--layers", "0,1", "--out", out_dir)
    assert code == 0, err
    for name in ("raster.png", "firing_rates.png"):
        data = (out_dir / name).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 2000
    rates = json.loads((out_dir / "firing_rates.json").read_text())
    assert len(rates["tokens"]) == 40 and set(rates["firing_rates"]) == {f"model.blocks.{l}.{b}_lif" for l in (0, 1)
                                                                          for b in ("att", "ffn")}
    code, _, err = run(capsys, "spikes", model_dir, "--text", "abc", "--layers", "5")
    assert_one_line_error(code, err, "out of range")
    code, _, err = run(capsys, "spikes", model_dir)
    assert_one_line_error(code, err, "--text")


# --------------------------------------------------------------------------------------------- train / eval


def test_eval_and_train_wrap_the_training_scripts(capsys, tmp_path, model_dir):
    (tmp_path / "text.txt").write_text(TEXT)
    code, out, err = run(capsys, "eval", "--model", model_dir, "--data", tmp_path / "text.txt", "--window", "16",
                         "--batch_size", "2", "--no_progress")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["tokens"] > 0 and res["ppl"] > 1
    docs = "".join(json.dumps({"text": TEXT[i:] + str(i)}) + "\n" for i in range(30))
    (tmp_path / "docs.jsonl").write_text(docs)
    code, out, err = run(
        capsys, "train", "--config", REPO / "configs" / "tiny.yaml", "--data", tmp_path / "docs.jsonl",
        "--output_dir", tmp_path / "run", "--tokenizer", "byte",
        "--max_steps", "2", "--batch_size", "2", "--model.hidden_size", "16", "--model.num_hidden_layers", "1",
        "--model.context_length", "16", "--val_fraction", "0.1", "--val_max_tokens", "64", "--eval_batch_size", "2",
        "--sample_max_new_tokens", "2", "--progress", "false", "--tensorboard", "false", "--log_interval", "1",
    )
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 2
    assert SpikeGPTForCausalLM.from_pretrained(_final_model(tmp_path / "run")).config.hidden_size == 16


def test_train_needs_a_recipe(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--max_steps", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "spikegpt train: error: --config is required" in err
    assert "--config configs/tiny.yaml for a first run on a CPU" in err


def test_train_refuses_an_unknown_model_key_in_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--config", REPO / "configs" / "tiny.yaml", "--output_dir", tmp_path / "r",
                       "--model.hiden_size", "4")
    assert_one_line_error(code, err, "'hiden_size'", "did you mean 'hidden_size'")
    code, _, err = run(capsys, "train", "--config", REPO / "configs" / "tiny.yaml", "--output_dir", tmp_path / "r",
                       "--hiden_size", "4")
    assert_one_line_error(code, err, "--hiden_size", "did you mean --hidden_size")
    assert not (tmp_path / "r").exists()


def test_energy_reads_the_builtin_corpus(capsys, tmp_path, model_dir):
    code, out, err = run(capsys, "energy", model_dir, "--text", "builtin:python-docs", "--max-tokens", "24",
                         "--json", tmp_path / "e.json", "--no-progress")
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["tokens"] == 24
    code, _, err = run(capsys, "energy", model_dir, "--text", "builtin:nosuch")
    assert_one_line_error(code, err, "builtin:nosuch")


def _final_model(run_dir):
    from spikegpt.train.checkpoint import resolve_model_path

    return resolve_model_path(str(run_dir))
