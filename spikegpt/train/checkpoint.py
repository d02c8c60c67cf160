"""Checkpoints that never lose work: written under a temporary name, checksummed, renamed into place.

A checkpoint is a directory ``<output_dir>/checkpoint-<step>`` holding a ``save_pretrained`` model
(``config.json``, ``model.safetensors``), the tokenizer, ``trainer_state.pt`` (optimizer, scheduler, step,
RNG states and data position of every rank) and ``checkpoint.json``, a manifest with the size and SHA-256
of every other file, written last. A directory whose manifest is missing or disagrees with its files is
corrupt, and :func:`verify_checkpoint` raises :class:`CheckpointError` naming the directory and the file.

Out of disk space, the temporary directory is removed, earlier checkpoints stay as they were, and
:class:`OutOfSpaceError` says where, how much was written and how much is free; the run can resume from the
newest checkpoint once space is freed. Several processes can write one checkpoint (each rank its shard of a
sharded optimizer): :func:`begin_checkpoint`, then every writer, then :func:`finish_checkpoint`.

Also here: the RNG states saved in a checkpoint (:func:`rng_state`, :func:`set_rng_state`), ``metrics.jsonl``
cut back to a checkpoint's records on resume (:func:`truncate_metrics`), and which model or checkpoint a path
means (:func:`resolve_model_path`, :func:`resolve_resume`). What a run may write or delete in its
``output_dir`` is :mod:`spikegpt.train.run_dir`'s business.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_LOW_SPACE = 1 << 20  # bytes: a write that failed with less than this free failed for want of space


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete or corrupt (the message names it and the offending file)."""


class OutOfSpaceError(OSError):
    """The disk filled while writing (the message names the path, the bytes written and the bytes free)."""


def _tree_size(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _is_out_of_space(error: BaseException, directory: Path) -> bool:
    """Whether ``error`` came from a full disk: ENOSPC / EDQUOT anywhere in its chain, or (for writers that
    lose the errno, as torch.save's "enforce fail at inline_container.cc") almost nothing free on ``directory``."""
    e: BaseException | None = error
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    try:
        return shutil.disk_usage(directory).free < _LOW_SPACE
    except OSError:
        return False


@contextlib.contextmanager
def removed_on_failure(tmp: Path, what: str, target: Path) -> Iterator[None]:
    """Remove the temporary directory ``tmp`` when the block fails; a failure for want of disk space is
    re-raised as :class:`OutOfSpaceError` naming ``target`` (what was being written), the bytes written, the
    bytes free and the bytes the newest checkpoint beside it takes."""
    try:
        yield
    except BaseException as e:
        written = _tree_size(tmp)
        full = isinstance(e, Exception) and _is_out_of_space(e, tmp.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if not full:
            raise
        free = shutil.disk_usage(tmp.parent).free
        newest = latest_checkpoint(tmp.parent)
        need = f"; the newest checkpoint, {newest.name}, takes {_tree_size(newest)} bytes" if newest else ""
        raise OutOfSpaceError(
            errno.ENOSPC,
            f"out of disk space writing {what} {target}: the disk filled after {written} bytes ({free} bytes "
            f"free on {tmp.parent} once the partial {what} was removed{need}). Earlier checkpoints are intact; "
            "free some space and resume with --resume",
        ) from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def begin_checkpoint(path: str | Path) -> Path:
    """Create and return the empty temporary directory in which checkpoint ``path`` is written (a sibling
    named after ``path`` and this process); every writer fills it, then :func:`finish_checkpoint`."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def finish_checkpoint(tmp: Path, path: str | Path) -> Path:
    """Add the manifest to the filled temporary directory ``tmp``, flush every file to disk and rename it
    to ``path`` (replacing an older one of that name). On failure ``tmp`` is removed (out of space:
    :class:`OutOfSpaceError`); a crash at any point leaves the old checkpoint or the new one, never a half one."""
    path = Path(path)
    with removed_on_failure(tmp, "checkpoint", path):
        manifest = {"files": {}}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            manifest["files"][f.relative_to(tmp).as_posix()] = {"size": f.stat().st_size, "sha256": _sha256(f)}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
    old = None
    if path.exists():
        old = path.parent / f".old-{path.name}-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def verify_checkpoint(path: str | Path) -> dict:
    """Check every file of checkpoint ``path`` against its manifest; return the manifest.

    Raises :class:`CheckpointError` naming ``path`` (and the file) when the directory or its manifest is
    missing, or a file is missing or has the wrong size or checksum.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is incomplete: it has no {MANIFEST} manifest") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: unreadable {MANIFEST} ({e})") from None
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: file {name} is missing")
        if f.stat().st_size != meta["size"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: file {name} has {f.stat().st_size} bytes, expected {meta['size']}"
            )
        if _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: file {name} does not match its checksum")
    for required in ("config.json", TRAINER_STATE):
        if required not in files:
            raise CheckpointError(f"checkpoint {path} is incomplete: it has no {required}")
    return manifest


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoint directories in ``output_dir``, oldest first (no verification)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint directory in ``output_dir`` (None when there is none)."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def checkpoint_step(path: str | Path) -> int | None:
    """The step in a ``checkpoint-<step>`` directory name (None for another name)."""
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def resolve_resume(value: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint a ``resume`` setting means: None for empty / false / no / none / null; the newest
    checkpoint of ``output_dir`` for true / yes / latest (None, logged, when there is none yet); else the
    checkpoint directory ``value``. ``FileNotFoundError`` names a directory that does not exist."""
    value = (value or "").strip()
    if value.lower() in ("", "false", "no", "none", "null"):
        return None
    if value.lower() in ("true", "yes", "latest"):
        latest = latest_checkpoint(output_dir)
        if latest is None:
            logger.info("resume: no checkpoint in %s, starting afresh", output_dir)
        return latest
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint to resume from not found: {value}")
    return path


def resolve_model_path(spec: str) -> str:
    """The model ``spec`` names: a directory with ``config.json`` (a model, or a run directory holding its
    final model): itself; a run directory without one: its newest checkpoint; anything that is not a local
    path: ``spec`` itself (a Hub id). ``FileNotFoundError`` names a local path that holds no model."""
    p = Path(spec).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return str(p)
        latest = latest_checkpoint(p)
        if latest is not None:
            return str(latest)
        raise FileNotFoundError(f"no model in {spec}: it has neither config.json nor checkpoint-* directories")
    if p.exists() or spec.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"model directory not found: {spec}")
    return spec


def truncate_metrics(path: str | Path, records: int) -> None:
    """Keep the first ``records`` records of ``metrics.jsonl`` at ``path`` (those logged up to a checkpoint;
    the rest came from a run that went on past it); rewritten atomically, nothing to do without the file."""
    path = Path(path)
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) < records:
        raise CheckpointError(f"{path} has {len(lines)} records, fewer than the {records} its checkpoint counted")
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in lines[:records]), encoding="utf-8")
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA, when available) RNG states of this process as plain data:
    ``{"python", "numpy", "torch"[, "cuda"]}``, loadable with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states that :func:`rng_state` returned (the CUDA ones only when CUDA is available)."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
