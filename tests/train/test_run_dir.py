"""No run loses work: the output directory's record, lock, fresh/overwrite rules, branches on resume,
settings that cannot change, a full disk, and a finished run resumed (unit tests, then real runs)."""

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from train_helpers import TINY_RECIPE, tiny_overrides, tiny_run

from spikegpt.train.checkpoint import list_checkpoints, verify_checkpoint
from spikegpt.train.config import load_config
from spikegpt.train.metrics import read_metrics
from spikegpt.train.pretrain import main
from spikegpt.train.run_dir import RunDir, RunDirBusy, RunDirError, changed_settings
from spikegpt.train.trainer import train

HERE = Path(__file__).resolve().parent


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (what must survive untouched)."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _strict_json(line: str):
    """json.loads that refuses NaN / Infinity (which are not JSON)."""
    return json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"not JSON: {c}")))


# ----- the record, unit by unit -----


def test_the_record_tells_a_runs_files_from_anyone_elses(tmp_path):
    rd = RunDir(tmp_path)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "model.safetensors").write_bytes(b"m")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    (tmp_path / "tokenizer" / "README").write_text("my notes on this tokenizer")
    rd.add("checkpoint-2/", "metrics.jsonl", "tokenizer/tokenizer.json")
    assert rd.owns("checkpoint-2/model.safetensors") and rd.owns("metrics.jsonl")
    assert not rd.owns("notes.txt") and not rd.owns("tokenizer/README")
    assert rd.foreign_files() == ["notes.txt", "tokenizer/README"]
    assert RunDir(tmp_path).entries == rd.entries  # kept in run.json
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(RunDirError, match="run.json is not a readable run record"):
        RunDir(tmp_path)


def test_start_fresh_refuses_then_overwrites_only_what_runs_wrote(tmp_path):
    rd = RunDir(tmp_path)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    (tmp_path / "tokenizer" / "README").write_text("notes")
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "x").write_text("x")
    rd.add("tokenizer/tokenizer.json", "checkpoint-4/")
    with pytest.raises(RunDirError, match="not empty.*checkpoint-4/.*1 file.*tokenizer/README.*--overwrite_output_dir"):
        rd.start_fresh(overwrite=False)
    assert set(_tree(tmp_path)) >= {"tokenizer/README", "tokenizer/tokenizer.json", "checkpoint-4/x"}
    rd.start_fresh(overwrite=True)
    assert _tree(tmp_path) == {"tokenizer/README": b"notes", "run.json": (tmp_path / "run.json").read_bytes()}
    assert rd.entries == set()


def test_claim_moves_a_file_in_the_way_aside_and_publish_writes_whole_files(tmp_path):
    rd = RunDir(tmp_path)
    (tmp_path / "config.json").write_text("a model saved here by hand")
    rd.publish(lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (tmp_path / "config.json").read_text() == "{}" and rd.owns("config.json")
    (aside,) = tmp_path.glob("moved-aside-*")
    assert (aside / "config.json").read_text() == "a model saved here by hand"
    rd.publish(lambda tmp: (tmp / "config.json").write_text('{"b": 1}'))  # its own file: replaced in place
    assert (tmp_path / "config.json").read_text() == '{"b": 1}' and len(list(tmp_path.glob("moved-aside-*"))) == 1

    def fails(tmp):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError, match="writer crashed"):
        rd.publish(fails)
    assert not (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob(".tmp-*"))


@contextlib.contextmanager
def _another_process_holding(path: Path):
    """A separate process that takes ``path``'s run lock and keeps it until the block ends (then is killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from spikegpt.train.run_dir import RunDir; r = RunDir(sys.argv[1]); "
         "r.lock(); print('locked', flush=True); time.sleep(120)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_admits_one_holder_and_names_it(tmp_path):
    with _another_process_holding(tmp_path) as holder:
        rd = RunDir(tmp_path)
        with pytest.raises(RunDirBusy, match=f"in use by another run \\(pid {holder.pid} on .*, started "):
            rd.lock()
    rd.lock()  # the holder is gone: free again
    (tmp_path / ".tmp-checkpoint-8-424242").mkdir()  # left half-written by a run that died
    assert rd.remove_stale_temporaries() == [".tmp-checkpoint-8-424242"]
    rd.unlock()


def test_changed_settings_names_each_key_that_fixes_model_tokenizer_or_data():
    saved = {"seed": 0, "lr": 1e-3, "data": "a.jsonl", "model": {"hidden_size": 32, "tau": 2.0}, "max_steps": 10}
    now = {"seed": 1, "lr": 5e-4, "data": "a.jsonl", "model": {"hidden_size": 64, "tau": 2.0}, "max_steps": 20}
    assert changed_settings(saved, now) == ["model.hidden_size (checkpoint: 32, now: 64)",
                                            "seed (checkpoint: 0, now: 1)"]
    assert changed_settings(saved, {**saved, "lr": 1.0, "max_steps": 99}) == []  # those may change


# ----- through real runs -----


def _hand_saved_model(path: Path) -> None:
    """A model directory saved by a user (no run wrote it), with notes beside its tokenizer."""
    import spikegpt

    model = spikegpt.SpikeGPTForCausalLM(spikegpt.SpikeGPTConfig(vocab_size=257, hidden_size=32, num_hidden_layers=1))
    model.save_pretrained(path)
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "tokenizer.json").write_text("{}")
    (path / "tokenizer" / "notes.txt").write_text("why this tokenizer")
    (path / "metrics.jsonl").write_text('{"mine": true}\n')


def test_a_run_refuses_a_directory_it_did_not_write_and_overwriting_loses_nothing(tmp_path, corpus_file):
    out = tmp_path / "model"
    _hand_saved_model(out)
    before = _tree(out)
    with pytest.raises(RunDirError, match="is not empty: it holds .*file\\(s\\) no run wrote.*config.json"):
        main(tiny_run(corpus_file, out, max_steps=2))
    assert {k: v for k, v in _tree(out).items() if k not in ("run.json", ".run.lock")} == before  # untouched
    main(tiny_run(corpus_file, out, max_steps=2, overwrite_output_dir=True))
    after = _tree(out)
    assert after["tokenizer/notes.txt"] == b"why this tokenizer" and after["tokenizer/tokenizer.json"] == b"{}"
    (aside,) = out.glob("moved-aside-*")  # what the run replaced, kept byte for byte
    for name in ("config.json", "model.safetensors", "metrics.jsonl"):
        assert (aside / name).read_bytes() == before[name]
    assert read_metrics(out / "metrics.jsonl")[0]["kind"] == "run"  # the run's own log, not appended to the user's


def test_overwrite_output_dir_replaces_an_earlier_runs_files_and_keeps_the_rest(tmp_path, corpus_file):
    out = tmp_path / "run"
    main(tiny_run(corpus_file, out, max_steps=2, save_interval=1))
    (out / "notes.txt").write_text("observations")
    with pytest.raises(RunDirError, match="an earlier run's .*checkpoint-1/"):
        main(tiny_run(corpus_file, out, max_steps=3))
    main(tiny_run(corpus_file, out, max_steps=3, overwrite_output_dir=True))
    assert [s for s, _ in list_checkpoints(out)] == [3]  # the earlier run's checkpoints went
    assert (out / "notes.txt").read_text() == "observations" and not list(out.glob("moved-aside-*"))
    assert [r["kind"] for r in read_metrics(out / "metrics.jsonl")].count("run") == 1


def test_a_second_run_on_a_busy_directory_exits_at_once_naming_the_holder(tmp_path, corpus_file):
    out = tmp_path / "run"
    out.mkdir()
    with _another_process_holding(out) as holder:
        (out / f".tmp-checkpoint-3-{holder.pid}").mkdir()  # the holder's checkpoint being written
        t0 = time.perf_counter()
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
            main(tiny_run(corpus_file, out, max_steps=2))
        assert time.perf_counter() - t0 < 10  # at once, no waiting for the lock
        assert (out / f".tmp-checkpoint-3-{holder.pid}").is_dir()  # its temporary untouched
        assert not (out / "metrics.jsonl").exists()
    final = main(tiny_run(corpus_file, out, max_steps=2))  # the holder died: its temporary is cleared
    assert final["step"] == 2 and not list(out.glob(".tmp-*"))


def _stop_at(step_to_stop: int):
    def callback(step, logs):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)

    return callback


def test_resuming_an_older_checkpoint_starts_a_branch_that_the_next_resume_continues(tmp_path, corpus_file):
    out = tmp_path / "run"
    common = dict(max_steps=6, save_interval=2, keep_checkpoints=3)
    main(tiny_run(corpus_file, out, **common))
    abandoned = {name: _tree(out / name) for name in ("checkpoint-4", "checkpoint-6")}
    final_model = (out / "model.safetensors").read_bytes()
    # resume the 2-step checkpoint with another learning rate (an optimizer setting may change), stop at 3
    branch = load_config(TINY_RECIPE, tiny_overrides(corpus_file, out, resume=str(out / "checkpoint-2"), lr=1e-3,
                                                     **common))
    assert train(branch, callbacks=[_stop_at(3)])["step"] == 3
    assert [s for s, _ in list_checkpoints(out)] == [2, 3]
    (moved,) = out.glob("superseded-*")
    assert {name: _tree(moved / name) for name in abandoned} == abandoned  # nothing lost
    assert (moved / "model.safetensors").read_bytes() == final_model and not (out / "model.safetensors").exists()
    assert [r["step"] for r in read_metrics(moved / "metrics.jsonl", "final")] == [6]
    final = main(tiny_run(corpus_file, out, resume="latest", lr=1e-3, **common))
    assert final["step"] == 6
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl", "train")]
    assert steps == [1, 2, 3, 4, 5, 6]  # one record per step: the branch's from step 3 on
    lrs = {r["step"]: r["lr"] for r in read_metrics(out / "metrics.jsonl", "train")}
    assert lrs[4] < 1e-3 < lrs[1]  # steps 3-6 ran with the branch's peak rate 1e-3, step 1 with 3e-3
    assert yaml.safe_load((out / "train_config.yaml").read_text())["lr"] == 1e-3
    for name in ("checkpoint-4", "checkpoint-6"):
        verify_checkpoint(out / name)  # the branch's own


def test_resume_refuses_changed_settings_naming_each_and_leaves_the_run_as_it_was(tmp_path, corpus_file):
    out = tmp_path / "run"
    main(tiny_run(corpus_file, out, max_steps=2))
    before = _tree(out)
    with pytest.raises(ValueError, match=r"cannot resume .*checkpoint-2 with changed settings: "
                                         r"model.hidden_size \(checkpoint: 32, now: 48\); seed \(checkpoint: 0, "
                                         r"now: 7\)"):
        main(tiny_run(corpus_file, out, max_steps=4, resume="latest", seed=7, **{"model.hidden_size": 48}))
    assert {k: v for k, v in _tree(out).items() if not k.startswith(".run.lock")} == \
        {k: v for k, v in before.items() if not k.startswith(".run.lock")}  # train_config.yaml claims nothing new


def test_resuming_a_finished_run_prints_valid_json_and_logs_nothing_twice(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    first = main(tiny_run(corpus_file, out, max_steps=4, eval_interval=2, sample_interval=2))
    kinds = [r["kind"] for r in read_metrics(out / "metrics.jsonl")]
    capsys.readouterr()
    again = main(tiny_run(corpus_file, out, max_steps=4, eval_interval=2, sample_interval=2, resume="latest"))
    line = _strict_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(line["train_loss"]) and line["train_loss"] == first["train_loss"]
    assert again["val_loss"] == first["val_loss"] and again["step"] == 4
    assert [r["kind"] for r in read_metrics(out / "metrics.jsonl")] == [*kinds[:-1], "run", "final"]


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1m none /tmp"],
                           capture_output=True)
    return probe.returncode == 0


def test_a_full_disk_is_named_loses_no_checkpoint_and_the_run_resumes_once_space_is_freed(tmp_path, corpus_file):
    """On a real 8 MiB filesystem (a tmpfs in a user namespace) where the machine allows one, else with
    torch.save failing as a full disk makes it fail."""
    root, reference = tmp_path / "small-disk", tmp_path / "reference"
    root.mkdir()
    worker = [sys.executable, str(HERE / "disk_full_worker.py"), str(root), str(corpus_file), str(reference)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    if _can_mount_tmpfs():
        cmd = ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o size=8m none "$1" && shift && exec "$@"', "sh",
               str(root), *worker, "tmpfs"]
    else:
        cmd = [*worker, "inject"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["stopped_at"] == 2
    error = seen["error"]
    assert error is not None and "out of disk space writing checkpoint" in error
    assert str(root / "run" / "checkpoint-4") in error and "bytes free" in error and "--resume" in error
    assert seen["temporaries"] == [] and seen["checkpoints_after_failure"] == [2]
    assert seen["final_step"] == 4 and seen["weights_equal_uninterrupted"]
