"""Checkpoints that never lose work: written under a temporary name, checksummed, renamed into place.

A checkpoint is a directory ``<output_dir>/checkpoint-<step>`` holding a ``save_pretrained`` model
(``config.json``, ``model.safetensors``), the tokenizer, ``trainer_state.pt`` (optimizer, scheduler, step,
RNG states and data position of every rank) and ``checkpoint.json``, a manifest with the size and SHA-256
of every other file, written last. A directory whose manifest is missing or disagrees with its files is
corrupt, and :func:`verify_checkpoint` raises :class:`CheckpointError` naming the directory and the file.

Also here, the rest of a run directory's I/O: the RNG states saved in a checkpoint (:func:`rng_state`,
:func:`set_rng_state`), the final model published into ``output_dir`` itself (:func:`publish_model_dir`),
``metrics.jsonl`` cut back to a checkpoint's step on resume (:func:`truncate_metrics`), an earlier run's files
cleared for a fresh one (:func:`clear_run_dir`), and which model or checkpoint a path means
(:func:`resolve_model_path`, :func:`resolve_resume`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.pt"
RUN_FILES = ("metrics.jsonl", "tokenizer", "tensorboard")  # what a run writes beside its model and checkpoints
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete or corrupt (the message names it and the offending file)."""


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


def write_checkpoint(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create checkpoint directory ``path`` atomically.

    ``write(tmp_dir)`` fills a temporary sibling directory; the manifest is added, every file is flushed to
    disk, and the directory is renamed to ``path`` (replacing an older one of that name). A crash at any
    point leaves either the old checkpoint or the new one, never a half-written directory under ``path``.
    """
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
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


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints and leftover temporary directories; return the deleted."""
    deleted = []
    for _, p in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
        deleted.append(p)
    for p in Path(output_dir).glob(".tmp-checkpoint-*"):
        if p.name.endswith(f"-{os.getpid()}"):
            continue
        shutil.rmtree(p, ignore_errors=True)
        deleted.append(p)
    return deleted


def clear_run_dir(output_dir: str | Path) -> None:
    """Delete what an earlier run left in ``output_dir``: its checkpoints, ``metrics.jsonl``, ``tokenizer/``,
    ``tensorboard/`` and ``rank-*.jsonl`` logs (final model files are replaced when a run publishes its own)."""
    output_dir = Path(output_dir)
    for _, p in list_checkpoints(output_dir):
        shutil.rmtree(p, ignore_errors=True)
    for name in RUN_FILES:
        p = output_dir / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for p in output_dir.glob("rank-*.jsonl"):
        p.unlink()


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


def publish_model_dir(output_dir: str | Path, write: Callable[[Path], None]) -> None:
    """Write the final model files into ``output_dir`` itself: ``write(tmp_dir)`` fills a temporary
    subdirectory, then each file is renamed into ``output_dir`` atomically (replacing one of that name)."""
    output_dir = Path(output_dir)
    tmp = output_dir / f".tmp-final-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    for f in sorted(tmp.iterdir()):
        if f.is_file():
            os.replace(f, output_dir / f.name)
    shutil.rmtree(tmp, ignore_errors=True)


def truncate_metrics(path: str | Path, step: int) -> None:
    """Drop the records of ``metrics.jsonl`` at ``path`` logged after ``step`` (by a run that went on past
    its last checkpoint) and every ``final`` record; rewritten atomically, nothing to do without the file."""
    path = Path(path)
    if not path.is_file():
        return
    records = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in records
            if json.loads(line).get("step", 0) <= step and json.loads(line).get("kind") != "final"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
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
