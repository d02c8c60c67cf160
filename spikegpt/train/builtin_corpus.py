"""A built-in English corpus that needs no download: CPython's own documentation prose.

``builtin:python-docs`` is (1) every topic of the language reference shipped in ``pydoc_data.topics``
(about 0.47 MB) and (2) the docstrings of the standard library's modules, extracted with ``ast`` (about
1.8 MB; one document per module: its docstring, then those of its classes and functions in source order).
Test suites and ``site-packages`` are left out. The text depends on the Python version, so record it with
results (the trainer logs it).
"""

from __future__ import annotations

import ast
import functools
import logging
import sys
import sysconfig
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
BUILTIN_CORPORA = ("python-docs",)
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _definitions(body: list[ast.stmt]):
    """Class and function definitions in a statement list, nested ones included, in source order.

    Only statement lists are walked (bodies, branches, handlers), not expressions: a full ``ast.walk``
    costs several times more and finds no definition more.
    """
    for node in body:
        if isinstance(node, _DEFS):
            yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            child = getattr(node, name, None)
            if isinstance(child, list):
                yield from _definitions(child)


def module_docstrings(source: bytes) -> str:
    """Docstrings of a module and of its classes and functions, in source order, separated by blank lines."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning on invalid escapes in old modules
        tree = ast.parse(source)
    parts = [ast.get_docstring(n, clean=True) for n in [tree, *_definitions(tree.body)]]
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


@functools.lru_cache(maxsize=1)
def python_docs() -> tuple[str, ...]:
    """The documents of ``builtin:python-docs``, in a fixed order (pydoc topics by name, then modules by path)."""
    import pydoc_data.topics

    docs = [pydoc_data.topics.topics[name].strip() for name in sorted(pydoc_data.topics.topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in stdlib.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(stdlib).parts)
    )
    for path in files:
        try:
            text = module_docstrings(path.read_bytes())
        except (SyntaxError, ValueError, OSError):  # a few stdlib files are deliberately broken or unreadable
            continue
        if text:
            docs.append(text)
    docs = [d for d in docs if d]
    logger.info(
        "builtin:python-docs: %d documents, %d characters (Python %s)",
        len(docs), sum(map(len, docs)), sys.version.split()[0],
    )
    return tuple(docs)


def builtin_documents(name: str) -> tuple[str, ...]:
    """Documents of the built-in corpus ``name`` (without the ``builtin:`` prefix); ``ValueError`` if unknown."""
    if name == "python-docs":
        return python_docs()
    available = [f"builtin:{n}" for n in BUILTIN_CORPORA]
    raise ValueError(f"unknown built-in corpus 'builtin:{name}'; available: {available}")
