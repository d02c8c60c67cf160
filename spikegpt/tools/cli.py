"""The ``spikegpt`` command line.

    spikegpt generate MODEL "Once upon a time" --max-new-tokens 100 --temperature 0.8 --top-p 0.95
    echo "Once upon a time" | spikegpt generate MODEL --greedy
    spikegpt generate MODEL "Chapter 1." --state-out story.safetensors     (then continue it:)
    spikegpt generate MODEL " Chapter 2." --state-in story.safetensors --state-out story.safetensors --overwrite
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
# quantization.SCHEMES (a test checks)
QUANTIZE_SCHEMES = ("fp32", "bf16", "int8", "int4", "int8-dynamic", "spike-int8")


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


def _check_state_paths(a: argparse.Namespace):
    """Fail fast, before the model loads: the --state-in file's metadata (returned), a --state-out that can be
    written."""
    from spikegpt.state import SpikeGPTState

    info = None
    if a.state_in is not None:
        try:
            info = SpikeGPTState.read_info(a.state_in)
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(f"--state-in: {e}") from None
        if info.batch_size != 1:
            raise CLIError(f"--state-in {a.state_in} holds {info.batch_size} rows; generate continues one")
    if a.state_out is not None:
        out = Path(a.state_out).expanduser()
        if out.is_dir():
            raise CLIError(f"--state-out {a.state_out} is a directory (give a file name)")
        if not out.parent.is_dir():
            raise CLIError(f"--state-out {a.state_out}: directory {out.parent} does not exist")
        if out.exists() and not a.overwrite:
            raise CLIError(f"--state-out {a.state_out} exists (pass --overwrite to replace it)")
    return info


def _quantize(model, scheme: str):
    """``spikegpt.interop.quantization.quantize(model, scheme)``, imported only when asked for."""
    try:
        from spikegpt.interop.quantization import quantize
    except ImportError as e:
        raise CLIError(f"--quantize {scheme} needs spikegpt.interop.quantization and torchao "
                       f"(pip install 'spikegpt[deploy]'): {e}") from e
    try:
        return quantize(model, scheme)
    except ImportError as e:
        raise CLIError(f"--quantize {scheme} needs torchao (pip install 'spikegpt[deploy]'): {e}") from e
    except ValueError as e:  # a scheme this device or model cannot take
        raise CLIError(f"--quantize {scheme}: {e}") from e


def _load_state_in(a: argparse.Namespace, info, model):
    """The --state-in state for ``model`` (its config and dtype checked), on the model's device."""
    from spikegpt.state import SpikeGPTState

    dtype = model.get_input_embeddings().weight.dtype
    if info.dtype != dtype:
        how = f" (--quantize {a.quantize})" if a.quantize else ""
        raise CLIError(
            f"--state-in {a.state_in} was made by a {str(info.dtype).removeprefix('torch.')} model but this one runs "
            f"in {str(dtype).removeprefix('torch.')}{how}: a state continues only the dtype that made it "
            f"(pass --dtype {str(info.dtype).removeprefix('torch.')})"
        )
    try:
        state = SpikeGPTState.load(a.state_in, config=model.config, dtype=dtype, device=model.device)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(f"--state-in: {e}") from None
    made_with = info.extra.get("quantize", "none")
    # bf16 is the bf16 model, which the dtype check has matched; fp32 is the fp32 weights in another memory layout
    weights = {"none": "none", "bf16": "none", "fp32": "none"}
    if weights.get(made_with, made_with) != weights.get(a.quantize or "none", a.quantize):
        logger.warning("--state-in %s was made with --quantize %s, this run uses %s: the continuation is close to, "
                       "not the same as, one run of the whole text", a.state_in, made_with, a.quantize or "none")
    return state


class _StateRecorder:
    """Keeps the states of the model's last two forwards, with how many tokens all its forwards have consumed by
    then, so that the state after exactly the generated text can be rebuilt (see :meth:`state_after`). Only
    outermost calls count (a forward that calls the model again inside, row by row, is one call)."""

    def __init__(self, model):
        self.model = model
        self.consumed = 0
        self.depth = 0
        self.records: list[tuple[int, Any]] = []

    def __enter__(self):
        self.handles = [self.model.register_forward_pre_hook(self._enter),
                        self.model.register_forward_hook(self._hook, with_kwargs=True, always_call=True)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def _enter(self, module, args):
        self.depth += 1

    def _hook(self, module, args, kwargs, out):
        self.depth -= 1
        if self.depth:
            return
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs["inputs_embeds"]
        self.consumed += x.shape[1]
        self.records = [*self.records[-1:], (self.consumed, getattr(out, "state", None))]

    def state_after(self, ids, start_state):
        """The state after ``ids`` (1, n), all the tokens since ``start_state``: the last recorded state that
        covers no more than them, continued over the rest (generation samples its last token without running it;
        a deferred stop check may run one step too many)."""
        done, state = 0, start_state
        for count, st in self.records:
            if count <= ids.shape[1] and st is not None:
                done, state = count, st
        if done < ids.shape[1]:
            state = self.model(input_ids=ids[:, done:], state=state, use_cache=True).state
        return state


class _Progress:
    """A generate() streamer: passes the tokens on to ``inner`` (the text streamer, or None), ticks a tqdm bar
    over the generated tokens, and times the prefill and the decoding."""

    def __init__(self, inner, total: int, show: bool):
        import time

        from tqdm.auto import tqdm

        self.clock = time.perf_counter
        self.inner = inner
        self.bar = tqdm(total=total, unit="tok", desc="generating", file=sys.stderr, disable=not show, leave=False,
                        dynamic_ncols=True)
        self.prompt_seen = False
        self.start = self.first = self.end_time = None
        self.generated = 0

    def begin(self):
        self.start = self.clock()

    def put(self, value):
        if not self.prompt_seen:  # generate() passes the prompt first
            self.prompt_seen = True
            if self.start is None:
                self.begin()
        else:
            if self.first is None:
                self.first = self.clock()
            n = value.numel()
            self.generated += n
            self.bar.update(n)
        if self.inner is not None:
            self.inner.put(value)

    def end(self):
        self.end_time = self.clock()
        self.bar.close()
        if self.inner is not None:
            self.inner.end()

    def summary(self, prompt_tokens: int) -> str:
        """``generated N tokens in S s (T tok/s; prefill P tok/s)``: S from the start of the prefill to the last
        token; T over the decoding steps after the first token; P the prompt's tokens over the time to the first
        token."""
        end = self.end_time if self.end_time is not None else self.clock()
        first = self.first if self.first is not None else end
        total, n = end - self.start, self.generated
        decode = (n - 1) / (end - first) if n > 1 and end > first else (n / total if total > 0 else math.inf)
        prefill = prompt_tokens / (first - self.start) if first > self.start else math.inf
        return f"generated {n} tokens in {total:.2f} s ({decode:.1f} tok/s; prefill {prefill:.1f} tok/s)"


def _show_progress(a: argparse.Namespace) -> bool:
    """A progress bar only on a terminal, and not where it would cut into text streamed to the same terminal."""
    if a.quiet or not sys.stderr.isatty():
        return False
    return a.no_stream or not sys.stdout.isatty()


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
    info = _check_state_paths(a)
    dtype = a.dtype
    if info is not None and dtype == "auto":
        dtype = str(info.dtype).removeprefix("torch.")  # the state's dtype
    model, path = _load_model(a.model, a.device, dtype, a.trust_remote_code)
    if a.quantize:
        model = _quantize(model, a.quantize)
    tok = _load_tokenizer(a.tokenizer or path, defaulted=a.tokenizer is None)
    state = _load_state_in(a, info, model) if info is not None else None
    if a.seed is not None:
        torch.manual_seed(a.seed)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    if enc["input_ids"].shape[1] == 0:
        raise CLIError("the prompt is empty after tokenization")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    prompt_len = enc["input_ids"].shape[1]
    sample = not a.greedy and a.temperature > 0
    kwargs: dict[str, Any] = dict(
        max_new_tokens=a.max_new_tokens, do_sample=sample, repetition_penalty=a.repetition_penalty,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    if sample:
        kwargs.update(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p)
    if a.compile:
        from transformers import CompileConfig

        logger.info("--compile: the decode steps run torch.compile'd (compiled at the first step)")
        kwargs["compile_config"] = CompileConfig(fullgraph=True, mode="default")
    text_streamer = None if a.no_stream else TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    progress = _Progress(text_streamer, a.max_new_tokens, _show_progress(a))
    recorder = _StateRecorder(model)
    with torch.no_grad():
        with recorder:
            progress.begin()
            out = model.generate(**enc, state=state, streamer=progress, **kwargs)  # the prompt from state
        final = recorder.state_after(out, state) if a.state_out is not None else None
    if a.no_stream:
        text = tok.decode(out[0, prompt_len:], skip_special_tokens=True)
        print(text, flush=True)
    sys.stdout.flush()
    if final is not None:
        before = 0 if info is None else info.tokens
        tokens = before + out.shape[1] if isinstance(before, int) else None
        try:
            final.save(Path(a.state_out).expanduser(), config=model.config, tokens=tokens, overwrite=a.overwrite,
                       metadata={"quantize": a.quantize or "none"})
        except (FileExistsError, FileNotFoundError, IsADirectoryError) as e:
            raise CLIError(f"--state-out: {e}") from None
    if not a.quiet:
        print(progress.summary(prompt_len), file=sys.stderr, flush=True)
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
    p.add_argument("--state-in", metavar="PATH",
                   help="continue from a saved state: the prompt is read after the text the state covers (the "
                        "model must be the one that made it; --dtype auto takes the state's dtype)")
    p.add_argument("--state-out", metavar="PATH",
                   help="save the state after the prompt and the generated text (safetensors, with the token count)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --state-out file")
    p.add_argument("--quantize", choices=QUANTIZE_SCHEMES, default=None,
                   help="quantize the model first (torchao; pip install 'spikegpt[deploy]'); fp32 rounds nothing and "
                        "stores the weights transposed, faster for CPU decoding; int8 and int4 are weight-only,"
                        " int8-dynamic also rounds each Linear input to int8 per token (CPU); spike-int8 "
                        "takes a spike-driven model (spike_inputs other than none): exact int8 products of its counts")
    p.add_argument("--compile", action="store_true",
                   help="compile the decode steps with torch.compile (generate's compile_config): faster steps after "
                        "a compilation of seconds to a minute at the first one, which the speed line counts")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no speed line on stderr (the bar shows only on a terminal, and not "
                        "while text streams to that terminal)")
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

    p = sub.add_parser("energy", help="operation and energy estimate from spikes measured on text", formatter_class=fmt,
                       description="Count operations by kind (MAC / accumulate / elementwise) from firing rates "
                                   "and, for a spike-driven model (spike_inputs), the spike counts read by every "
                                   "Linear layer, measured on text; price them, and compare with a same-size "
                                   "transformer (see spikegpt.tools.energy).")
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
