"""The ``spikegpt`` command line.

    spikegpt generate MODEL "Once upon a time" --max-new-tokens 100 --temperature 0.8 --top-p 0.95
    echo "Once upon a time" | spikegpt generate MODEL --greedy
    spikegpt convert SpikeGPT-216M.pth spikegpt-216m --tokenizer EleutherAI/gpt-neox-20b
    spikegpt convert --from rwkv RWKV-4-Pile-169M.pth rwkv4-169m --tokenizer EleutherAI/gpt-neox-20b
    spikegpt energy MODEL --text corpus.txt --json energy.json
    spikegpt spikes MODEL --text "The cat sat on the mat." --layers 0,3 --out spikes/
    spikegpt train --config configs/tiny.yaml          (spikegpt.train.pretrain; --config is required)
    spikegpt eval --model runs/tiny --data builtin:python-docs --split val   (spikegpt.train.evaluate)
    spikegpt prepare --config configs/tiny.yaml --output data/tiny   (spikegpt.train.prepare: tokenize once)

MODEL is a local directory (``save_pretrained`` output, or a training run directory) or a Hub id.
Every command takes ``--help``. Errors are reported in one line on stderr with a non-zero exit status
(``SPIKEGPT_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("spikegpt.tools.cli")

PASSTHROUGH = {"train": "spikegpt.train.pretrain", "eval": "spikegpt.train.evaluate",
               "prepare": "spikegpt.train.prepare"}
TRAIN_EXTRAS = ("datasets", "zstandard")  # imported by the training code only when it reads data
DTYPES = ("auto", "float32", "bfloat16", "float16")


class CLIError(Exception):
    """An error to report in one line (no traceback)."""


# ------------------------------------------------------------------------------------------------- helpers


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"unknown device {name!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"device {name} requested but CUDA is not available")
    return dev


def _dtype(name: str, device):
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def _model_path(spec: str) -> str:
    """A directory with config.json: itself; a run directory: its final model or newest checkpoint; else a Hub id."""
    from spikegpt.train.checkpoint import resolve_model_path

    if Path(spec).expanduser().is_file():
        raise CLIError(f"{spec} is a file, not a model directory (convert a checkpoint with `spikegpt convert`)")
    try:
        return resolve_model_path(spec)
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None


def _load_model(spec: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM

    import spikegpt  # noqa: F401  (registers the Auto classes)

    path = _model_path(spec)
    dev = _device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=_dtype(dtype, dev), trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise CLIError(f"cannot load model {spec!r}: {e}") from e
    return model.to(dev).eval(), path


def _load_tokenizer(name: str, defaulted: bool = False):
    """A tokenizer from a directory or the Hub; ``defaulted``: ``name`` is the model's, not given by the user."""
    from transformers import AutoTokenizer

    p = Path(name).expanduser()
    if not p.exists() and name.startswith(("/", "./", "../", "~")):
        raise CLIError(f"tokenizer directory not found: {name}")
    try:
        return AutoTokenizer.from_pretrained(str(p) if p.exists() else name)
    except Exception as e:  # offline, unknown name, missing files
        hint = " (the model has no tokenizer: pass --tokenizer)" if defaulted else ""
        raise CLIError(f"cannot load a tokenizer from {name!r}{hint}: {type(e).__name__}: {e}") from e


def _read_text(arg: str) -> str:
    """Text from a file, ``-`` (stdin) or ``builtin:python-docs`` (CPython's documentation, no download)."""
    if arg == "-":
        return sys.stdin.read()
    if arg.startswith("builtin:"):
        from spikegpt.train.data import builtin_text

        return builtin_text(arg)
    p = Path(arg).expanduser()
    if not p.is_file():
        raise CLIError(f"text file not found: {arg}")
    return p.read_text(encoding="utf-8", errors="replace")


def _encode(tokenizer, text: str, max_tokens: int) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise CLIError("the text is empty after tokenization")
    return ids[:max_tokens] if max_tokens > 0 else ids


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _positive(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _number(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def _temperature(s: str) -> float:
    v = _number(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (or 0 for greedy decoding, as --greedy), got {v:g}")
    return v


def _top_p(s: str) -> float:
    v = _number(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1] (1 keeps every token), got {v:g}")
    return v


def _top_k(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 keeps every token), got {v}")
    return v


def _repetition_penalty(s: str) -> float:
    v = _number(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (1 means no penalty), got {v:g}")
    return v


# ------------------------------------------------------------------------------------------------ commands


def cmd_generate(a: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    prompt = a.prompt
    if prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise CLIError("no prompt: give one as an argument or on stdin")
        prompt = sys.stdin.read()
    if not prompt:
        raise CLIError("the prompt is empty")
    model, path = _load_model(a.model, a.device, a.dtype, a.trust_remote_code)
    tok = _load_tokenizer(a.tokenizer or path, defaulted=a.tokenizer is None)
    if a.seed is not None:
        torch.manual_seed(a.seed)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    if enc["input_ids"].shape[1] == 0:
        raise CLIError("the prompt is empty after tokenization")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    sample = not a.greedy and a.temperature > 0
    kwargs: dict[str, Any] = dict(
        max_new_tokens=a.max_new_tokens, do_sample=sample, repetition_penalty=a.repetition_penalty,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    if sample:
        kwargs.update(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p)
    streamer = None if a.no_stream else TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        out = model.generate(**enc, streamer=streamer, **kwargs)
    if a.no_stream:
        text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        print(text, flush=True)
    return 0


def _passthrough(cmd: str, argv: list[str]) -> int:
    import importlib

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    extras = f"`spikegpt {cmd}` needs the training extras (pip install 'spikegpt[train]')"
    try:
        module = importlib.import_module(PASSTHROUGH[cmd])
    except ImportError as e:
        raise CLIError(f"{extras}: {e}") from e
    prog = sys.argv[0]
    sys.argv[0] = f"spikegpt {cmd}"  # argparse names the program after argv[0]
    try:
        result = module.main(argv)
    except ModuleNotFoundError as e:
        if e.name in TRAIN_EXTRAS:
            raise CLIError(f"{extras}: {e}") from e
        raise
    finally:
        sys.argv[0] = prog
    return 130 if isinstance(result, dict) and result.get("interrupted") else 0


def cmd_convert(a: argparse.Namespace) -> int:
    import torch

    from spikegpt.interop import hub, original

    overrides: dict[str, Any] = {}
    for item in a.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--set takes KEY=VALUE, got {item!r}")
        import yaml

        overrides[key.strip()] = yaml.safe_load(value)
    out = Path(a.out_dir)
    if out.exists() and any(out.iterdir()) and not a.overwrite:
        raise CLIError(f"{out} exists and is not empty (pass --overwrite)")
    tok = _load_tokenizer(a.tokenizer) if a.tokenizer else None
    if tok is not None:
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(tok, name, None) is not None:
                overrides.setdefault(name, getattr(tok, name))
    dtype = None if a.dtype == "auto" else getattr(torch, a.dtype)
    if a.source_format == "rwkv":
        from spikegpt.interop.rwkv import from_rwkv

        model = from_rwkv(a.source, dtype=dtype, **overrides)
    else:
        model = original.from_original(a.source, dtype=dtype, **overrides)
    if tok is not None and model.config.vocab_size < len(tok):
        logger.warning("the tokenizer has %d tokens but the model only %d", len(tok), model.config.vocab_size)
    what = "an original SpikeGPT checkpoint" if a.source_format == "original" else "an RWKV-4 checkpoint"
    hub.save_with_card(
        model, out, tokenizer=tok,
        description=f"Converted from {what} ({Path(a.source).name}) with `spikegpt convert`.",
    )
    print(f"wrote {out} ({', '.join(sorted(os.listdir(out)))})")
    return 0


def cmd_energy(a: argparse.Namespace) -> int:
    from spikegpt.tools.energy import EnergyCosts, energy_report, format_table

    model, path = _load_model(a.model, a.device, a.dtype, a.trust_remote_code)
    tok = _load_tokenizer(a.tokenizer or path, defaulted=a.tokenizer is None)
    ids = _encode(tok, _read_text(a.text), a.max_tokens)
    costs = EnergyCosts(mac=a.mac_pj, ac=a.ac_pj, mul=a.mul_pj, add=a.add_pj, special=a.special_pj)
    report = energy_report(
        model, [ids], window=a.window, context=a.context, costs=costs, num_heads=a.heads,
        assumed_rate=a.assumed_rate, progress=not a.no_progress,
    )
    report["model"]["name"] = a.model
    report["text"] = a.text
    print(format_table(report))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {a.json}")
    return 0


def cmd_spikes(a: argparse.Namespace) -> int:
    from spikegpt.tools.plot import record_spikes, save_firing_heatmap, save_raster

    if (a.text is None) == (a.text_file is None):
        raise CLIError("give the text with exactly one of --text STRING or --text-file FILE")
    text = a.text if a.text is not None else _read_text(a.text_file)
    model, path = _load_model(a.model, a.device, a.dtype, a.trust_remote_code)
    tok = _load_tokenizer(a.tokenizer or path, defaulted=a.tokenizer is None)
    ids = _encode(tok, text, a.max_tokens)
    L = model.config.num_hidden_layers
    layers = a.layers if a.layers else sorted({0, L // 3, (2 * L) // 3, L - 1})
    bad = [l for l in layers if not 0 <= l < L]
    if bad:
        raise CLIError(f"--layers {bad} out of range: the model has layers 0..{L - 1}")
    spikes = record_spikes(model, ids)
    tokens = [tok.decode([i]) for i in ids]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    raster = save_raster(spikes, out / "raster.png", layers=layers, tokens=tokens, max_neurons=a.max_neurons)
    heat = save_firing_heatmap(spikes, out / "firing_rates.png", tokens=tokens)
    rates = {k: float(v.mean()) for k, v in spikes.items()}
    (out / "firing_rates.json").write_text(
        json.dumps({"tokens": tokens, "firing_rates": rates, "per_token": {k: v.mean(1).tolist() for k, v in
                                                                           spikes.items()}}, indent=1) + "\n",
        encoding="utf-8",
    )
    print(f"{len(ids)} tokens; mean firing rate {sum(rates.values()) / len(rates):.4f}")
    print(f"wrote {raster}, {heat}, {out / 'firing_rates.json'}")
    return 0


# ------------------------------------------------------------------------------------------------- parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory, training run directory, or Hub id")
    p.add_argument("--tokenizer", help="tokenizer directory or Hub id (default: the model's own)")
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float32 on CPU, bfloat16 on GPU")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="load a model that needs remote code (not needed for SpikeGPT models)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``spikegpt`` command (``eval`` and ``train`` take their scripts' options)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="spikegpt", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("generate", help="generate text (streams to stdout)", formatter_class=fmt,
                       description="Continue a prompt (from the argument, or stdin when omitted or '-').")
    _add_model_args(p)
    p.add_argument("prompt", nargs="?", help="the prompt; read from stdin when omitted or '-'")
    p.add_argument("--max-new-tokens", type=_positive, default=64)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (default: sampling)")
    p.add_argument("--temperature", type=_temperature, default=0.8, help="> 0; 0 means greedy (as --greedy)")
    p.add_argument("--top-k", type=_top_k, default=50, help="sample from the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=_top_p, default=0.95, help="nucleus sampling mass, in (0, 1]")
    p.add_argument("--repetition-penalty", type=_repetition_penalty, default=1.0, help="> 0 (1: none)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-stream", action="store_true", help="print the text once at the end")
    p.set_defaults(func=cmd_generate)

    sub.add_parser("train", add_help=False, help="pretrain from a YAML recipe (spikegpt.train.pretrain; see "
                   "`spikegpt train --help`)")
    sub.add_parser("eval", add_help=False, help="loss / perplexity / bits per character on text "
                   "(spikegpt.train.evaluate; see `spikegpt eval --help`)")
    sub.add_parser("prepare", add_help=False, help="tokenize a recipe's corpus once into memory-mapped shards "
                   "(spikegpt.train.prepare; see `spikegpt prepare --help`)")

    p = sub.add_parser(
        "convert", help="convert an original SpikeGPT (or RWKV-4) checkpoint to a model directory", formatter_class=fmt,
        description="Convert a checkpoint to a save_pretrained directory (safetensors, config with auto_map, remote "
                    "code, model card, and the tokenizer when given).\n\n"
                    "  spikegpt convert ORIGINAL.pth OUT_DIR [--tokenizer NAME_OR_PATH]\n"
                    "  spikegpt convert --from rwkv RWKV-4.pth OUT_DIR [--tokenizer NAME_OR_PATH]",
    )
    p.add_argument("source", help="checkpoint file (.pth)")
    p.add_argument("out_dir", help="output directory")
    p.add_argument("--from", dest="source_format", default="original", choices=["original", "rwkv"],
                   help="checkpoint layout (default: original SpikeGPT)")
    p.add_argument("--tokenizer", help="tokenizer to save with the model (directory or Hub id)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="parameter dtype (auto: the checkpoint's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config setting, e.g. --set spiking=false --set eos_token_id=0 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("energy", help="operation and energy estimate from firing rates on text", formatter_class=fmt,
                       description="Count operations by kind (MAC / accumulate / elementwise) from firing rates "
                                   "measured on text, price them, and compare with a same-size transformer "
                                   "(see spikegpt.tools.energy).")
    _add_model_args(p)
    p.add_argument("--text", required=True, help="text file, '-' for stdin, or builtin:python-docs")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens of the text to run (0: all)")
    p.add_argument("--window", type=_positive, default=None, help="tokens per forward (default: context_length)")
    p.add_argument("--context", type=_positive, default=None,
                   help="transformer context for the comparison (default: the model's context_length)")
    p.add_argument("--heads", type=_positive, default=None, help="transformer heads (default: hidden_size // 64)")
    p.add_argument("--mac-pj", type=float, default=4.6, help="energy per multiply-accumulate (pJ)")
    p.add_argument("--ac-pj", type=float, default=0.9, help="energy per accumulate (pJ)")
    p.add_argument("--mul-pj", type=float, default=3.7, help="energy per elementwise multiply (pJ)")
    p.add_argument("--add-pj", type=float, default=0.9, help="energy per elementwise add / compare (pJ)")
    p.add_argument("--special-pj", type=float, default=4.6, help="energy per exp / sigmoid / divide / rsqrt (pJ)")
    p.add_argument("--assumed-rate", type=float, default=0.15, help="firing rate of the paper-style figure")
    p.add_argument("--json", help="also write the full report as JSON to this file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_energy)

    p = sub.add_parser("spikes", help="raster and firing-rate heatmap (PNG) of a model's spikes on text",
                       formatter_class=fmt)
    _add_model_args(p)
    p.add_argument("--text", help="the text to run")
    p.add_argument("--text-file", help="read the text from this file ('-' for stdin)")
    p.add_argument("--layers", type=_int_list, default=None,
                   help="layers for the raster, e.g. 0,3 (default: first, last and two between)")
    p.add_argument("--max-tokens", type=_positive, default=128)
    p.add_argument("--max-neurons", type=_positive, default=256, help="neurons shown per raster panel")
    p.add_argument("--out", default="spikes", help="output directory (default: ./spikes)")
    p.set_defaults(func=cmd_spikes)
    return parser


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if isinstance(e, (CLIError, ValueError, FileNotFoundError)) else f"{type(e).__name__}: {msg}"


def main(argv: list[str] | None = None) -> int:
    """Run the ``spikegpt`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("SPIKEGPT_DEBUG", "") not in ("", "0")
    try:
        if argv and argv[0] in PASSTHROUGH:
            return _passthrough(argv[0], argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("spikegpt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"spikegpt: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
