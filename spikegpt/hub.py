"""Sharing SpikeGPT models on the Hugging Face Hub: model cards, remote code, ``push_to_hub``.

A directory written by :func:`save_pretrained` (or uploaded by :func:`push_to_hub`) holds:

- ``model.safetensors`` and ``config.json`` (``model_type: spikegpt``), the usual ``save_pretrained`` output;
- ``spikegpt_remote.py``: a self-contained copy of the model code (config, model, classification head,
  state and the PyTorch/Triton ops), generated from this package's own sources, and an ``auto_map`` entry
  in ``config.json`` that points the Auto classes at it. People WITHOUT this package can then load the
  model with ``AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)``; it needs only torch
  and transformers;
- the tokenizer (when given) and ``README.md``, a model card with the architecture, configuration, data,
  metrics and measured firing rates.

With the package installed, ``import spikegpt`` registers the classes and nothing else is needed (no
``trust_remote_code``): ``AutoModelForCausalLM.from_pretrained("user/model")`` or
``SpikeGPTForCausalLM.from_pretrained("user/model")`` load by Hub id or local directory.

Evaluating with lm-evaluation-harness (``pip install lm-eval``): its Hugging Face adapter loads a saved
directory or Hub id, e.g. ``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True
--tasks lambada_openai`` (``trust_remote_code`` is needed there because lm-eval does not import
``spikegpt``), or from Python: ``import spikegpt; HFLM(pretrained=DIR)``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REMOTE_CODE_FILE = "spikegpt_remote.py"
# Modules whose classes the remote code exports; their spikegpt imports are followed to collect the rest.
REMOTE_ROOTS = (
    "spikegpt.configuration_spikegpt",
    "spikegpt.state",
    "spikegpt.modeling_spikegpt",
    "spikegpt.sequence_classification",
)
REMOTE_EXPORTS = {
    "SpikeGPTConfig": "spikegpt.configuration_spikegpt",
    "SpikeGPTState": "spikegpt.state",
    "SpikeGPTPreTrainedModel": "spikegpt.modeling_spikegpt",
    "SpikeGPTModel": "spikegpt.modeling_spikegpt",
    "SpikeGPTForCausalLM": "spikegpt.modeling_spikegpt",
    "SpikeGPTForSequenceClassification": "spikegpt.sequence_classification",
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
``spikegpt.hub.write_remote_code(directory)``.
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


def remote_code_source() -> str:
    """The text of ``spikegpt_remote.py``: the package's model sources in one importable file (see module doc)."""
    import spikegpt

    found = _collect_sources(REMOTE_ROOTS)
    digest = hashlib.sha256()
    for name in sorted(found):
        digest.update(name.encode() + b"\0" + found[name][0].encode() + b"\0")
    namespace = f"_spikegpt_remote_{digest.hexdigest()[:12]}"
    packages = sorted({"spikegpt"} | {n for n, (_, is_pkg) in found.items() if is_pkg})
    parts = [_BUNDLE_HEADER.format(version=spikegpt.__version__, namespace=namespace,
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
    """Write ``spikegpt_remote.py`` into ``save_directory`` and add the ``auto_map`` to its ``config.json``
    (which must exist). Returns the path of the code file."""
    d = Path(save_directory)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: save the model there first")
    path = d / REMOTE_CODE_FILE
    path.write_text(remote_code_source(), encoding="utf-8")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["auto_map"] = dict(AUTO_MAP)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------
# model card
# ----------------------------------------------------------------------------------------------------------

_CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "spiking", "tau", "threshold",
    "v_reset", "detach_reset", "surrogate", "surrogate_alpha", "dropout", "layer_norm_epsilon", "l2wrap_coef",
    "context_length", "bos_token_id", "eos_token_id", "pad_token_id",
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def model_card(
    model,
    *,
    repo_id: str | None = None,
    data: str | Mapping[str, Any] | None = None,
    datasets: Iterable[str] = (),
    metrics: Mapping[str, Any] | None = None,
    firing_rates: Mapping[str, float] | None = None,
    tokenizer: str | None = None,
    license: str = "apache-2.0",
    description: str | None = None,
) -> str:
    """A model card (``README.md`` text with YAML metadata) for a SpikeGPT model.

    ``data``: what it was trained on (free text or a mapping shown as a table); ``datasets``: Hub dataset ids
    for the metadata; ``metrics``: name -> value (e.g. the JSON line of ``train/evaluate.py``);
    ``firing_rates``: layer name -> fraction of neurons firing per token (see
    :func:`spikegpt.energy.measure_spikes`); ``tokenizer``: its name or path, for the record.
    """
    cfg = model.config
    title = repo_id.split("/")[-1] if repo_id else "SpikeGPT model"
    n_params = sum(p.numel() for p in model.parameters())
    task = "text-classification" if hasattr(model, "score") else "text-generation"
    meta = ["---", "library_name: transformers", f"license: {license}", f"pipeline_tag: {task}",
            "tags:", "  - spikegpt", "  - spiking-neural-network", "  - snn", "  - rwkv"]
    datasets = list(datasets)
    if datasets:
        meta += ["datasets:"] + [f"  - {d}" for d in datasets]
    meta.append("---")
    reset = "soft (subtract threshold)" if cfg.v_reset is None else f"hard, to {cfg.v_reset}"
    kind = ("spiking: binary embedding H(E[idx]) and a LIF neuron on every branch output" if cfg.spiking
            else "non-spiking (RWKV-4): real-valued embedding, no LIF neurons")
    lines = meta + ["", f"# {title}", ""]
    if description:
        lines += [description, ""]
    lines += [
        "A SpikeGPT language model (Zhu et al. 2023, arXiv:2302.13939): RWKV-4-style blocks whose attention",
        "(TimeMix) and feed-forward (ChannelMix) branches emit binary spikes through leaky integrate-and-fire",
        "neurons into a real-valued residual stream. It runs in parallel over a sequence (training) or one token",
        "at a time from a constant-size recurrent state (generation).",
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {n_params:,} ({n_params / 1e6:.1f}M) |",
        f"| layers x width | {cfg.num_hidden_layers} x {cfg.hidden_size} (FFN {cfg.intermediate_size}) |",
        f"| vocabulary | {cfg.vocab_size}" + (f" ({tokenizer})" if tokenizer else "") + " |",
        f"| neurons | {kind} |",
        f"| LIF | tau {cfg.tau}, threshold {cfg.threshold}, reset {reset}; surrogate {cfg.surrogate} "
        f"(alpha {cfg.surrogate_alpha}) |",
        f"| training context | {cfg.context_length} tokens (the model itself has no context limit) |",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps({k: getattr(cfg, k, None) for k in _CONFIG_FIELDS}, indent=2),
        "```",
        "",
        "## Data",
        "",
    ]
    if data is None:
        lines.append("Not recorded.")
    elif isinstance(data, Mapping):
        lines += ["| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in data.items()]
    else:
        lines.append(str(data))
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Firing rates", ""]
    if firing_rates:
        mean = sum(firing_rates.values()) / len(firing_rates)
        lines += [
            "Fraction of neurons that fire per token, measured on text with this model:",
            "",
            "| layer | rate |",
            "|---|---|",
        ] + [f"| {k} | {v:.4f} |" for k, v in firing_rates.items()] + [f"| mean | {mean:.4f} |"]
    else:
        lines.append("Not measured.")
    repo = repo_id or "PATH_OR_REPO_ID"
    auto = "AutoModelForSequenceClassification" if task == "text-classification" else "AutoModelForCausalLM"
    lines += [
        "",
        "## Use",
        "",
        "With the `spikegpt` package installed:",
        "",
        "```python",
        "import spikegpt  # registers the SpikeGPT classes with transformers",
        f"from transformers import {auto}, AutoTokenizer",
        f'model = {auto}.from_pretrained("{repo}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        "```",
        "",
        "Without it (the model code ships in `spikegpt_remote.py`; needs only torch and transformers):",
        "",
        "```python",
        f"from transformers import {auto}",
        f'model = {auto}.from_pretrained("{repo}", trust_remote_code=True)',
        "```",
        "",
        f'Command line: `spikegpt generate {repo} "Once upon a time"`; energy estimate: '
        f"`spikegpt energy {repo} --text FILE`; lm-evaluation-harness: "
        f"`lm_eval --model hf --model_args pretrained={repo},trust_remote_code=True --tasks ...`.",
        "",
        "## Energy",
        "",
        "Every Linear layer of this architecture reads layer-normalised real values, so its matrix products are",
        "multiply-accumulates even on neuromorphic hardware; only the binary embedding and the additions of",
        "spikes into the residual stream are spike-driven. `spikegpt energy` counts operations by kind from",
        "measured firing rates and compares with a same-size transformer.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# saving and pushing
# ----------------------------------------------------------------------------------------------------------


def save_pretrained(
    model,
    save_directory: str | os.PathLike,
    *,
    tokenizer=None,
    remote_code: bool = True,
    card: bool = True,
    **card_kwargs: Any,
) -> Path:
    """``model.save_pretrained`` (safetensors) plus the remote code and ``auto_map`` (``remote_code``), the
    tokenizer (when given) and a ``README.md`` model card (``card``; ``card_kwargs`` go to
    :func:`model_card`). Returns the directory."""
    d = Path(save_directory)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    if remote_code:
        write_remote_code(d)
    if tokenizer is not None:
        tokenizer.save_pretrained(d)
        card_kwargs.setdefault("tokenizer", getattr(tokenizer, "name_or_path", None) or None)
    if card:
        (d / "README.md").write_text(model_card(model, **card_kwargs), encoding="utf-8")
    return d


def push_to_hub(
    model,
    repo_id: str,
    *,
    tokenizer=None,
    data: str | Mapping[str, Any] | None = None,
    datasets: Iterable[str] = (),
    metrics: Mapping[str, Any] | None = None,
    firing_rates: Mapping[str, float] | None = None,
    description: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload SpikeGPT model",
    create_pr: bool = False,
    api=None,
):
    """Upload a model (weights, config with ``auto_map``, remote code, tokenizer, model card) to ``repo_id``.

    Creates the repository when needed. ``api``: a ``huggingface_hub.HfApi`` (default: a new one with
    ``token``); any object with ``create_repo`` and ``upload_folder`` works (tests pass a local stand-in).
    Returns what ``upload_folder`` returns (a ``CommitInfo`` for the real Hub).
    """
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
        raise ValueError(f"repo_id must look like 'user/name', got {repo_id!r}")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="spikegpt-push-") as tmp:
        save_pretrained(
            model, tmp, tokenizer=tokenizer, repo_id=repo_id, data=data, datasets=datasets, metrics=metrics,
            firing_rates=firing_rates, description=description,
        )
        logger.info("uploading %s to %s", sorted(os.listdir(tmp)), repo_id)
        return api.upload_folder(
            repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision,
            create_pr=create_pr, repo_type="model",
        )
