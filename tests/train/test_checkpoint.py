import json

import pytest

from spikegpt.train.checkpoint import (
    MANIFEST,
    TRAINER_STATE,
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    verify_checkpoint,
    write_checkpoint,
)


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


def test_prune_keeps_the_newest(tmp_path):
    for step in range(1, 6):
        write_checkpoint(checkpoint_path(tmp_path, step), _writer(b"p"))
    (tmp_path / ".tmp-checkpoint-9-99999999").mkdir()  # a crashed writer's leftovers
    prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    assert not list(tmp_path.glob(".tmp-*"))
