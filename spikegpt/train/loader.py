"""Batches made ahead of the training step, in a background thread, resumable exactly.

:class:`Prefetcher` wraps a packer (:class:`~spikegpt.train.data.BlockPacker` for streamed text,
:class:`~spikegpt.train.token_data.TokenPacker` for prepared tokens: anything with ``next_batch(n)``,
``state_dict()`` and ``load_state_dict(state)``). A worker thread calls ``next_batch`` ``depth`` batches
ahead and takes the packer's state after each one, so :meth:`Prefetcher.state_dict` is the position after the
last batch the *step* consumed, not after the last one made: a checkpoint resumes exactly where training
stood. Tokenization (Rust) and memory-mapped reads release the GIL, so the worker runs beside the step.
On a CUDA device the batches are pinned so the copy to the GPU can overlap (``non_blocking=True``).
"""

from __future__ import annotations

import copy
import queue
import threading
from typing import Any, Protocol

import torch


class Packer(Protocol):
    def next_batch(self, n: int) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """``next()`` returns the packer's next ``(batch_size, block_len)`` batch, made ``depth`` batches ahead.

    The worker starts on the first :meth:`next` (so :meth:`load_state_dict` may come before). An exception
    in the worker is raised by the :meth:`next` that would have returned its batch. :meth:`close` stops the
    worker; it is also stopped when the prefetcher is garbage-collected.
    """

    def __init__(self, packer: Packer, batch_size: int, depth: int = 4, pin_memory: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if depth < 1:
            raise ValueError(f"depth (batches made ahead) must be >= 1, got {depth}")
        self.packer, self.batch_size, self.depth, self.pin_memory = packer, batch_size, depth, pin_memory
        self._state = copy.deepcopy(packer.state_dict())
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _work(self) -> None:
        q = self._queue
        try:
            while not self._stop.is_set():
                batch = self.packer.next_batch(self.batch_size)
                if self.pin_memory:
                    batch = batch.pin_memory()
                item = (batch, copy.deepcopy(self.packer.state_dict()))
                while not self._stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the consumer, raised there
            q.put(_Failure(e))

    def next(self) -> torch.Tensor:
        """The next batch (waits for the worker when it is behind)."""
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.depth)
            self._stop.clear()
            self._thread = threading.Thread(target=self._work, name="spikegpt-prefetch", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        batch, self._state = item
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The packer's position after the last batch :meth:`next` returned."""
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (stops the worker; batches made ahead are dropped)."""
        self.close()
        self.packer.load_state_dict(state)
        self._state = copy.deepcopy(self.packer.state_dict())

    def close(self) -> None:
        """Stop the worker (batches made ahead are dropped; the next :meth:`next` continues from
        :meth:`state_dict`)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._queue = None
        self.packer.load_state_dict(self._state)  # the worker ran ahead: rewind to the consumed position

    def __del__(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None:
            self._stop.set()
