"""Metrics sinks: JSON lines in ``<output_dir>/metrics.jsonl`` and, when installed, TensorBoard."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf
    return v


def clean_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every non-finite float replaced by None (valid JSON: ``json.dumps(allow_nan=False)``)."""
    return {k: _clean(v) for k, v in record.items()}


class MetricsLogger:
    """Append one JSON object per record to ``path``; mirror numeric values to TensorBoard when available.

    Each record is ``{"kind": ..., "step": ..., "time": unix seconds, **values}``; ``records`` counts the
    file's records (those already there included). Only the main process should create one.
    """

    def __init__(self, path: str | Path, tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = 0
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                self.records = sum(1 for line in f if line.strip())
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard_dir is not None and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, kind: str, step: int, **values: Any) -> None:
        record = {"kind": kind, "step": step, "time": round(time.time(), 3)}
        record.update(clean_record(values))
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        self.records += 1
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
                elif kind == "sample" and isinstance(v, str):
                    self._tb.add_text(f"{kind}/{k}", v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (optionally only those of one ``kind``)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
    return out
