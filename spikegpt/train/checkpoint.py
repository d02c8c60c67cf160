"""Checkpoints that never lose work: written under a temporary name, checksummed, renamed into place.

A checkpoint is a directory ``<output_dir>/checkpoint-<step>`` holding a ``save_pretrained`` model
(``config.json``, ``model.safetensors``), the tokenizer, ``trainer_state.pt`` (optimizer, scheduler, step,
RNG states and data position of every rank) and ``checkpoint.json``, a manifest with the size and SHA-256
of every other file, written last. A directory whose manifest is missing or disagrees with its files is
corrupt, and :func:`verify_checkpoint` raises :class:`CheckpointError` naming the directory and the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.pt"
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
