"""Run by test_run_dir.py: a training run whose disk fills, then resumes once space is freed.

    python disk_full_worker.py ROOT DATA REFERENCE_DIR (tmpfs|inject)

ROOT is a small filesystem of its own (``tmpfs``: the test mounted one there) or an ordinary directory
(``inject``: where no filesystem can be mounted, torch.save fails the way it does on a full disk, with
ENOSPC). Steps: a 4-step run stopped (SIGINT) after step 2, which saves checkpoint-2; fill the disk; resume (fails
writing checkpoint-4); free the disk; resume again; compare with an uninterrupted 4-step run. Prints one
JSON line of what it saw.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch
from train_helpers import TINY_RECIPE, tiny_overrides, tiny_run

from spikegpt.train.checkpoint import OutOfSpaceError, list_checkpoints, verify_checkpoint
from spikegpt.train.config import load_config
from spikegpt.train.pretrain import main
from spikegpt.train.trainer import train

SETTINGS = dict(save_interval=2, keep_checkpoints=3, tensorboard=False)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fill(root: Path, leave: int) -> Path:
    """Fill ``root``'s filesystem, then free ``leave`` bytes of the filler again."""
    filler = root / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        f.truncate(max(0, f.tell() - leave))
    return filler


def run(root: Path, data: Path, reference: Path, mode: str) -> dict:
    out = root / "run"
    seen: dict = {}

    def stop_after_2(step, logs):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    stopped = train(load_config(TINY_RECIPE, tiny_overrides(data, out, max_steps=4, **SETTINGS)), [stop_after_2])
    seen["stopped_at"] = stopped["step"]
    filler = None
    real_save = torch.save
    if mode == "tmpfs":
        filler = _fill(root, leave=48 * 1024)
        seen["free_before"] = shutil.disk_usage(root).free
    else:
        def full_disk(obj, f, *args, **kwargs):
            Path(f).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", str(f))

        torch.save = full_disk
    try:
        main(tiny_run(data, out, max_steps=4, resume="latest", **SETTINGS))
        seen["error"] = None
    except OutOfSpaceError as e:
        seen["error"] = str(e)
    finally:
        torch.save = real_save
    seen["temporaries"] = sorted(p.name for p in out.glob(".tmp-*"))
    seen["checkpoints_after_failure"] = [s for s, _ in list_checkpoints(out)]
    verify_checkpoint(out / "checkpoint-2")
    if filler is not None:
        filler.unlink()
    final = main(tiny_run(data, out, max_steps=4, resume="latest", **SETTINGS))
    seen["final_step"] = final["step"]
    main(tiny_run(data, reference, max_steps=4, **SETTINGS))
    seen["weights_equal_uninterrupted"] = _digest(out / "model.safetensors") == _digest(reference / "model.safetensors")
    return seen


if __name__ == "__main__":
    root, data, reference, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    print(json.dumps(run(root, data, reference, mode)), flush=True)
