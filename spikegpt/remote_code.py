"""The model code that travels with every saved SpikeGPT directory, for ``trust_remote_code=True``.

``SpikeGPTPreTrainedModel.save_pretrained`` writes ``spikegpt_remote.py`` next to the weights and an
``auto_map`` into ``config.json``, so a process that never imports spikegpt (lm-evaluation-harness,
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``) loads the model with only torch and
transformers. The file is one module holding this package's model sources verbatim (configuration,
modeling, state, recording, the ops), their ``spikegpt`` imports and custom-op names moved into a private
namespace, and a finder that imports them from there, so an installed spikegpt is never shadowed.
Re-saving a model loaded that way writes the same file again.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

REMOTE_CODE_FILE = "spikegpt_remote.py"
# Modules whose classes the remote code exports; their spikegpt imports are followed to collect the rest.
REMOTE_ROOTS = (
    "spikegpt.configuration_spikegpt",
    "spikegpt.state",
    "spikegpt.modeling_spikegpt",
    "spikegpt.modeling_sequence_classification",
)
REMOTE_EXPORTS = {
    "SpikeGPTConfig": "spikegpt.configuration_spikegpt",
    "SpikeGPTState": "spikegpt.state",
    "SpikeGPTPreTrainedModel": "spikegpt.modeling_spikegpt",
    "SpikeGPTModel": "spikegpt.modeling_spikegpt",
    "SpikeGPTForCausalLM": "spikegpt.modeling_spikegpt",
    "SpikeGPTForSequenceClassification": "spikegpt.modeling_sequence_classification",
}
_MODULE = REMOTE_CODE_FILE.removesuffix(".py")
AUTO_MAP = {
    "AutoConfig": f"{_MODULE}.SpikeGPTConfig",
    "AutoModel": f"{_MODULE}.SpikeGPTModel",
    "AutoModelForCausalLM": f"{_MODULE}.SpikeGPTForCausalLM",
    "AutoModelForSequenceClassification": f"{_MODULE}.SpikeGPTForSequenceClassification",
}


# ----------------------------------------------------------------------------------------------------------
# remote code: one file that carries the package's sources
# ----------------------------------------------------------------------------------------------------------


def _resolve(module: str | None, level: int, package: str) -> str | None:
    """Absolute name of ``from <level dots><module> import ...`` inside ``package``."""
    if level == 0:
        return module
    parts = package.split(".")
    if level - 1 > len(parts) - 1:
        return None
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def _collect_sources(roots: Iterable[str]) -> dict[str, tuple[str, bool]]:
    """``{module: (source, is_package)}`` of every ``spikegpt`` module the roots import (also lazily, inside
    functions), except the top-level package ``spikegpt`` itself."""
    found: dict[str, tuple[str, bool]] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in found or name == "spikegpt":
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not os.path.isfile(spec.origin):
            raise RuntimeError(f"remote code: cannot find the source of module {name}")
        is_pkg = spec.submodule_search_locations is not None
        src = Path(spec.origin).read_text(encoding="utf-8")
        found[name] = (src, is_pkg)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(2, len(parts)))  # parent packages below spikegpt
        package = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom):
                mod = _resolve(node.module, node.level, package)
                if mod is None or not (mod == "spikegpt" or mod.startswith("spikegpt.")):
                    continue
                if mod == "spikegpt":
                    raise RuntimeError(f"remote code: {name} imports from the top-level package spikegpt; "
                                       "import from its submodules instead")
                todo.append(mod)
                mod_spec = importlib.util.find_spec(mod)
                if mod_spec is not None and mod_spec.submodule_search_locations is not None:
                    for alias in node.names:  # `from package import submodule`
                        if importlib.util.find_spec(f"{mod}.{alias.name}") is not None:
                            todo.append(f"{mod}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "spikegpt" or alias.name.startswith("spikegpt."):
                        if alias.asname is None:
                            raise RuntimeError(f"remote code: `import {alias.name}` in {name} needs an `as` name")
                        todo.append(alias.name)
    return found


def _rewrite_imports(src: str, namespace: str, name: str, is_pkg: bool) -> str:
    """Make every ``spikegpt`` import of module ``name`` absolute inside ``namespace`` and move its custom ops
    (``"spikegpt::op"``) there too (line numbers unchanged).

    Relative imports become absolute too: transformers scans remote-code files for ``from .x import`` lines
    (string contents included) and would look for ``x.py`` next to the bundle.
    """
    package = name if is_pkg else name.rpartition(".")[0]
    lines = src.splitlines(keepends=True)
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(node.module, node.level, package)
            if target is None or target.split(".")[0] != "spikegpt":
                continue
            written = "." * node.level + (node.module or "")
            pattern = r"\bfrom\s+" + re.escape(written) + r"(?=\s+import\b)"
            replacement = f"from {namespace}.{target}"
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "spikegpt" for a in node.names):
            if len(node.names) != 1:
                raise RuntimeError(f"remote code: split the import on line {node.lineno} of {name}")
            pattern, replacement = r"\bimport(\s+)spikegpt\b", f"import {namespace}.spikegpt"
        else:
            continue
        i = node.lineno - 1
        new, n = re.subn(pattern, lambda m, r=replacement: r, lines[i], count=1)
        if n != 1:
            raise RuntimeError(f"remote code: cannot rewrite the import on line {node.lineno} of {name}: {lines[i]!r}")
        lines[i] = new
    out = "".join(lines)
    # custom ops (torch.library) get the namespace too, so that they never replace the installed package's
    out = re.sub(r"""(["'])spikegpt::""", lambda m: f"{m.group(1)}{namespace}::", out)
    for node in ast.walk(ast.parse(out)):  # nothing may still import the real package, or relatively
        mods = ([node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else
                ["."] if isinstance(node, ast.ImportFrom) else
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        if any(m.split(".")[0] in ("spikegpt", "") for m in mods):
            raise RuntimeError(f"remote code: {name} still imports spikegpt or relatively after rewriting "
                               f"(line {node.lineno})")
    return out


def _literal(src: str) -> str:
    """A Python literal for ``src``: a readable raw triple-quoted string when exact, else ``repr``."""
    lit = "r'''" + src + "'''"
    try:
        if ast.literal_eval(lit) == src:
            return lit
    except (SyntaxError, ValueError):
        pass
    return repr(src)


_BUNDLE_HEADER = '''"""SpikeGPT model code for ``trust_remote_code=True`` (spikegpt {version}; generated, do not edit).

Load a model saved with it, without installing spikegpt (needs torch and transformers):

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path_or_repo_id, trust_remote_code=True)

With the spikegpt package installed, ``import spikegpt`` instead and drop ``trust_remote_code``.

The modules in ``_SOURCES`` are the package's own source files, verbatim except that their ``spikegpt``
imports and custom-op names (``spikegpt::``) point into the private namespace
``{namespace}``. They are imported through a finder that answers only for names under
that namespace, so an installed ``spikegpt`` is never shadowed. Regenerate with
``spikegpt.interop.hub.write_remote_code(directory)``.
"""

import importlib
import importlib.abc
import importlib.util
import linecache
import sys

_NAMESPACE = "{namespace}"
_PACKAGES = frozenset({packages})
'''

_BUNDLE_LOADER = '''

class _SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports the modules of ``_SOURCES`` as ``_NAMESPACE.<name>``."""

    namespace = _NAMESPACE
    bundle_file = __file__  # this file: what spikegpt.remote_code writes again when a model is re-saved

    @staticmethod
    def _relative(fullname):
        if fullname == _NAMESPACE:
            return ""
        if fullname.startswith(_NAMESPACE + "."):
            return fullname[len(_NAMESPACE) + 1:]
        return None

    @staticmethod
    def _filename(rel):
        tail = "/__init__.py" if rel in _PACKAGES else ".py"
        return f"<{_NAMESPACE}>/{rel.replace('.', '/')}{tail}"

    def find_spec(self, fullname, path=None, target=None):
        rel = self._relative(fullname)
        if rel is None or (rel and rel not in _SOURCES and rel not in _PACKAGES):
            return None
        is_pkg = rel == "" or rel in _PACKAGES
        return importlib.util.spec_from_loader(fullname, self, origin=self._filename(rel), is_package=is_pkg)

    def create_module(self, spec):
        return None

    def get_source(self, fullname):
        return _SOURCES.get(self._relative(fullname) or "")

    def exec_module(self, module):
        rel = self._relative(module.__name__)
        src = _SOURCES.get(rel)
        if src is None:  # the namespace root and the top-level package are empty
            return
        filename = self._filename(rel)
        module.__file__ = filename
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)  # tracebacks, inspect
        exec(compile(src, filename, "exec", dont_inherit=True), module.__dict__)


if not any(getattr(f, "namespace", None) == _NAMESPACE for f in sys.meta_path):
    sys.meta_path.append(_SourceFinder())


def _load(name):
    return importlib.import_module(f"{_NAMESPACE}.{name}")


'''


def _bundled_text() -> str | None:
    """Inside a bundle (this module imported from ``spikegpt_remote.py``): that file's text; else None."""
    namespace = __name__.split(".")[0]
    if not namespace.startswith("_spikegpt_remote_"):
        return None
    for finder in sys.meta_path:
        if getattr(finder, "namespace", None) == namespace:
            return Path(finder.bundle_file).read_text(encoding="utf-8")
    raise RuntimeError(f"remote code: the finder of {namespace} is not installed")


def remote_code_source() -> str:
    """The text of ``spikegpt_remote.py``: the package's model sources in one importable file (see module doc)."""
    bundled = _bundled_text()
    if bundled is not None:
        return bundled
    __version__ = importlib.import_module("spikegpt").__version__  # not an import statement: never bundled

    found = _collect_sources(REMOTE_ROOTS)
    digest = hashlib.sha256()
    for name in sorted(found):
        digest.update(name.encode() + b"\0" + found[name][0].encode() + b"\0")
    namespace = f"_spikegpt_remote_{digest.hexdigest()[:12]}"
    packages = sorted({"spikegpt"} | {n for n, (_, is_pkg) in found.items() if is_pkg})
    parts = [_BUNDLE_HEADER.format(version=__version__, namespace=namespace,
                                   packages="{" + ", ".join(repr(p) for p in packages) + "}")]
    parts.append("_SOURCES = {}\n")
    for name in sorted(found):
        src = _rewrite_imports(found[name][0], namespace, name, found[name][1])
        parts.append(f"\n_SOURCES[{name!r}] = {_literal(src)}\n")
    parts.append(_BUNDLE_LOADER)
    for cls, module in REMOTE_EXPORTS.items():
        parts.append(f"{cls} = _load({module!r}).{cls}\n")
    # the classes' home is this file, so that transformers copies it when a remote-code model is saved again
    parts.append(f"for _cls in ({', '.join(REMOTE_EXPORTS)}):\n    _cls.__module__ = __name__\n")
    parts.append(f"\n__all__ = {sorted(REMOTE_EXPORTS)!r}\n")
    text = "".join(parts)
    ast.parse(text)
    # transformers copies files named by `from .x import` lines anywhere in the text: there must be none
    if re.search(r"^\s*from\s+\.", text, flags=re.MULTILINE) or re.search(r"^\s*import\s+\.", text, flags=re.MULTILINE):
        raise RuntimeError("remote code: a relative import survived in the bundle")
    return text


def write_remote_code(save_directory: str | os.PathLike) -> Path:
    """Write ``spikegpt_remote.py`` into ``save_directory`` (created if needed); returns its path.

    The ``auto_map`` that points the Auto classes at it is :data:`AUTO_MAP`, which ``save_pretrained`` puts
    into ``config.json``.
    """
    d = Path(save_directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / REMOTE_CODE_FILE
    tmp = d / f".{REMOTE_CODE_FILE}.tmp-{os.getpid()}"
    tmp.write_text(remote_code_source(), encoding="utf-8")
    os.replace(tmp, path)
    return path
