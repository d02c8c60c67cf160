"""Sharing SpikeGPT models on the Hugging Face Hub: model cards and ``push_to_hub``.

A directory written by :func:`save_with_card` (or uploaded by :func:`push_to_hub`) holds what every
``model.save_pretrained`` writes -- ``model.safetensors``, ``config.json`` with an ``auto_map``, and
``spikegpt_remote.py`` (the model code, for ``trust_remote_code=True`` where spikegpt is not installed; see
:mod:`spikegpt.remote_code`) -- plus the tokenizer (when given) and ``README.md``, a model card with the
architecture, configuration, data, metrics and measured firing rates.

With the package installed, ``import spikegpt`` registers the classes and nothing else is needed (no
``trust_remote_code``): ``AutoModelForCausalLM.from_pretrained("user/model")`` or
``SpikeGPTForCausalLM.from_pretrained("user/model")`` load by Hub id or local directory.

Evaluating with lm-evaluation-harness (``pip install lm-eval``): its Hugging Face adapter loads a saved
directory or Hub id, e.g. ``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True
--tasks lambada_openai`` (``trust_remote_code`` is needed there because lm-eval does not import
``spikegpt``), or from Python: ``import spikegpt; HFLM(pretrained=DIR)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

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
    for the metadata; ``metrics``: name -> value (e.g. the JSON line of ``spikegpt eval``);
    ``firing_rates``: spike-site path -> fraction of neurons firing per token (the ``rates()`` of
    :func:`spikegpt.recording.record_spikes`, e.g. ``"model.blocks.0.att_lif"``); ``tokenizer``: its name or
    path, for the record.
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


def save_with_card(
    model,
    save_directory: str | os.PathLike,
    *,
    tokenizer=None,
    card: bool = True,
    **card_kwargs: Any,
) -> Path:
    """``model.save_pretrained`` plus the tokenizer (when given) and a ``README.md`` model card (``card``;
    ``card_kwargs`` go to :func:`model_card`). Returns the directory."""
    d = Path(save_directory)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
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
        save_with_card(
            model, tmp, tokenizer=tokenizer, repo_id=repo_id, data=data, datasets=datasets, metrics=metrics,
            firing_rates=firing_rates, description=description,
        )
        logger.info("uploading %s to %s", sorted(os.listdir(tmp)), repo_id)
        return api.upload_folder(
            repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision,
            create_pr=create_pr, repo_type="model",
        )
