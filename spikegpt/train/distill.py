"""Shadow training: distil a frozen non-spiking teacher into a spiking student with the same weights.

The teacher is a non-spiking model -- a pretrained RWKV-4 (Hugging Face ``RwkvForCausalLM`` directory or Hub
id, or an original ``.pth``) or a SpikeGPT model trained with ``spiking: false`` -- and the student is the
same weights with spiking switched on (binary embedding, a LIF on every branch). The student minimises

    loss = ce_weight * CE(student, next tokens) + kl_weight * T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )

with the KL summed over the vocabulary and averaged over every position of the batch (z_t, z_s: teacher and
student logits; the T^2 keeps the gradient scale of the soft term independent of T, as in Hinton et al.).
Training runs through the ordinary pretraining entry point (data streaming, accelerate, checkpoints and
resume all apply); a recipe selects this objective with ``objective: distill`` (see
``configs/distill-tiny.yaml`` and ``docs/shadow_training.md``). Two commands::

    python -m spikegpt.train.distill --config configs/distill-tiny.yaml   # writes the student into init_from
    spikegpt train --config configs/distill-tiny.yaml                    # distils it

The first converts the teacher (``objective_args.teacher``) into a spiking student saved at the recipe's
``init_from`` (with the teacher's tokenizer), optionally after the LIF input calibration of
:func:`spikegpt.interop.rwkv.calibrate_lif_scales` on ``objective_args.calibrate_batches`` training batches.

``objective_args``: ``teacher`` (required), ``temperature`` (2.0), ``ce_weight`` (1.0), ``kl_weight`` (1.0),
``anneal_steps`` (0: off; else the student's LIF outputs and binary embedding are blended with their
real-valued inputs, ``lambda * spikes + (1 - lambda) * input``, lambda rising linearly from 0 to 1 over that
many optimizer steps, in training only -- validation always runs the true spiking model),
``calibrate_batches`` (0; read by the preparation step only), ``spike_penalty`` (0: off; for a spike-driven
student, ``spike_inputs`` other than ``"none"``: adds ``spike_penalty`` times the accumulate-weighted mean spike count
of the Linear inputs, :class:`SpikeCountPenalty`, the quantity that sets the honest energy ratio).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run by its path: keep the modules beside this file from shadowing others

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from spikegpt import SpikeGPTForCausalLM
from spikegpt.recording import spike_sites
from spikegpt.spike_coding import SpikeEncoder
from spikegpt.train.objectives import register_objective

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "teacher": None, "temperature": 2.0, "ce_weight": 1.0, "kl_weight": 1.0, "anneal_steps": 0,
    "calibrate_batches": 0, "spike_penalty": 0.0,
}


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean over positions of KL(softmax(z_t / T) || softmax(z_s / T))`` in fp32.

    student_logits, teacher_logits: (B, T, V) (or (N, V)); the KL is summed over V and averaged over the
    B * T positions. Returns a scalar; gradients flow into the student logits only.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits differ in shape: "
            f"{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    V = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, V).float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.detach().reshape(-1, V).float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def is_spikegpt_dir(src: str | os.PathLike) -> bool:
    """True for a local directory holding a saved SpikeGPT model (``config.json`` with model_type spikegpt)."""
    cfg = Path(src) / "config.json"
    if not cfg.is_file():
        return False
    return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "spikegpt"


def load_model(src: str | os.PathLike, spiking: bool, **overrides: Any) -> SpikeGPTForCausalLM:
    """A SpikeGPT model from ``src`` with ``spiking`` set: a saved SpikeGPT directory (its weights, this
    spiking setting), or any RWKV-4 source that :func:`spikegpt.interop.rwkv.from_rwkv` takes. fp32 weights."""
    if is_spikegpt_dir(src):
        model = SpikeGPTForCausalLM.from_pretrained(src, spiking=spiking, dtype=torch.float32, **overrides)
    else:
        from spikegpt.interop.rwkv import from_rwkv

        model = from_rwkv(os.fspath(src), spiking=spiking, dtype=torch.float32, **overrides)
    if model.config.spiking != spiking:
        raise ValueError(f"could not set spiking={spiking} on the model from {src}")
    return model


def load_teacher(src: str | os.PathLike) -> SpikeGPTForCausalLM:
    """The frozen non-spiking teacher (eval mode, no gradients) from ``src`` (see :func:`load_model`)."""
    teacher = load_model(src, spiking=False).eval()
    teacher.requires_grad_(False)
    return teacher


class SpikeAnnealer:
    """Blends a spiking model's spikes with their real-valued inputs while it trains: every spike site of
    :func:`spikegpt.recording.spike_sites` (the binary embedding and each LIF) outputs
    ``lam * spikes + (1 - lam) * input`` -- the embedding ``lam * H(E) + (1 - lam) * E``; a Linear input's spike
    code (``spike_inputs``) makes its Linear read ``lam * vth * c + (1 - lam) * x``. Forward hooks only
    (no parameters, nothing saved); inactive in eval mode and once ``lam`` reaches 1. ``ValueError`` for a
    model without spike sites."""

    def __init__(self, model: SpikeGPTForCausalLM):
        sites = spike_sites(model)
        if not sites:
            raise ValueError(f"{type(model).__name__} has no spike sites to anneal")
        self.lam = 1.0
        self.handles = [m.register_forward_hook(self._hook) for m in sites.values()]

    def _hook(self, module, args, out):
        if not (module.training and self.lam < 1.0):
            return None
        if isinstance(module, SpikeEncoder):  # a Linear input's code (c, vth, mem), read as vth * c
            c, vth, mem = out
            return self.lam * c + (1.0 - self.lam) * args[0] / vth, vth, mem
        if isinstance(out, tuple):  # a LIF: (spikes, membrane)
            return (self.lam * out[0] + (1.0 - self.lam) * args[0], *out[1:])
        return self.lam * out + (1.0 - self.lam) * args[0]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _resume_step(config: Any) -> int:
    """The optimizer step the run continues from (0 for a fresh run), as the trainer resolves ``resume``."""
    from spikegpt.train.checkpoint import latest_checkpoint

    value = (config.resume or "").strip()
    if value.lower() in ("", "false", "no", "none", "null"):
        return 0
    path = latest_checkpoint(config.output_dir) if value.lower() in ("true", "yes", "latest") else Path(value)
    m = re.match(r"^checkpoint-(\d+)$", Path(path).name) if path is not None else None
    return int(m.group(1)) if m else 0


class SpikeCountPenalty:
    """The accumulate-weighted mean spike count of a spike-driven model's Linear inputs over its last forward:
    ``sum_sites out_features * mean|c| / sum_sites out_features`` -- the accumulates per token of all coded Linear
    layers over their dense multiply-accumulates, so the honest energy ratio falls as it rises. Differentiable
    through the codes' surrogates (forward hooks on every :class:`~spikegpt.spike_coding.SpikeEncoder`, training
    mode only). ``ValueError`` for a model without spike codes."""

    def __init__(self, model: SpikeGPTForCausalLM):
        self.weights: dict[torch.nn.Module, int] = {}
        for module in model.modules():
            codes = getattr(module, "codes", None)
            if isinstance(codes, torch.nn.ModuleDict):
                self.weights.update({enc: getattr(module, name).out_features for name, enc in codes.items()})
        if getattr(model, "head_code", None) is not None:
            self.weights[model.head_code] = model.head.out_features
        if not self.weights:
            raise ValueError("spike_penalty needs a spike-driven student (config.spike_inputs other than 'none')")
        self.total = float(sum(self.weights.values()))
        self.terms: list[torch.Tensor] = []
        self.handles = [enc.register_forward_hook(self._hook) for enc in self.weights]

    def _hook(self, module, args, out):
        if module.training:
            self.terms.append(out[0].abs().mean() * (self.weights[module] / self.total))

    def value(self) -> torch.Tensor:
        """The penalty of the forwards since the last call (their sum), and a fresh start."""
        terms, self.terms = self.terms, []
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@register_objective("distill")
class DistillationObjective:
    """``ce_weight * CE + kl_weight * T^2 * KL(teacher || student)`` against a frozen non-spiking teacher.

    Built by the trainer from ``config.objective_args`` (see the module docstring); called as
    ``objective(model, {"input_ids": (B, T)})`` per micro-batch. Logs ``ce``, ``kl``, ``teacher_ce`` (and
    ``spike_lambda`` while annealing).
    """

    def __init__(self, config: Any, accelerator: Any = None):
        args = dict(config.objective_args)
        unknown = sorted(set(args) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown objective_args for 'distill': {unknown}; known: {sorted(DEFAULTS)}")
        args = {**DEFAULTS, **args}
        if not args["teacher"]:
            raise ValueError("objective 'distill' needs objective_args.teacher (a non-spiking model: a SpikeGPT "
                             "directory, an RWKV-4 directory / Hub id, or an RWKV-4 .pth)")
        self.temperature = float(args["temperature"])
        self.ce_weight, self.kl_weight = float(args["ce_weight"]), float(args["kl_weight"])
        self.anneal_steps = int(args["anneal_steps"])
        if self.temperature <= 0:
            raise ValueError(f"objective_args.temperature must be > 0, got {self.temperature}")
        if self.ce_weight < 0 or self.kl_weight < 0 or self.ce_weight + self.kl_weight == 0:
            raise ValueError(f"ce_weight and kl_weight must be >= 0 and not both 0, got {self.ce_weight}, "
                             f"{self.kl_weight}")
        if self.anneal_steps < 0:
            raise ValueError(f"objective_args.anneal_steps must be >= 0, got {self.anneal_steps}")
        self.spike_penalty = float(args["spike_penalty"])
        if not self.spike_penalty >= 0:
            raise ValueError(f"objective_args.spike_penalty must be >= 0, got {self.spike_penalty}")
        self.penalty: SpikeCountPenalty | None = None
        self.accelerator = accelerator
        device = accelerator.device if accelerator is not None else torch.device("cpu")
        self.teacher = load_teacher(args["teacher"]).to(device)
        self.grad_accum = int(getattr(config, "grad_accum_steps", 1))
        self.calls = _resume_step(config) * self.grad_accum if self.anneal_steps else 0
        self.annealer: SpikeAnnealer | None = None
        self._checked = False

    def _unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model) if self.accelerator is not None else model

    def _first_call(self, model: torch.nn.Module) -> None:
        student = self._unwrap(model)
        if not getattr(student.config, "spiking", False):
            raise ValueError("the distillation student must be spiking: prepare it with "
                             "`python -m spikegpt.train.distill --config RECIPE` (or set spiking: true in its config)")
        if student.config.vocab_size != self.teacher.config.vocab_size:
            raise ValueError(f"student vocabulary {student.config.vocab_size} != teacher vocabulary "
                             f"{self.teacher.config.vocab_size}")
        if self.anneal_steps:
            self.annealer = SpikeAnnealer(student)
        if self.spike_penalty:
            self.penalty = SpikeCountPenalty(student)
        self._checked = True

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if not self._checked:
            self._first_call(model)
        extra: dict[str, float] = {}
        if self.annealer is not None:
            step = self.calls // self.grad_accum
            self.annealer.lam = min(1.0, step / self.anneal_steps)
            extra["spike_lambda"] = self.annealer.lam
        self.calls += 1
        ids = batch["input_ids"]
        autocast = self.accelerator.autocast() if self.accelerator is not None else torch.autocast("cpu", enabled=False)
        with torch.no_grad(), autocast:
            t_logits = self.teacher(input_ids=ids, use_cache=False).logits
        out = model(input_ids=ids, labels=ids, use_cache=False)
        kl = distillation_kl(out.logits, t_logits, self.temperature)
        loss = self.ce_weight * out.loss + self.kl_weight * kl
        if self.penalty is not None:
            counts = self.penalty.value()
            loss = loss + self.spike_penalty * counts
            extra["input_spikes"] = float(counts.detach())
        with torch.no_grad():
            V = t_logits.shape[-1]
            t_ce = F.cross_entropy(t_logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1))
        extra.update(ce=float(out.loss.detach()), kl=float(kl.detach()), teacher_ce=float(t_ce))
        return loss, extra


# ----- preparing the student -----


def calibration_batches(config: Any, tokenizer: Any, n: int) -> list[torch.Tensor]:
    """``n`` training batches ((batch_size, block) token ids) of the recipe's data, as the trainer cuts them."""
    from spikegpt.train.data import BlockPacker, TextSource
    from spikegpt.train.tokenization import encoder

    source = TextSource(config.data, data_config=config.data_config, split=config.data_split,
                        revision=config.data_revision, text_field=config.text_field, text_unit=config.text_unit)
    block = int(config.context_length or config.model.get("context_length") or 128)
    packer = BlockPacker(source, encoder(tokenizer), int(tokenizer.eos_token_id), block, seed=config.seed,
                         val_fraction=config.val_fraction, shuffle_buffer=config.shuffle_buffer)
    return [packer.next_batch(config.batch_size) for _ in range(n)]


def prepare_student(config: Any, force: bool = False) -> Path:
    """Write the spiking student of a distillation recipe into its ``init_from`` directory.

    The teacher (``objective_args.teacher``) is loaded with spiking on (same weights), calibrated on
    ``objective_args.calibrate_batches`` batches when > 0, and saved with the tokenizer (the teacher's, or the
    recipe's ``tokenizer`` when that names a Hub tokenizer or directory). Neuron settings in the recipe's
    ``model`` section (tau, threshold, ..., and ``spike_inputs`` for a spike-driven student) are applied. Returns
    the directory.
    """
    from transformers import AutoTokenizer

    from spikegpt.interop.rwkv import calibrate_lif_scales, firing_rates

    if config.objective != "distill":
        raise ValueError(f"the recipe's objective is {config.objective!r}, not 'distill'")
    args = {**DEFAULTS, **config.objective_args}
    if not args["teacher"]:
        raise ValueError("the recipe has no objective_args.teacher")
    if not config.init_from:
        raise ValueError("the recipe has no init_from: the directory the student is written to")
    out = Path(config.init_from)
    if (out / "config.json").exists() and not force:
        raise ValueError(f"{out} already holds a model; pass --force to replace it")
    teacher_src = args["teacher"]
    neuron = {k: v for k, v in config.model.items() if k in (
        "tau", "threshold", "v_reset", "detach_reset", "surrogate", "surrogate_alpha", "dropout", "l2wrap_coef",
        "spike_inputs", "spike_gain")}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    student = load_model(teacher_src, spiking=True, **neuron).to(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(teacher_src)
    except (OSError, ValueError):
        if config.tokenizer in ("bpe", "byte", "char"):
            raise ValueError(f"no tokenizer in {teacher_src}: set the recipe's tokenizer to the teacher's "
                             "(a Hub name or directory)") from None
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
    n = int(args["calibrate_batches"])
    batches = calibration_batches(config, tokenizer, max(n, 1))
    if n > 0:
        teacher = load_teacher(teacher_src).to(device)
        gains = calibrate_lif_scales(student, teacher, batches)
        del teacher
        logger.info("calibrated %d LIF inputs: median gains %s", len(gains),
                    {k: round(float(v.median()), 3) for k, v in gains.items()})
    rates = firing_rates(student, batches[0].to(device))
    logger.info("student firing rates: %s", {k: round(v, 3) for k, v in rates.items()})
    out.mkdir(parents=True, exist_ok=True)
    student.cpu().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> Path:
    """``python -m spikegpt.train.distill --config RECIPE [--force] [--key value ...]``: prepare the student."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a distillation recipe (objective: distill)")
    parser.add_argument("--force", action="store_true", help="replace a student already in init_from")
    args, overrides = parser.parse_known_args(argv)
    from spikegpt.train.config import load_config

    config = load_config(args.config, overrides)
    out = prepare_student(config, force=args.force)
    print(json.dumps({"student": str(out), "teacher": str(config.objective_args.get("teacher"))}), flush=True)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    main()
