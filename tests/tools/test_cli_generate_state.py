"""`spikegpt generate` with saved states (--state-in / --state-out), --quantize, the progress bar and speed line."""

import re
import sys
import types

import pytest
import torch
from cli_helpers import assert_one_line_error, run
from interop_helpers import tiny_model
from transformers import AutoTokenizer

from spikegpt import SpikeGPTForCausalLM, SpikeGPTState
from spikegpt.tools import cli
from spikegpt.tools.cli import main

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?"
SPEED = re.compile(r"^generated \d+ tokens in \d+\.\d\d s \(\d+\.\d tok/s; prefill \d+\.\d tok/s\)$")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from spikegpt.train.tokenization import char_tokenizer

    d = tmp_path_factory.mktemp("model")
    tok = char_tokenizer([ALPHABET], 64)  # ids: 0 end of text, 1 <unk>, 2.. characters
    tiny_model(vocab_size=len(tok), context_length=32, eos_token_id=tok.eos_token_id).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def greedy_ids(model_dir, ids, n):
    """What generate() gives greedily on the token ids ``ids`` in one run: the new ids."""
    model = SpikeGPTForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    return out[0, len(ids):].tolist()


def test_a_saved_state_continues_as_one_run_of_the_whole_text(capsys, tmp_path, model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    a, b = "the cat sat on the mat", ". then the dog"
    ids_a, ids_b = (tok(t, add_special_tokens=False).input_ids for t in (a, b))
    s1, s2 = tmp_path / "s1.safetensors", tmp_path / "s2.safetensors"

    code, out, err = run(capsys, "generate", model_dir, a, "--greedy", "--max-new-tokens", 6, "--state-out", s1)
    assert code == 0, err
    gen_a = greedy_ids(model_dir, ids_a, 6)
    assert out == tok.decode(gen_a, skip_special_tokens=True) + "\n"
    info = SpikeGPTState.read_info(s1)
    assert info.tokens == len(ids_a) + len(gen_a) and info.extra == {"quantize": "none"}
    model = SpikeGPTForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():  # the saved state is the state after the prompt and every generated token
        whole = model(torch.tensor([ids_a + gen_a]), use_cache=True).state
    for x, y in zip(SpikeGPTState.load(s1, config=model.config).tensors(), whole.tensors()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)

    code, out, err = run(capsys, "generate", model_dir, b, "--greedy", "--max-new-tokens", 8, "--state-in", s1,
                         "--state-out", s2, "--no-stream")
    assert code == 0, err
    want = greedy_ids(model_dir, ids_a + gen_a + ids_b, 8)
    assert out == tok.decode(want, skip_special_tokens=True) + "\n"
    assert SpikeGPTState.read_info(s2).tokens == info.tokens + len(ids_b) + len(want)

    # a one-token prompt from a state, and a state chained twice
    code, out, err = run(capsys, "generate", model_dir, "!", "--greedy", "--max-new-tokens", 5, "--state-in", s2,
                         "--no-stream")
    assert code == 0, err
    again = greedy_ids(model_dir, ids_a + gen_a + ids_b + want + tok("!", add_special_tokens=False).input_ids, 5)
    assert out == tok.decode(again, skip_special_tokens=True) + "\n"


def test_state_in_takes_the_states_dtype_and_refuses_another(capsys, tmp_path, model_dir):
    s = tmp_path / "s.safetensors"
    code, _, err = run(capsys, "generate", model_dir, "the", "--max-new-tokens", 2, "--dtype", "bfloat16",
                       "--state-out", s, "--seed", 0)
    assert code == 0, err
    assert SpikeGPTState.read_info(s).dtype == torch.bfloat16
    code, _, err = run(capsys, "generate", model_dir, " cat", "--max-new-tokens", 2, "--state-in", s)
    assert code == 0, err  # --dtype auto: the state's
    code, _, err = run(capsys, "generate", model_dir, " cat", "--state-in", s, "--dtype", "float32")
    assert_one_line_error(code, err, "made by a bfloat16 model but this one runs in float32", "--dtype bfloat16")


def test_state_options_refuse_bad_files_in_one_line(capsys, tmp_path, model_dir):
    code, _, err = run(capsys, "generate", model_dir, "hi", "--state-in", tmp_path / "none.safetensors")
    assert_one_line_error(code, err, "--state-in: state file not found", "none.safetensors")
    (tmp_path / "junk").write_bytes(b"junk" * 20)
    code, _, err = run(capsys, "generate", model_dir, "hi", "--state-in", tmp_path / "junk")
    assert_one_line_error(code, err, "junk is not a readable SpikeGPT state file")
    other = tiny_model(vocab_size=90, hidden_size=16).config
    SpikeGPTState.empty(other, 1).save(tmp_path / "other.safetensors", config=other)
    code, _, err = run(capsys, "generate", model_dir, "hi", "--state-in", tmp_path / "other.safetensors")
    assert_one_line_error(code, err, "other.safetensors was made by a model with vocab_size 90, hidden_size 16,",
                          "this model has vocab_size 33, hidden_size 32,")
    SpikeGPTState.empty(tiny_model().config, 2).save(tmp_path / "two.safetensors")
    code, _, err = run(capsys, "generate", model_dir, "hi", "--state-in", tmp_path / "two.safetensors")
    assert_one_line_error(code, err, "holds 2 rows")

    (tmp_path / "taken").write_text("keep me")
    code, _, err = run(capsys, "generate", model_dir, "hi", "--state-out", tmp_path / "taken")
    assert_one_line_error(code, err, "--state-out", "exists (pass --overwrite")
    assert (tmp_path / "taken").read_text() == "keep me"
    code, _, err = run(capsys, "generate", model_dir, "hi", "--state-out", tmp_path / "taken", "--overwrite",
                       "--max-new-tokens", 1)
    assert code == 0, err
    assert SpikeGPTState.read_info(tmp_path / "taken").tokens == 3
    code, _, err = run(capsys, "generate", model_dir, "hi", "--state-out", tmp_path / "no" / "s.safetensors")
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run(capsys, "generate", model_dir, "hi", "--state-out", tmp_path)
    assert_one_line_error(code, err, "is a directory")


def test_quantize_calls_the_quantizer_with_the_scheme(capsys, caplog, tmp_path, model_dir, monkeypatch):
    """The option's wiring only (spikegpt.interop.quantization is replaced by a recording stand-in)."""
    calls = []

    def quantize(model, scheme):
        calls.append((type(model).__name__, scheme))
        return model

    monkeypatch.setitem(sys.modules, "spikegpt.interop.quantization", types.SimpleNamespace(quantize=quantize))
    code, out, err = run(capsys, "generate", model_dir, "the cat", "--greedy", "--max-new-tokens", 4, "--quantize",
                         "int8", "--state-out", tmp_path / "q.safetensors")
    assert code == 0, err
    assert calls == [("SpikeGPTForCausalLM", "int8")]
    assert SpikeGPTState.read_info(tmp_path / "q.safetensors").extra == {"quantize": "int8"}
    code, plain, _ = run(capsys, "generate", model_dir, "the cat", "--greedy", "--max-new-tokens", 4)
    assert out == plain
    code, _, err = run(capsys, "generate", model_dir, " and", "--max-new-tokens", 2, "--state-in",
                       tmp_path / "q.safetensors")
    assert code == 0, err
    assert "was made with --quantize int8, this run uses none" in caplog.text
    with pytest.raises(SystemExit) as e:
        main(["generate", str(model_dir), "hi", "--quantize", "int3"])
    assert e.value.code == 2 and "argument --quantize: invalid choice: 'int3'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "spikegpt.interop.quantization", None)  # not importable
    code, _, err = run(capsys, "generate", model_dir, "hi", "--quantize", "int4")
    assert_one_line_error(code, err, "--quantize int4 needs", "pip install 'spikegpt[deploy]'")


def test_stdout_holds_only_the_text_and_stderr_the_speed_line(capsys, model_dir, monkeypatch):
    code, out, err = run(capsys, "generate", model_dir, "the cat", "--greedy", "--max-new-tokens", 5)
    assert code == 0 and SPEED.match(err.strip().splitlines()[-1]), err
    assert "generating" not in err  # no bar when stderr is not a terminal
    code, quiet, err = run(capsys, "generate", model_dir, "the cat", "--greedy", "--max-new-tokens", 5, "--quiet")
    assert code == 0 and quiet == out and "generated" not in err
    monkeypatch.setattr(cli, "_show_progress", lambda a: True)
    code, shown, err = run(capsys, "generate", model_dir, "the cat", "--greedy", "--max-new-tokens", 5)
    assert code == 0 and shown == out and "generating" in err and SPEED.match(err.strip().splitlines()[-1])


class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("stderr_tty, stdout_tty, no_stream, quiet, shown", [
    (True, False, False, False, True),   # text piped away: the bar on the terminal
    (True, True, False, False, False),   # text streaming to the same terminal: no bar cutting into it
    (True, True, True, False, True),     # text printed at the end: the bar meanwhile
    (False, False, False, False, False),  # stderr not a terminal
    (True, False, False, True, False),   # --quiet
])
def test_the_bar_shows_only_where_it_cannot_garble_the_text(monkeypatch, stderr_tty, stdout_tty, no_stream, quiet,
                                                            shown):
    monkeypatch.setattr(sys, "stderr", _Stream(stderr_tty))
    monkeypatch.setattr(sys, "stdout", _Stream(stdout_tty))
    assert cli._show_progress(types.SimpleNamespace(quiet=quiet, no_stream=no_stream)) is shown


def test_quantize_fp32_is_the_same_model_for_saved_states(capsys, caplog, tmp_path, model_dir):
    """--quantize fp32 (the real quantizer: the weights stored transposed, nothing rounded) generates what the plain
    model does, and a state saved without it continues under it without the "made with" warning."""
    code, plain, err = run(capsys, "generate", model_dir, "the cat", "--greedy", "--max-new-tokens", 4,
                           "--state-out", tmp_path / "s.safetensors")
    assert code == 0, err
    code, laid, err = run(capsys, "generate", model_dir, "the cat", "--greedy", "--max-new-tokens", 4,
                          "--quantize", "fp32")
    assert code == 0, err
    assert laid == plain
    code, _, err = run(capsys, "generate", model_dir, " and", "--max-new-tokens", 2, "--quantize", "fp32",
                       "--state-in", tmp_path / "s.safetensors")
    assert code == 0, err
    assert "was made with" not in caplog.text


def test_compile_generates_what_the_eager_steps_do(capsys, model_dir, monkeypatch):
    """--compile hands generate() a compile_config (its decode steps then run torch.compile'd) and gives the eager
    text; the speed line is still printed."""
    seen = []
    original = SpikeGPTForCausalLM.get_compiled_call

    def recording(self, compile_config):
        seen.append(compile_config)
        return original(self, compile_config)

    monkeypatch.setattr(SpikeGPTForCausalLM, "get_compiled_call", recording)
    code, eager, _ = run(capsys, "generate", model_dir, "the cat", "--greedy", "--max-new-tokens", 5)
    assert code == 0 and seen == []
    code, compiled, err = run(capsys, "generate", model_dir, "the cat", "--greedy", "--max-new-tokens", 5, "--compile")
    assert code == 0, err
    assert len(seen) == 1 and seen[0].fullgraph
    assert compiled == eager
    assert SPEED.match(err.strip().splitlines()[-1]), err
