import json
import random

import numpy as np
import pytest
import torch

from spikegpt.train.checkpoint import (
    MANIFEST,
    TRAINER_STATE,
    CheckpointError,
    OutOfSpaceError,
    begin_checkpoint,
    checkpoint_path,
    checkpoint_step,
    finish_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    removed_on_failure,
    resolve_model_path,
    resolve_resume,
    rng_state,
    set_rng_state,
    truncate_metrics,
    verify_checkpoint,
)
from spikegpt.train.run_dir import RunDir


def write_checkpoint(path, write):
    """One process writing a whole checkpoint, as the trainer does on rank 0: begin, fill (the temporary
    removed on failure), finish."""
    tmp = begin_checkpoint(path)
    with removed_on_failure(tmp, "checkpoint", path):
        write(tmp)
    return finish_checkpoint(tmp, path)


def _writer(payload: bytes):
    def write(tmp):
        (tmp / "config.json").write_text(json.dumps({"a": 1}))
        (tmp / TRAINER_STATE).write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.bin").write_bytes(b"x" * 100)

    return write


def test_write_verify_and_list(tmp_path):
    for step in (5, 20, 10):
        write_checkpoint(checkpoint_path(tmp_path, step), _writer(bytes([step]) * 64))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 10, 20]
    assert latest_checkpoint(tmp_path).name == "checkpoint-20"
    manifest = verify_checkpoint(tmp_path / "checkpoint-10")
    assert set(manifest["files"]) == {"config.json", TRAINER_STATE, "sub/x.bin"}
    assert not list(tmp_path.glob(".tmp-*"))


def test_failed_write_leaves_the_old_checkpoint(tmp_path):
    path = checkpoint_path(tmp_path, 3)
    write_checkpoint(path, _writer(b"old"))

    def broken(tmp):
        (tmp / "config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(path, broken)
    assert (path / TRAINER_STATE).read_bytes() == b"old"
    verify_checkpoint(path)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: (p / TRAINER_STATE).write_bytes(b"y" * 64), "trainer_state.pt does not match its checksum"),
        (lambda p: (p / "sub" / "x.bin").write_bytes(b"x" * 99), "sub/x.bin has 99 bytes, expected 100"),
        (lambda p: (p / "config.json").unlink(), "config.json is missing"),
        (lambda p: (p / MANIFEST).unlink(), "no checkpoint.json manifest"),
        (lambda p: (p / MANIFEST).write_text("{trunc"), "unreadable checkpoint.json"),
    ],
)
def test_corruption_is_detected_and_named(tmp_path, damage, match):
    path = write_checkpoint(checkpoint_path(tmp_path, 7), _writer(b"z" * 64))
    damage(path)
    with pytest.raises(CheckpointError, match=match) as e:
        verify_checkpoint(path)
    assert str(path) in str(e.value)


def test_prune_keeps_the_newest_of_the_runs_own_checkpoints(tmp_path):
    run_dir = RunDir(tmp_path)
    for step in range(1, 6):
        write_checkpoint(checkpoint_path(tmp_path, step), _writer(b"p"))
    run_dir.add(*(f"checkpoint-{s}/" for s in (1, 2, 4, 5)))  # checkpoint-3 came from elsewhere
    (tmp_path / ".tmp-checkpoint-9-99999999").mkdir()  # another process's temporary
    deleted = run_dir.prune_checkpoints(keep=2)
    assert [p.name for p in deleted] == ["checkpoint-1", "checkpoint-2"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4, 5]
    assert (tmp_path / ".tmp-checkpoint-9-99999999").is_dir()  # only its maker removes it
    assert not run_dir.owns("checkpoint-1/") and run_dir.owns("checkpoint-4/")
    assert checkpoint_step(tmp_path / "checkpoint-12") == 12 and checkpoint_step(tmp_path / "best") is None


def _fill_after(limit: int):
    """A writer that puts ``limit`` bytes on disk and then fails as a full disk does (ENOSPC)."""
    import errno

    def write(tmp):
        (tmp / "config.json").write_text("{}")
        (tmp / TRAINER_STATE).write_bytes(b"s" * limit)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_out_of_space_removes_the_partial_checkpoint_and_names_path_and_bytes(tmp_path):
    write_checkpoint(checkpoint_path(tmp_path, 2), _writer(b"e" * 64))
    with pytest.raises(OutOfSpaceError) as e:
        write_checkpoint(checkpoint_path(tmp_path, 4), _fill_after(5000))
    message = str(e.value)
    assert str(tmp_path / "checkpoint-4") in message and "after 5002 bytes" in message  # config.json's 2 too
    assert "bytes free" in message and "checkpoint-2, takes" in message and "--resume" in message
    assert not list(tmp_path.glob(".tmp-*")) and not (tmp_path / "checkpoint-4").exists()
    verify_checkpoint(tmp_path / "checkpoint-2")  # the earlier checkpoint is intact


def test_a_writer_that_loses_the_errno_on_a_full_disk_is_still_reported_as_out_of_space(tmp_path, monkeypatch):
    """torch.save reports a full disk as "enforce fail at inline_container.cc" without an errno: then the
    free space decides."""
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")

    def broken(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: usage(1 << 30, (1 << 30) - 4096, 4096))
    with pytest.raises(OutOfSpaceError, match="4096 bytes free"):
        write_checkpoint(checkpoint_path(tmp_path, 1), broken)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: usage(1 << 30, 0, 1 << 30))
    with pytest.raises(RuntimeError, match="enforce fail"):  # with space to spare it is not a full disk
        write_checkpoint(checkpoint_path(tmp_path, 1), broken)
    assert not list(tmp_path.glob(".tmp-*"))


def _draws():
    return random.random(), float(np.random.rand()), np.random.normal(size=3).tolist(), torch.rand(4).tolist()


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    """After set_rng_state, Python, NumPy and torch draw what they drew right after rng_state was taken."""
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leave a cached Gaussian in NumPy's state
    state = rng_state()
    expected = _draws()
    torch.save(state, tmp_path / "rng.pt")  # as in trainer_state.pt
    _draws(), _draws()  # move every generator on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


def test_truncate_metrics_keeps_the_records_a_checkpoint_counted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"kind": "train", "step": s} for s in range(1, 6)] + [{"kind": "final", "step": 5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    truncate_metrics(path, 3)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]
    with pytest.raises(CheckpointError, match="has 3 records, fewer than the 4"):
        truncate_metrics(path, 4)
    truncate_metrics(tmp_path / "missing.jsonl", 3)  # no file: nothing to do
    assert not (tmp_path / "missing.jsonl").exists()


def test_resolve_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model in"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        resolve_model_path(str(tmp_path / "missing"))
    assert resolve_model_path("some-org/some-model") == "some-org/some-model"
    for step in (4, 12):  # a run directory with checkpoints only: the newest
        write_checkpoint(checkpoint_path(tmp_path, step), _writer(b"s"))
    assert resolve_model_path(str(tmp_path)) == str(tmp_path / "checkpoint-12")
    (tmp_path / "config.json").write_text("{}")  # with its final model: the run directory itself
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_resolve_resume(tmp_path):
    for value in (None, "", "false", "No", "none", "null"):
        assert resolve_resume(value, tmp_path) is None
    assert resolve_resume("latest", tmp_path) is None  # nothing to resume yet
    for step in (3, 9):
        write_checkpoint(checkpoint_path(tmp_path, step), _writer(b"r"))
    for value in ("latest", "true", "YES"):
        assert resolve_resume(value, tmp_path) == tmp_path / "checkpoint-9"
    assert resolve_resume(str(tmp_path / "checkpoint-3"), tmp_path) == tmp_path / "checkpoint-3"
    with pytest.raises(FileNotFoundError, match="checkpoint-7"):
        resolve_resume(str(tmp_path / "checkpoint-7"), tmp_path)
