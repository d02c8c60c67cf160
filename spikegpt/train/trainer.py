"""The pretraining loop behind ``spikegpt train``: one process, torchrun ranks or ``accelerate launch``.

:func:`train` takes a :class:`~spikegpt.train.config.TrainConfig` and runs: data and tokenizer set-up,
model creation (or loading, to resume), Adam/AdamW with warmup + cosine decay, gradient accumulation and
clipping, bf16 autocast on GPUs, periodic validation / samples / checkpoints, and a final validation,
sample, checkpoint and model directory. It returns the final metrics. The schedule is
:mod:`spikegpt.train.schedule`; checkpoints, RNG states and the run directory's files are
:mod:`spikegpt.train.checkpoint`.

Resuming (``resume: latest`` or a checkpoint path) restores model, optimizer, scheduler, step, the RNG
states and the data position of every rank, so the loss curve continues exactly as without the
interruption (same number of processes required). SIGINT (Ctrl-C) and SIGTERM finish the current step,
save a checkpoint and return with ``interrupted: true``; a second signal aborts at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

import spikegpt
from spikegpt.train.checkpoint import (
    TRAINER_STATE,
    CheckpointError,
    checkpoint_path,
    clear_run_dir,
    list_checkpoints,
    prune_checkpoints,
    publish_model_dir,
    resolve_resume,
    rng_state,
    set_rng_state,
    truncate_metrics,
    verify_checkpoint,
    write_checkpoint,
)
from spikegpt.train.config import TrainConfig, save_config
from spikegpt.train.data import BlockPacker, TextSource, training_texts, validation_documents
from spikegpt.train.evaluation import EvalResult, build_streams, stream_nats
from spikegpt.train.metrics import MetricsLogger
from spikegpt.train.objectives import build_objective
from spikegpt.train.schedule import warmup_cosine
from spikegpt.train.tokenization import BUILT_TOKENIZERS, build_tokenizer, encoder

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]

CPU_PARAMETER_LIMIT = 50_000_000  # models above this size are meant to train on GPUs


def warn_if_large_on_cpu(num_parameters: int, device: torch.device | str) -> bool:
    """Log a warning when a model of more than :data:`CPU_PARAMETER_LIMIT` parameters is to train on a CPU
    ``device``; return whether it warned."""
    if torch.device(device).type != "cpu" or num_parameters <= CPU_PARAMETER_LIMIT:
        return False
    logger.warning(
        "training a model of %.1fM parameters on a CPU: a model of this size is meant for a GPU (a CPU takes "
        "hours to days); for a first run on a CPU use --config configs/tiny.yaml", num_parameters / 1e6,
    )
    return True


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute every block in the backward pass (transformers >= 5.24 calls it activation checkpointing)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:  # older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def parameter_checksum(model: torch.nn.Module) -> str:
    """SHA-256 over the bytes of every parameter, in name order (equal across ranks when in sync)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _StopSignal:
    """SIGINT/SIGTERM handler: the first signal asks the loop to save and stop, a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: saving a checkpoint after this step (send it again to abort)",
                       signal.Signals(signum).name)

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


@contextlib.contextmanager
def _quiet_saving():
    """No "Writing model shards" progress bar from save_pretrained (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class Trainer:
    """State and steps of one pretraining run (see :func:`train`)."""

    def __init__(self, config: TrainConfig, callbacks: Sequence[StepCallback] = ()):
        self.config = config
        self.callbacks = list(callbacks)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        # torchrun ranks on a machine without GPUs: accelerate forms the gloo group only when told cpu=True
        cpu_ranks = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(mixed_precision=_mixed_precision(config.mixed_precision), cpu=cpu_ranks)
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        self.output_dir = Path(config.output_dir)
        self.resume_from = resolve_resume(config.resume, config.output_dir)
        self._prepare_output_dir()
        set_seed(config.seed)

        self.source = TextSource(
            config.data, data_config=config.data_config, split=config.data_split, revision=config.data_revision,
            text_field=config.text_field, text_unit=config.text_unit,
        )
        self.tokenizer = self._load_tokenizer()
        self.encode = encoder(self.tokenizer)
        self.eot_id = int(self.tokenizer.eos_token_id)
        self.model = self._build_model()
        self.block_len = int(config.context_length or self.model.config.context_length)
        self.model.config.context_length = self.block_len
        self.packer = BlockPacker(
            self.source, self.encode, self.eot_id, self.block_len, seed=config.seed,
            val_fraction=config.val_fraction, shuffle_buffer=config.shuffle_buffer, rank=self.rank,
            world_size=self.world,
        )
        self.val_docs = validation_documents(
            self.source, config.seed, config.val_fraction, config.val_max_tokens, self.encode
        )
        if acc.is_main_process:
            logger.info(
                "data %s: %d validation documents (%d tokens), tokenizer %s with %d tokens",
                config.data, len(self.val_docs), sum(len(ids) for _, ids in self.val_docs), config.tokenizer,
                len(self.tokenizer),
            )

        self.optimizer = self._build_optimizer()
        min_ratio = config.min_lr / config.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, config.warmup_steps, config.max_steps, min_ratio)
        )
        self.objective = build_objective(config, acc)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.step = 0
        self._saved_step = -1
        self.tokens = 0
        self.train_time = 0.0
        if self.resume_from is not None:
            self._load_trainer_state(self.resume_from)
        self.metrics = None
        if acc.is_main_process:
            if self.resume_from is not None:
                truncate_metrics(self.output_dir / "metrics.jsonl", self.step)
            tb = self.output_dir / "tensorboard" if config.tensorboard else None
            self.metrics = MetricsLogger(self.output_dir / "metrics.jsonl", tensorboard_dir=tb)
        self.rank_log = None
        if config.debug_rank_log:
            self.rank_log = open(self.output_dir / f"rank-{self.rank}.jsonl", "a", encoding="utf-8")

    # ----- set-up -----

    def _prepare_output_dir(self) -> None:
        cfg, acc = self.config, self.accelerator
        existing = list_checkpoints(self.output_dir)
        if existing and self.resume_from is None:
            if not cfg.overwrite:
                raise ValueError(
                    f"output_dir {self.output_dir} already holds checkpoints (newest: {existing[-1][1].name}); "
                    "pass --resume to continue that run, --overwrite true to start afresh there, or choose "
                    "another --output_dir"
                )
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.resume_from is None:  # a fresh run: files of an earlier run here go (checkpoints only with
                clear_run_dir(self.output_dir)  # --overwrite, checked above)
            save_config(cfg, self.output_dir / "train_config.yaml")
        acc.wait_for_everyone()
        if self.resume_from is not None:
            verify_checkpoint(self.resume_from)

    def _load_tokenizer(self):
        cfg, acc = self.config, self.accelerator
        if self.resume_from is not None:
            return AutoTokenizer.from_pretrained(self.resume_from)
        if cfg.init_from is not None and cfg.tokenizer in BUILT_TOKENIZERS and cfg.tokenizer != "byte":
            return AutoTokenizer.from_pretrained(cfg.init_from)  # a retrained vocabulary would scramble the ids
        if cfg.tokenizer not in ("bpe", "char"):
            return build_tokenizer(cfg.tokenizer)
        tok_dir = self.output_dir / "tokenizer"
        with acc.main_process_first():  # trained once, on the main process; the other ranks load it
            if acc.is_main_process:
                t0 = time.perf_counter()
                texts = training_texts(self.source, cfg.seed, cfg.val_fraction, cfg.tokenizer_train_chars)
                tok = build_tokenizer(cfg.tokenizer, texts, cfg.tokenizer_vocab_size)
                tok.save_pretrained(tok_dir)
                logger.info("trained a %s tokenizer with %d tokens in %.1f s", cfg.tokenizer, len(tok),
                            time.perf_counter() - t0)
            else:
                tok = AutoTokenizer.from_pretrained(tok_dir)
        return tok

    def _build_model(self) -> torch.nn.Module:
        cfg = self.config
        if self.resume_from is not None:
            model = AutoModelForCausalLM.from_pretrained(self.resume_from)
        elif cfg.init_from is not None:
            model = AutoModelForCausalLM.from_pretrained(cfg.init_from)
        else:
            kwargs = dict(cfg.model)
            n_tok = len(self.tokenizer)
            vocab = kwargs.pop("vocab_size", None)
            if vocab is not None and vocab < n_tok:
                raise ValueError(f"model.vocab_size {vocab} is smaller than the tokenizer's {n_tok} tokens")
            kwargs.setdefault("eos_token_id", self.eot_id)
            kwargs.setdefault("bos_token_id", self.eot_id)
            if cfg.context_length is not None:
                kwargs["context_length"] = cfg.context_length
            model = spikegpt.SpikeGPTForCausalLM(spikegpt.SpikeGPTConfig(vocab_size=vocab or n_tok, **kwargs))
        if len(self.tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}"
            )
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        if self.accelerator.is_main_process:
            logger.info("model: %.2fM parameters, %s", model.num_parameters() / 1e6,
                        {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "spiking")})
            warn_if_large_on_cpu(model.num_parameters(), self.accelerator.device)
        return model

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        if cfg.optimizer == "adam":
            if cfg.weight_decay:
                raise ValueError("weight_decay needs optimizer: adamw (Adam's L2 penalty is not offered)")
            return torch.optim.Adam(self.model.parameters(), **kwargs)
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "emb" not in n]
        keep = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, **kwargs)

    # ----- checkpoints -----

    def _optimizer_state(self) -> dict[str, Any] | None:
        if self.accelerator.distributed_type == DistributedType.FSDP:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                self.model, self.optimizer.optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True),
            )
        return self.optimizer.state_dict()

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>`` (all ranks must call this) and keep the newest ``keep_checkpoints``."""
        acc, cfg = self.accelerator, self.config
        state_dict = acc.get_state_dict(self.model)
        optimizer_state = self._optimizer_state()
        rngs = gather_object([rng_state()]) if self.world > 1 else [rng_state()]
        positions = gather_object([self.packer.state_dict()]) if self.world > 1 else [self.packer.state_dict()]
        path = checkpoint_path(self.output_dir, self.step)
        if acc.is_main_process:
            trainer_state = {
                "step": self.step, "tokens": self.tokens, "train_time": self.train_time,
                "world_size": self.world, "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                "rng": rngs, "data": positions,
            }
            unwrapped = acc.unwrap_model(self.model)

            def write(tmp: Path) -> None:
                with _quiet_saving():
                    unwrapped.save_pretrained(tmp, state_dict=state_dict)
                self.tokenizer.save_pretrained(tmp)
                torch.save(trainer_state, tmp / TRAINER_STATE)
                save_config(cfg, tmp / "train_config.yaml")

            write_checkpoint(path, write)
            prune_checkpoints(self.output_dir, cfg.keep_checkpoints)
            logger.info("saved %s", path)
        acc.wait_for_everyone()
        self._saved_step = self.step
        return path

    def _load_trainer_state(self, path: Path) -> None:
        try:
            state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
        except Exception as e:  # a checksummed file that still fails to load
            raise CheckpointError(f"checkpoint {path} is corrupt: {TRAINER_STATE} cannot be read ({e})") from e
        if state["world_size"] != self.world:
            raise ValueError(
                f"checkpoint {path} was written by {state['world_size']} processes; resume it with the same "
                f"number (this run has {self.world}) so that every rank continues its own data stream"
            )
        if self.accelerator.distributed_type == DistributedType.FSDP:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.tokens, self.train_time = int(state["step"]), int(state["tokens"]), float(state["train_time"])
        self._saved_step = self.step
        self.packer.load_state_dict(state["data"][self.rank])
        set_rng_state(state["rng"][self.rank])
        if self.accelerator.is_main_process:
            logger.info("resumed from %s at step %d", path, self.step)

    def save_model_dir(self) -> None:
        """Write the final model, tokenizer and config into ``output_dir`` (loadable with from_pretrained)."""
        acc = self.accelerator
        state_dict = acc.get_state_dict(self.model)
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(self.model)

            def write(tmp: Path) -> None:
                with _quiet_saving():
                    unwrapped.save_pretrained(tmp, state_dict=state_dict)
                self.tokenizer.save_pretrained(tmp)
                save_config(self.config, tmp / "train_config.yaml")

            publish_model_dir(self.output_dir, write)
        acc.wait_for_everyone()

    # ----- evaluation -----

    def validate(self) -> EvalResult | None:
        """Loss / perplexity / bits per character on the held-out documents (shared out over the ranks)."""
        if not self.val_docs:
            return None
        acc = self.accelerator
        mine = self.val_docs[self.rank :: self.world]
        streams = build_streams(mine, self.eot_id, self.config.eval_batch_size) if mine else None
        model = self.model if acc.distributed_type == DistributedType.FSDP else acc.unwrap_model(self.model)
        nats, count = 0.0, 0
        if streams is not None:
            nats, count = stream_nats(model, streams.streams, self.block_len, self.config.eval_batch_size,
                                      device=acc.device, autocast=acc.autocast)
        totals = torch.tensor([nats, count, streams.characters if streams else 0, len(mine)], dtype=torch.float64,
                              device=acc.device)
        if self.world > 1:
            totals = acc.reduce(totals, reduction="sum")
        nats, count, chars, docs = totals.tolist()
        return EvalResult(nats=nats, tokens=int(count), characters=int(chars), documents=int(docs))

    def sample(self) -> str | None:
        """A generated continuation of ``sample_prompt`` (fixed seed; the training RNG is left untouched)."""
        acc, cfg = self.accelerator, self.config
        if acc.distributed_type == DistributedType.FSDP:
            return None  # generate() would need the gathered parameters on every rank
        model = acc.unwrap_model(self.model)
        prompt_ids = [self.eot_id, *self.encode(cfg.sample_prompt)]
        ids = torch.tensor([prompt_ids], device=acc.device)
        devices = [acc.device.index or 0] if acc.device.type == "cuda" else []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), acc.autocast():
                torch.manual_seed(cfg.seed + self.step)
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.sample_max_new_tokens,
                    do_sample=True, temperature=cfg.sample_temperature, top_k=cfg.sample_top_k,
                    pad_token_id=self.eot_id, eos_token_id=self.eot_id,
                )
        finally:
            model.train(was_training)
        return cfg.sample_prompt + self.tokenizer.decode(out[0, len(prompt_ids) :].tolist(), skip_special_tokens=True)

    # ----- the loop -----

    def _log(self, kind: str, **values: Any) -> None:
        if self.metrics is not None:
            values.pop("step", None)
            self.metrics.log(kind, self.step, **values)

    def _periodic(self, every: int) -> bool:
        return every > 0 and self.step % every == 0 and self.step < self.config.max_steps

    def _run_validation(self) -> EvalResult | None:
        result = self.validate()
        if result is not None and self.accelerator.is_main_process:
            self._log("val", **result.as_dict("val_"))
            logger.info("step %d: val loss %.4f  ppl %.2f  bpc %.4f", self.step, result.loss, result.ppl, result.bpc)
        return result

    def _run_sample(self) -> str | None:
        text = self.sample()
        if text is not None and self.accelerator.is_main_process:
            self._log("sample", text=text)
            logger.info("step %d sample:\n%s", self.step, text)
        return text

    def run(self) -> dict[str, Any]:
        """Train to ``max_steps`` (or until a stop signal); return the final metrics."""
        acc, cfg = self.accelerator, self.config
        model, optimizer = self.model, self.optimizer
        if acc.is_main_process:
            self._log("run", world_size=self.world, num_parameters=acc.unwrap_model(model).num_parameters(),
                      block_len=self.block_len, resumed_from=str(self.resume_from) if self.resume_from else None,
                      python=sys.version.split()[0], mixed_precision=acc.mixed_precision)
        tokens_per_step = cfg.batch_size * (self.block_len - 1) * cfg.grad_accum_steps * self.world
        window: list[float] = []
        last_loss = float("nan")
        interrupted = False
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (acc.is_main_process and cfg.progress),
                   unit="step", dynamic_ncols=True)
        model.train()
        with _StopSignal() as stop:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                micro_losses = []
                extras: dict[str, float] = {}
                batches = []
                for micro in range(cfg.grad_accum_steps):
                    batch = self.packer.next_batch(cfg.batch_size)
                    batches.append(batch)
                    sync = micro == cfg.grad_accum_steps - 1
                    with contextlib.nullcontext() if sync else acc.no_sync(model):
                        loss, extra = self.objective(model, {"input_ids": batch.to(acc.device)})
                        acc.backward(loss / cfg.grad_accum_steps)
                    micro_losses.append(loss.detach().float())
                    for k, v in extra.items():
                        extras[k] = extras.get(k, 0.0) + float(v) / cfg.grad_accum_steps
                grad_norm = None
                if cfg.grad_clip > 0:
                    grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                self.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.tokens += tokens_per_step
                self.train_time += time.perf_counter() - t0
                step_loss = float(torch.stack(micro_losses).mean())
                window.append(step_loss)
                if self.rank_log is not None:
                    self._write_rank_log(batches)
                bar.update(1)

                if self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
                    local = torch.tensor([sum(window) / len(window)], device=acc.device)
                    mean = acc.reduce(local, reduction="mean") if self.world > 1 else local
                    last_loss = float(mean)
                    window = []
                    tps = self.tokens / max(self.train_time, 1e-9)
                    values = {
                        "loss": last_loss, "ppl": math.exp(min(last_loss, 700.0)),
                        "lr": self.scheduler.get_last_lr()[0], "tokens": self.tokens, "tokens_per_s": tps,
                        **extras,
                    }
                    if grad_norm is not None:
                        values["grad_norm"] = float(grad_norm)
                    self._log("train", **values)
                    bar.set_postfix(loss=f"{last_loss:.3f}", ppl=f"{values['ppl']:.1f}", tok_s=f"{tps:.0f}")
                for cb in self.callbacks:
                    cb(self.step, {"loss": step_loss})

                if self._periodic(cfg.eval_interval):
                    self._run_validation()
                if self._periodic(cfg.sample_interval):
                    self._run_sample()
                if self._periodic(cfg.save_interval):
                    self.save_checkpoint()
                requested = torch.tensor([float(stop.requested)], device=acc.device)
                if self.world > 1:
                    requested = acc.reduce(requested, reduction="sum")
                if float(requested) > 0:
                    interrupted = True
                    break
        bar.close()

        if window:  # steps since the last log: the final train loss covers them
            local = torch.tensor([sum(window) / len(window)], device=acc.device)
            last_loss = float(acc.reduce(local, reduction="mean") if self.world > 1 else local)
        result: EvalResult | None = None
        sample = None
        if interrupted:
            logger.warning("stopping at step %d on request", self.step)
        else:
            result = self._run_validation()
            sample = self._run_sample()
        if self._saved_step != self.step:
            self.save_checkpoint()
        if not interrupted:
            self.save_model_dir()
        final = {
            "step": self.step,
            "train_loss": last_loss,
            "val_loss": result.loss if result else None,
            "val_ppl": result.ppl if result else None,
            "val_bpc": result.bpc if result else None,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / max(self.train_time, 1e-9),
            "train_time_s": self.train_time,
            "malformed_records": self.source.malformed,
            "interrupted": interrupted,
            "output_dir": str(self.output_dir),
        }
        if sample is not None:
            final["sample"] = sample
        if acc.is_main_process:
            self._log("final", **final)
        return final

    def _write_rank_log(self, batches: list[torch.Tensor]) -> None:
        rows = [hashlib.sha256(row.numpy().tobytes()).hexdigest()[:16] for b in batches for row in b]
        record = {"step": self.step, "params": parameter_checksum(self.accelerator.unwrap_model(self.model)),
                  "rows": rows}
        self.rank_log.write(json.dumps(record) + "\n")
        self.rank_log.flush()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.rank_log is not None:
            self.rank_log.close()


def train(config: TrainConfig, callbacks: Sequence[StepCallback] = ()) -> dict[str, Any]:
    """Run a pretraining job described by ``config``; return its final metrics (see the module docstring).

    ``callbacks`` are called as ``cb(step, {"loss": ...})`` on every rank after every optimizer step.
    The process group (if any) is left initialised; :func:`spikegpt.train.pretrain.main` tears it down with
    :func:`teardown`.
    """
    trainer = Trainer(config, callbacks)
    try:
        return trainer.run()
    finally:
        trainer.close()
        trainer.accelerator.end_training()


def teardown() -> None:
    """Destroy the process group, if any (without it torchrun ranks sometimes abort at exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
