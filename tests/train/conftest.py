"""Fixtures of the training tests. The helpers module beside this file is made importable (pytest runs with
``--import-mode=importlib``, which puts no test directory on ``sys.path``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_helpers import make_documents, write_jsonl  # noqa: E402


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", make_documents(80))
