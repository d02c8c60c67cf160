"""spikegpt.train.parallel: the accelerator of each parallelism, and FSDP2 on 2 CPU ranks (gloo, torchrun).

The 2-rank runs are tests/train/fsdp_worker.py (phases ``train`` then ``resume``, one torchrun each, shared
by the tests below through a module fixture); here they are compared with one process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import fsdp_worker as W
import pytest
import torch

import spikegpt
from spikegpt.train.evaluation import stream_nats
from spikegpt.train.parallel import (
    OPTIMIZER_DIR,
    OPTIMIZER_FILE,
    build_accelerator,
    check_launcher,
    forward_calls,
    gather_model_state,
    generate,
    is_fsdp,
    load_optimizer,
    save_optimizer,
    shared_directory,
    validation_nats,
)

WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"
LAUNCH_ENV = ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_DEEPSPEED", "WORLD_SIZE")


@pytest.fixture
def clean_launch_env(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)


def _ids(rows=2, seed=0):
    return torch.randint(0, 64, (rows, 32), generator=torch.Generator().manual_seed(seed))


# ----- one process -----


def test_unknown_parallelism_is_refused(clean_launch_env):
    with pytest.raises(ValueError, match=r"parallelism must be one of ddp, fsdp, got 'zero3'"):
        build_accelerator("zero3", "no")


def test_ddp_under_an_accelerate_fsdp_config_is_refused(clean_launch_env, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=r"parallelism is 'ddp'.*FSDP config.*--parallelism fsdp"):
        check_launcher("ddp")
    check_launcher("fsdp")  # agrees
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="fsdp_version 1"):
        check_launcher("fsdp")


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_one_process_gives_a_plain_model(clean_launch_env, parallelism):
    acc = build_accelerator(parallelism, "no")
    assert acc.num_processes == 1 and not is_fsdp(acc)
    model = W.tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    prepared, _ = acc.prepare(model, optimizer)
    assert type(prepared) is spikegpt.SpikeGPTForCausalLM  # no DDP / FSDP wrapper, no class swap
    state = gather_model_state(acc, prepared)
    assert state.keys() == model.state_dict().keys()


def test_unsharded_optimizer_round_trip(clean_launch_env, tmp_path):
    acc = build_accelerator("ddp", "no")
    model = W.tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = acc.prepare(model, optimizer)
    ids = _ids()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    save_optimizer(acc, model, optimizer, tmp_path)
    assert (tmp_path / OPTIMIZER_FILE).is_file() and not (tmp_path / OPTIMIZER_DIR).exists()
    fresh = torch.optim.Adam(model.parameters(), lr=1e-2)
    load_optimizer(acc, model, fresh, tmp_path)
    a, b = optimizer.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i, s in a["state"].items():
        assert all(torch.equal(s[k], b["state"][i][k]) for k in s)
    sharded_only = tmp_path / "sharded"
    (sharded_only / OPTIMIZER_DIR).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"holds optimizer: it was saved sharded \(parallelism fsdp\)"):
        load_optimizer(acc, model, fresh, sharded_only)


@pytest.mark.parametrize("lengths, window, batch_size", [
    ((40, 20, 70), 16, 2), ((10,), 16, 2), ((2, 2, 2), 1, 2), ((33, 17, 16, 5), 16, 3), ((), 16, 2),
])
def test_forward_calls_counts_what_stream_nats_runs(lengths, window, batch_size):
    """validation_nats pads the ranks to the same number of forwards with this count: it must be exact."""
    model = W.tiny_model()
    streams = [[i % 64 for i in range(n)] for n in lengths]
    seen = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(1))
    try:
        if streams:
            stream_nats(model, streams, window, batch_size)
    finally:
        handle.remove()
    assert forward_calls(streams, window, batch_size) == len(seen)


def test_one_process_helpers_match_the_plain_calls(clean_launch_env, tmp_path):
    acc = build_accelerator("ddp", "no")
    model = W.tiny_model().eval()
    streams = W.val_streams(0)
    assert validation_nats(acc, model, streams, 16, 2) == stream_nats(model, streams, 16, 2)
    assert validation_nats(acc, model, None, 16, 2) == (0.0, 0)
    ids = torch.tensor([W.PROMPT])
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(acc, model, ids, **kwargs), model.generate(ids, **kwargs))
    assert shared_directory(acc, lambda: tmp_path / "x") == tmp_path / "x"


# ----- FSDP2 on 2 CPU ranks -----


def _torchrun(phase: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), phase, str(out)]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{phase} failed:\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    _torchrun("train", out)
    _torchrun("resume", out)
    return out, torch.load(out / "train.pt", weights_only=False), torch.load(out / "resume.pt", weights_only=False)


def _one_process(steps: int):
    """One process on the concatenation of both ranks' batches: states after each step, losses, grad norms."""
    model = W.tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=W.LR, eps=W.EPS)
    states, losses, norms = {}, [], []
    for step in range(steps):
        ids = torch.cat([W.batch(step, 0), W.batch(step, 1)])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), W.CLIP)))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        states[step + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return states, losses, norms


def _assert_close(got, want, atol):
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def test_fsdp_shards_every_block_on_cpu_ranks(fsdp_runs):
    _, train, _ = fsdp_runs
    assert train["sharded_modules"] == ["", "head", "model.blocks.0", "model.blocks.1", "model.emb",
                                        "model.ln_out"]
    assert train["all_dtensor"]
    for name, (full, local) in train["shapes"].items():
        assert local[0] == (full[0] + 1) // 2 and local[1:] == full[1:], name  # dim 0 split over 2 ranks


def test_fsdp_training_matches_one_process_on_the_global_batch(fsdp_runs):
    """Same global batch, mean loss: FSDP's averaged reduce-scatter gives the one-process gradient up to fp32
    rounding (the sums run in another order), so the parameters agree to fp32 tolerance after 3, 5 and 6
    steps; a rank stepping on its own gradient alone would be off by ~6e-2. Adam's eps is 1e-5 in this run:
    with eps far below some gradients' rounding (1e-8), g / (sqrt(v) + eps) magnifies the rounding of
    near-zero gradients in the first steps to ~1e-5 (measured), testing Adam's conditioning, not FSDP."""
    _, train, _ = fsdp_runs
    states, losses, norms = _one_process(W.STEPS + 1)
    _assert_close(train["state_at_save"], states[W.SAVE_AT], atol=1e-6)
    _assert_close(train["state_final"], states[W.STEPS], atol=1e-6)
    _assert_close(train["state_after_eval"], states[W.STEPS + 1], atol=1e-6)
    assert train["losses"] == pytest.approx(losses, rel=1e-6)
    assert train["norms"] == pytest.approx(norms, rel=1e-6)  # clipped on the global (sharded) norm


def test_fsdp_checkpoint_is_sharded_optimizer_and_loadable_model(fsdp_runs):
    out, train, resume = fsdp_runs
    ckpt = out / "ckpt"
    assert train["shards"] == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per rank
    assert not (ckpt / OPTIMIZER_FILE).exists()
    assert train["none_off_main"] and train["shared_dir"] == str(ckpt)
    assert json.loads((ckpt / "config.json").read_text())["architectures"] == ["SpikeGPTForCausalLM"]
    loaded = spikegpt.SpikeGPTForCausalLM.from_pretrained(ckpt).state_dict()
    assert loaded.keys() == train["state_at_save"].keys()
    assert all(torch.equal(loaded[k], v) for k, v in train["state_at_save"].items())
    assert "holds neither optimizer.pt nor optimizer/" in resume["missing_error"]


def test_fsdp_resume_continues_exactly(fsdp_runs):
    """Fresh processes, fresh sharded model (from the saved files) and optimizer (from the shards): the same
    reduce order as the uninterrupted run, so the same bits."""
    _, train, resume = fsdp_runs
    assert resume["losses"] == train["losses"][W.SAVE_AT:W.STEPS]
    assert resume["state_final"].keys() == train["state_final"].keys()
    for k, v in train["state_final"].items():
        assert torch.equal(resume["state_final"][k], v), k


def test_fsdp_validation_and_generation_keep_the_ranks_in_step(fsdp_runs):
    """Rank 0 needs 8 validation forwards, rank 1 one (or none); rank 0 generates 2 tokens, rank 1 five."""
    _, train, _ = fsdp_runs
    model = W.tiny_model()
    model.load_state_dict(train["state_final"])
    want = [stream_nats(model, W.val_streams(r), 16, 2) for r in range(2)]
    assert forward_calls(W.val_streams(0), 16, 2) == 8 and forward_calls(W.val_streams(1), 16, 2) == 1
    for (got_nats, got_n), (nats, n) in zip(train["val"], want):
        assert got_n == n and got_nats == pytest.approx(nats, rel=1e-6)
    assert train["val_rank1_none"][1] == (0.0, 0) and train["val_rank1_none"][0] == train["val"][0]
    ids = torch.tensor([W.PROMPT])
    full = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max(W.NEW_TOKENS),
                          do_sample=False, pad_token_id=0, eos_token_id=None)[0].tolist()
    for r, tokens in enumerate(train["generated"]):
        assert tokens == full[: len(W.PROMPT) + W.NEW_TOKENS[r]]
