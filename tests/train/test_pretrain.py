"""End-to-end runs of spikegpt.train.pretrain in this process (small models, a few dozen steps at most)."""

import json
import logging
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import TINY_RECIPE, tiny_overrides, tiny_run
from transformers import AutoModelForCausalLM, AutoTokenizer

import spikegpt  # noqa: F401  (registers the Auto classes)
from spikegpt.train.checkpoint import CheckpointError, list_checkpoints
from spikegpt.train.config import load_config
from spikegpt.train.metrics import read_metrics
from spikegpt.train.pretrain import main
from spikegpt.train.trainer import CPU_PARAMETER_LIMIT, Trainer, train, warn_if_large_on_cpu

REPO = Path(__file__).resolve().parents[2]
FINAL_KEYS = {"step", "train_loss", "val_loss", "val_ppl", "val_bpc", "tokens", "tokens_per_s"}


def test_tiny_recipe_end_to_end_on_the_builtin_corpus(tmp_path, capsys):
    """The tiny recipe's path (built-in corpus, BPE trained here) for 30 steps: saves, reloads, generates."""
    out = tmp_path / "run"
    args = ["--config", str(REPO / "configs" / "tiny.yaml"), *tiny_overrides(
        "builtin:python-docs", out, tokenizer="bpe", tokenizer_vocab_size=512, tokenizer_train_chars=300_000,
        max_steps=30, batch_size=8, log_interval=5, eval_interval=15, sample_interval=15, save_interval=10,
        val_fraction=0.05, val_max_tokens=1500, lr=5e-3,
    )]
    final = main(args)
    printed = capsys.readouterr().out.strip().splitlines()
    assert FINAL_KEYS <= set(final) and final["step"] == 30 and not final["interrupted"]
    assert json.loads(printed[-1])["val_loss"] == final["val_loss"]  # the last line is the JSON summary
    assert final["train_loss"] < math.log(512)  # better than a uniform guess over the vocabulary
    assert final["val_ppl"] == pytest.approx(math.exp(final["val_loss"]))
    val = read_metrics(out / "metrics.jsonl", "val")[-1]
    assert final["val_bpc"] == pytest.approx(val["val_loss"] * val["val_tokens"] / math.log(2) / val["val_characters"])
    assert [s for s, _ in list_checkpoints(out)] == [20, 30]  # keep_checkpoints = 2
    assert len(read_metrics(out / "metrics.jsonl", "sample")) == 2

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "SpikeGPTForCausalLM" and model.config.spiking
    assert len(tok) == model.config.vocab_size <= 512 and model.config.eos_token_id == tok.eos_token_id
    assert model.config.context_length == 32
    ids = tok("The", return_tensors="pt").input_ids
    gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                         pad_token_id=tok.eos_token_id)
    assert gen.shape[1] > ids.shape[1] and isinstance(tok.decode(gen[0]), str)

    from spikegpt.train.evaluate import evaluate_model

    ev = evaluate_model(str(out), "builtin:python-docs", split="val", max_tokens=1500, batch_size=4,
                        window=32, progress=False)
    assert ev["tokens"] == val["val_tokens"] and ev["characters"] == val["val_characters"]
    assert ev["loss"] == pytest.approx(final["val_loss"], rel=1e-4)  # same documents, same model


def _losses(path):
    return {r["step"]: r["loss"] for r in read_metrics(path / "metrics.jsonl", "train")}


def test_interrupt_then_resume_reproduces_the_uninterrupted_run(tmp_path, corpus_file):
    extra = dict(max_steps=8, **{"model.dropout": 0.1})  # dropout: the RNG state must be restored too
    ref = main(tiny_run(corpus_file, tmp_path / "a", **extra))
    # the rate logged after step s (the next step's): lr 3e-3 at the end of the 2-step warmup, then a cosine
    # down to min_lr 1e-4 at step 8
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl", "train")}
    assert lrs[1] == pytest.approx(3e-3)
    for s in range(2, 9):
        assert lrs[s] == pytest.approx(1e-4 + (3e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (s - 2) / 6))), s

    def ctrl_c_at_3(step, logs):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = load_config(TINY_RECIPE, tiny_overrides(corpus_file, tmp_path / "b", **extra))
    stopped = train(cfg, callbacks=[ctrl_c_at_3])
    assert stopped["interrupted"] and stopped["step"] == 3
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [3]
    resumed = main(tiny_run(corpus_file, tmp_path / "b", resume="latest", **extra))
    assert resumed["step"] == 8
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")  # exactly, every step
    assert resumed["val_loss"] == ref["val_loss"]
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_clobber_and_names_a_corrupt_checkpoint(tmp_path, corpus_file):
    main(tiny_run(corpus_file, tmp_path / "c", max_steps=2))
    with pytest.raises(ValueError, match="is not empty: it holds an earlier run's .*checkpoint-2/"):
        main(tiny_run(corpus_file, tmp_path / "c", max_steps=2))
    ckpt = tmp_path / "c" / "checkpoint-2"
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} is corrupt: file model.safetensors"):
        main(tiny_run(corpus_file, tmp_path / "c", max_steps=4, resume="latest"))


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path, corpus_file):
    """2 micro-batches of 2 give the update of one batch of 4 (mean loss, same blocks, no dropout)."""
    a = main(tiny_run(corpus_file, tmp_path / "a", max_steps=3, batch_size=4))
    b = main(tiny_run(corpus_file, tmp_path / "b", max_steps=3, batch_size=2, grad_accum_steps=2))
    assert a["tokens"] == b["tokens"]
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_training(tmp_path, corpus_file):
    """Recomputing each block in the backward pass changes memory, not the result."""
    main(tiny_run(corpus_file, tmp_path / "a", max_steps=3))
    main(tiny_run(corpus_file, tmp_path / "b", max_steps=3, gradient_checkpointing=True))
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_a_command_line_without_config_is_refused_naming_the_recipes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--max_steps", "5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--config is required" in err and "--config configs/tiny.yaml" in err
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        assert f"configs/{recipe.name}" in err


def test_a_large_model_on_a_cpu_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="spikegpt.train.trainer"):
        assert warn_if_large_on_cpu(216_000_000, torch.device("cpu"))
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING and "216.0M parameters" in message
    assert "GPU" in message and "configs/tiny.yaml" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spikegpt.train.trainer"):
        assert not warn_if_large_on_cpu(CPU_PARAMETER_LIMIT, "cpu")  # at the limit: no warning
        assert not warn_if_large_on_cpu(216_000_000, torch.device("cuda", 0))  # on a GPU: none
    assert not caplog.records


def test_the_trainer_warns_at_start_about_its_model_on_a_cpu(tmp_path, corpus_file, caplog, monkeypatch):
    """The run's own parameter count goes through the check when the trainer is set up (before any step)."""
    import spikegpt.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "CPU_PARAMETER_LIMIT", 1000)  # the tiny model is "large" here
    cfg = load_config(TINY_RECIPE, tiny_overrides(corpus_file, tmp_path / "w"))
    with caplog.at_level(logging.WARNING, logger="spikegpt.train.trainer"):
        trainer = Trainer(cfg)
    try:
        n = trainer.accelerator.unwrap_model(trainer.model).num_parameters()
        warnings = [r.getMessage() for r in caplog.records if "on a CPU" in r.getMessage()]
        assert len(warnings) == 1 and f"a model of {n / 1e6:.1f}M parameters on a CPU" in warnings[0]
        assert trainer.step == 0
    finally:
        trainer.close()
        trainer.accelerator.end_training()


def test_bad_model_settings_fail_before_any_data_is_read(tmp_path, capsys):
    missing = tmp_path / "no-such-corpus.jsonl"  # reading data would fail with FileNotFoundError naming this
    with pytest.raises(ValueError, match="'hiden_size'.*did you mean 'hidden_size'"):
        main(tiny_run(missing, tmp_path / "x", **{"model.hiden_size": 64}))
    with pytest.raises(ValueError, match="min_lr must not exceed lr"):
        main(tiny_run(missing, tmp_path / "x", lr=1e-4, min_lr=1e-3))
    assert not (tmp_path / "x").exists()  # nothing written either


# ----- training from pre-tokenized data -----


def test_prepared_shards_train_resume_exactly_and_evaluate_the_stored_split(tmp_path, corpus_file):
    """spikegpt prepare, then train from the directory: interrupt + resume gives the uninterrupted run's
    losses and weights, and validation covers the prepared held-out documents with their characters."""
    from spikegpt.train.data import is_validation
    from spikegpt.train.prepare import prepare
    from spikegpt.train.token_data import TokenPacker, open_token_data

    data = tmp_path / "prepared"
    prepare(load_config(TINY_RECIPE, tiny_overrides(corpus_file, tmp_path / "unused")), data, progress=False)
    extra = dict(max_steps=6, **{"model.dropout": 0.1})
    ref = main(tiny_run(data, tmp_path / "a", **extra))

    def stop_at_3(step, logs):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    assert train(load_config(TINY_RECIPE, tiny_overrides(data, tmp_path / "b", **extra)), [stop_at_3])["step"] == 3
    state = torch.load(tmp_path / "b" / "checkpoint-3" / "trainer_state.pt", weights_only=True)
    assert state["data"][0]["block"] == 3 * 4  # the position is a few integers: 3 steps x 4 blocks
    resumed = main(tiny_run(data, tmp_path / "b", resume="latest", **extra))
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a") and resumed["val_loss"] == ref["val_loss"]
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # the batches are the packer's (documents of the prepared train split, eot-separated), in order
    docs = [json.loads(line)["text"] for line in corpus_file.read_text().splitlines()]
    split = open_token_data(data).split("train")
    first = TokenPacker(split, 256, 32, seed=0).next_batch(4)
    assert len(split) == sum(not is_validation(d, 0, 0.1) for d in docs)
    val = read_metrics(tmp_path / "a" / "metrics.jsonl", "val")[-1]
    held_out = [d for d in docs if is_validation(d, 0, 0.1)]
    used, chars, tokens = 0, 0, 0
    for d in held_out:  # whole documents in stored order up to val_max_tokens (600)
        used, chars, tokens = used + 1, chars + len(d), tokens + len(d.encode())
        if tokens >= 600:
            break
    chars += max(0, used - 4)  # a separator between two documents of one of the 4 evaluation streams
    assert val["val_documents"] == used and val["val_characters"] == chars and val["val_tokens"] == tokens
    assert first.shape == (4, 32) and int(first[0, 0]) == 256


def test_megatron_binidx_data_trains_with_the_tokenizer_it_was_made_with(tmp_path, corpus_file):
    """A GPT-NeoX style .bin/.idx (documents ending with their end-of-document token) trains directly."""
    from spikegpt.train.token_data import write_binidx

    docs = [json.loads(line)["text"] for line in corpus_file.read_text().splitlines()]
    prefix = tmp_path / "corpus_text_document"
    write_binidx(prefix, [list(d.encode()) + [256] for d in docs])  # byte ids, 256 = the byte tokenizer's eot
    with pytest.raises(ValueError, match="holds token ids without their tokenizer"):
        main(tiny_run(prefix, tmp_path / "x", tokenizer="bpe"))
    final = main(tiny_run(f"{prefix}.bin", tmp_path / "run", max_steps=3))
    assert final["step"] == 3 and final["val_loss"] is not None and math.isfinite(final["val_loss"])
    val = read_metrics(tmp_path / "run" / "metrics.jsonl", "val")[-1]
    assert val["val_characters"] >= val["val_tokens"] - val["val_documents"]  # decoded text, no "<|endoftext|>"
