"""A training run's directory (``output_dir``): one run at a time, and no work in it ever lost.

The directory belongs to the spikegpt runs that wrote it. Its record, ``run.json``, lists every file and
checkpoint directory those runs wrote there; a file it does not list is someone else's, and no run deletes
or replaces it:

- **a fresh run** refuses a directory that holds files unless it is told ``overwrite_output_dir`` (HF's
  name). Then the earlier runs' recorded files are deleted, other files stay, and one that stands where the
  run writes a file of its own (``config.json`` of a model saved there by hand, say) is moved into
  ``moved-aside-<time>/`` with a warning;
- **one run at a time**: the main process holds ``.run.lock`` (``filelock``) from start to end; a second run
  fails at once with :class:`RunDirBusy` naming the holder (pid, host, start time, command, kept in
  ``.run.lock.json``);
- **temporaries** (``.tmp-*``) are removed by the process that made them; those of a run that died are
  removed by the next run that takes the lock (their maker held the lock, so it is gone);
- **resuming from an older checkpoint** than the newest starts a branch: the newer checkpoints, the final
  model of the abandoned line and a copy of its metrics move into ``superseded-<time>/``
  (:meth:`RunDir.supersede`), so the next ``resume: latest`` continues the branch the user chose;
- **settings that cannot change on resume** (model shape, tokenizer, context, seed, data) are compared with
  the checkpoint's by :func:`changed_settings`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from spikegpt.train.checkpoint import list_checkpoints, removed_on_failure

logger = logging.getLogger(__name__)

RECORD = "run.json"
LOCK = ".run.lock"
HOLDER = ".run.lock.json"
_RECORD_FORMAT = "spikegpt-run-dir"
_INTERNAL = (RECORD, LOCK, HOLDER)  # the directory's own bookkeeping: never someone's work
_TEMPORARY = re.compile(r"^\.(tmp|old)-")

# Settings a resumed run must share with its checkpoint: they fix the model, its tokenizer, the data stream
# or the optimizer's state layout. The others (learning rates, betas, schedule, batch, logging, max_steps)
# may change, and the resumed run uses the new values.
IMMUTABLE_SETTINGS = (
    "model", "init_from", "tokenizer", "tokenizer_vocab_size", "tokenizer_train_chars", "context_length", "seed",
    "data", "data_config", "data_split", "data_revision", "text_field", "text_unit", "val_fraction",
    "shuffle_buffer", "optimizer", "parallelism",
)


class RunDirError(ValueError):
    """The output directory cannot be used as asked (the message says why and what to do)."""


class RunDirBusy(RunDirError):
    """Another run holds the output directory's lock (the message names it)."""


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def _describe(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The :data:`IMMUTABLE_SETTINGS` whose value differs between a checkpoint's settings ``saved`` and the
    run's ``current`` ones, each as ``"key (checkpoint: a, now: b)"`` (``model.KEY`` for the model section;
    a key absent on one side counts as a difference)."""
    missing = object()
    out = []

    def show(v: Any) -> str:
        return "unset" if v is missing else json.dumps(v)

    for key in IMMUTABLE_SETTINGS:
        a, b = saved.get(key, missing), current.get(key, missing)
        if key == "model" and isinstance(a, Mapping) and isinstance(b, Mapping):
            for sub in sorted(set(a) | set(b)):
                x, y = a.get(sub, missing), b.get(sub, missing)
                if x != y:
                    out.append(f"model.{sub} (checkpoint: {show(x)}, now: {show(y)})")
        elif a != b and not (key == "parallelism" and missing in (a, b)):
            out.append(f"{key} (checkpoint: {show(a)}, now: {show(b)})")
    return out


class RunDir:
    """The run directory ``path`` and its record of what spikegpt runs wrote there (see the module docstring).

    Only the main process of a run creates one. Every entry is a path relative to ``path``; a directory
    entry ends with ``/`` and covers everything under it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"output_dir {self.path} is a file, not a directory")
        self.entries: set[str] = set()
        self._lock = None
        self._aside: Path | None = None
        self._read_record()

    # ----- the record -----

    def _read_record(self) -> None:
        f = self.path / RECORD
        if not f.is_file():
            return
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            if data.get("format") != _RECORD_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}")
            self.entries = {str(e) for e in data["entries"]}
        except (ValueError, KeyError, TypeError) as e:
            raise RunDirError(f"{f} is not a readable run record ({e}); move it away to use {self.path}") from None

    def _write_record(self) -> None:
        tmp = self.path / f".tmp-record-{os.getpid()}"
        tmp.write_text(json.dumps({"format": _RECORD_FORMAT, "version": 1, "entries": sorted(self.entries)},
                                  indent=1), encoding="utf-8")
        os.replace(tmp, self.path / RECORD)

    def add(self, *entries: str) -> None:
        """Record ``entries`` as written by this run."""
        self.entries.update(entries)
        self._write_record()

    def forget(self, *entries: str) -> None:
        """Drop ``entries`` from the record (after this run removed or moved them)."""
        self.entries.difference_update(entries)
        self._write_record()

    def owns(self, relpath: str) -> bool:
        """Whether a run wrote ``relpath`` (a recorded file, or a path under a recorded directory)."""
        parts = Path(relpath).parts
        return relpath in self.entries or any("/".join(parts[:i]) + "/" in self.entries
                                               for i in range(1, len(parts) + 1))

    def foreign_files(self) -> list[str]:
        """Files in the directory that no run recorded (bookkeeping and temporaries excluded), sorted."""
        found = []
        if not self.path.is_dir():
            return found
        for root, dirs, files in os.walk(self.path):
            rel_root = Path(root).relative_to(self.path)
            dirs[:] = [d for d in dirs if not self.owns((rel_root / d).as_posix() + "/")
                       and not (rel_root == Path(".") and _TEMPORARY.match(d))]
            for name in files:
                rel = (rel_root / name).as_posix()
                if rel_root == Path(".") and (name in _INTERNAL or _TEMPORARY.match(name)):
                    continue
                if not self.owns(rel):
                    found.append(rel)
        return sorted(found)

    def _existing_entries(self) -> list[str]:
        return sorted(e for e in self.entries if (self.path / e.rstrip("/")).exists())

    # ----- the lock -----

    def lock(self) -> None:
        """Take the directory's lock for this process, or raise :class:`RunDirBusy` naming the holder."""
        from filelock import FileLock, Timeout

        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunDirBusy(f"output_dir {self.path} is in use by another run ({self._holder()}); wait for it "
                             "to finish, or choose another output_dir") from None
        self._lock = lock
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])}
        tmp = self.path / f".tmp-holder-{os.getpid()}"
        tmp.write_text(json.dumps(holder), encoding="utf-8")
        os.replace(tmp, self.path / HOLDER)

    def _holder(self) -> str:
        try:
            h = json.loads((self.path / HOLDER).read_text(encoding="utf-8"))
            return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown: it has not written .run.lock.json yet"

    def unlock(self) -> None:
        """Release the lock taken by :meth:`lock` (nothing to do without one)."""
        if self._lock is None:
            return
        (self.path / HOLDER).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    def remove_stale_temporaries(self) -> list[str]:
        """Remove ``.tmp-*`` / ``.old-*`` entries left by a run that died (call with the lock held: their
        maker held it, so it is gone); return their names."""
        if self._lock is None:
            raise RuntimeError("remove_stale_temporaries needs the lock (call lock() first)")
        removed = []
        for p in sorted(self.path.iterdir()):
            if _TEMPORARY.match(p.name) and not p.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p.name)
        if removed:
            logger.info("removed what an interrupted run left half-written in %s: %s", self.path, ", ".join(removed))
        return removed

    # ----- starting, claiming, branching -----

    def start_fresh(self, overwrite: bool) -> None:
        """Make the directory ready for a new run: refuse one that holds files unless ``overwrite``; with it,
        delete the earlier runs' recorded files (other files stay)."""
        foreign, ours = self.foreign_files(), self._existing_entries()
        if (foreign or ours) and not overwrite:
            what = []
            if ours:
                what.append(f"an earlier run's {_describe(ours)}")
            if foreign:
                what.append(f"{len(foreign)} file(s) no run wrote ({_describe(foreign)})")
            raise RunDirError(
                f"output_dir {self.path} is not empty: it holds {' and '.join(what)}. Pass --resume to continue "
                "the run there, --overwrite_output_dir to start a new run there (an earlier run's files are "
                "replaced, files no run wrote are kept), or choose another --output_dir"
            )
        for entry in ours:
            p = self.path / entry.rstrip("/")
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            self._remove_empty_parents(p)
        if ours:
            logger.info("overwrite_output_dir: removed an earlier run's %s", _describe(ours))
        self.entries = set()
        self._write_record()

    def _remove_empty_parents(self, p: Path) -> None:
        parent = p.parent
        while parent != self.path and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def _aside_dir(self) -> Path:
        if self._aside is None:
            self._aside = self.path / f"moved-aside-{_stamp()}"
        return self._aside

    def claim(self, relpath: str) -> None:
        """Record ``relpath`` as this run's before it writes there; a file of someone else's in the way is
        moved into ``moved-aside-<time>/`` (never deleted)."""
        p = self.path / relpath.rstrip("/")
        if (p.exists() or p.is_symlink()) and not self.owns(relpath):
            dest = self._aside_dir() / relpath.rstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)
            logger.warning("moved %s (not written by a spikegpt run) to %s to make way for the run's own", p, dest)
        self.add(relpath)

    def publish(self, write: Callable[[Path], None], into: str = "") -> list[str]:
        """Write files into the directory (or its subdirectory ``into``) without a half-written one ever
        visible: ``write(tmp)`` fills a temporary directory, then each file is claimed (:meth:`claim`) and
        renamed into place. Returns the relative paths written. On any error the temporary goes (out of disk
        space: :class:`~spikegpt.train.checkpoint.OutOfSpaceError`)."""
        tmp = self.path / f".tmp-publish-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        written = []
        try:
            with removed_on_failure(tmp, "files", self.path):
                write(tmp)
            for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                rel = (Path(into) / f.relative_to(tmp)).as_posix()
                self.claim(rel)
                (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, self.path / rel)
                written.append(rel)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return written

    def adopt(self, entries: Iterable[str]) -> None:
        """Record existing ``entries`` (checkpoints of a run being resumed in a directory without a record)."""
        new = [e for e in entries if e not in self.entries]
        if new:
            self.add(*new)

    def model_files(self, run_files: Iterable[str]) -> list[str]:
        """The recorded top-level files other than ``run_files``: the final model a run published here."""
        run_files = set(run_files)
        return sorted(e for e in self.entries if "/" not in e and e not in run_files and (self.path / e).is_file())

    def supersede(self, newer: list[Path], move: Iterable[str] = (), copy: Iterable[str] = ()) -> Path:
        """Start a branch: move the checkpoint directories ``newer`` and the files ``move`` (relative) into
        ``superseded-<time>/``, copy the files ``copy`` there too; return that directory."""
        dest = self.path / f"superseded-{_stamp()}"
        while dest.exists():
            dest = dest.with_name(dest.name + "-")
        dest.mkdir()
        self.add(dest.name + "/")
        for p in newer:
            os.replace(p, dest / p.name)
            self.forget(p.name + "/")
        for rel in move:
            os.replace(self.path / rel, dest / rel)
            self.forget(rel)
        for rel in copy:
            if (self.path / rel).is_file():
                shutil.copy2(self.path / rel, dest / rel)
        return dest

    def prune_checkpoints(self, keep: int) -> list[Path]:
        """Delete all but the newest ``keep`` checkpoints that runs wrote here; return the deleted. (Temporaries
        are left to the process that made them.)"""
        deleted = []
        for _, p in list_checkpoints(self.path)[:-keep] if keep > 0 else []:
            if self.owns(p.name + "/"):
                shutil.rmtree(p, ignore_errors=True)
                self.forget(p.name + "/")
                deleted.append(p)
        return deleted
