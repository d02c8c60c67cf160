"""The pretraining loop behind ``spikegpt train``: one process, torchrun ranks or ``accelerate launch``.

:func:`train` takes a :class:`~spikegpt.train.config.TrainConfig` and runs: data and tokenizer set-up,
model creation (or loading, to resume), Adam/AdamW with warmup + cosine decay, gradient accumulation and
clipping, bf16 autocast on GPUs, periodic validation / samples / checkpoints, and a final validation,
sample, checkpoint and model directory. It returns the final metrics. The schedule is
:mod:`spikegpt.train.schedule`; checkpoints and RNG states :mod:`spikegpt.train.checkpoint`; what a run may
write or delete in ``output_dir`` (one run at a time, nothing lost) :mod:`spikegpt.train.run_dir`. Batches
come from a background worker (:mod:`spikegpt.train.loader`) reading prepared token shards
(:mod:`spikegpt.train.token_data`) or streamed text (:mod:`spikegpt.train.data`).

Resuming (``resume: latest`` or a checkpoint path) restores model, optimizer, scheduler, step, the RNG
states and the data position of every rank, so the loss curve continues exactly as without the
interruption (same number of processes required); settings that fix the model, tokenizer or data cannot
change (the error names them). SIGINT (Ctrl-C) and SIGTERM finish the current step, save a checkpoint and
return with ``interrupted: true``; a second signal aborts at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

import spikegpt
from spikegpt.train.checkpoint import (
    TRAINER_STATE,
    CheckpointError,
    begin_checkpoint,
    checkpoint_path,
    checkpoint_step,
    finish_checkpoint,
    list_checkpoints,
    removed_on_failure,
    resolve_resume,
    rng_state,
    set_rng_state,
    truncate_metrics,
    verify_checkpoint,
)
from spikegpt.train.config import TrainConfig, save_config
from spikegpt.train.data import BlockPacker, TextSource, training_texts, validation_documents
from spikegpt.train.evaluation import EvalResult, build_streams
from spikegpt.train.loader import Prefetcher
from spikegpt.train.metrics import MetricsLogger, clean_record
from spikegpt.train.objectives import build_objective
from spikegpt.train.parallel import (
    build_accelerator,
    clip_grad_norm,
    gather_model_state,
    generate,
    load_optimizer,
    save_optimizer,
    shared_directory,
    validation_nats,
)
from spikegpt.train.run_dir import RunDir, RunDirError, changed_settings
from spikegpt.train.schedule import warmup_cosine
from spikegpt.train.token_data import TokenPacker, open_token_data, tokenizer_hash
from spikegpt.train.token_data import validation_documents as token_validation_documents
from spikegpt.train.tokenization import BUILT_TOKENIZERS, build_tokenizer, encoder, load_tokenizer

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
    """SHA-256 over the bytes of every parameter, in name order (equal across ranks when in sync; under FSDP
    over this rank's shards)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        t = p.detach()
        t = t.to_local() if hasattr(t, "to_local") else t
        h.update(name.encode())
        h.update(t.float().cpu().contiguous().numpy().tobytes())
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
        self.accelerator = build_accelerator(config.parallelism, config.mixed_precision)
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        self.output_dir = Path(config.output_dir)
        self.resume_from = resolve_resume(config.resume, config.output_dir)
        self.run_dir: RunDir | None = None  # the main process's view of output_dir (it holds the lock)
        self.metrics: MetricsLogger | None = None
        self.rank_log = None
        self.loader: Prefetcher | None = None
        self._resume_here = False  # resuming a checkpoint of output_dir itself (not one of another run)
        self._on_main(self._open_run_dir)
        try:
            self._set_up()
        except BaseException:
            self.close()
            raise

    def _set_up(self) -> None:
        config, acc = self.config, self.accelerator
        set_seed(config.seed)
        self.token_data = open_token_data(config.data, seed=config.seed, val_fraction=config.val_fraction)
        self.source = None if self.token_data is not None else TextSource(
            config.data, data_config=config.data_config, split=config.data_split, revision=config.data_revision,
            text_field=config.text_field, text_unit=config.text_unit,
        )
        self.tokenizer = self._load_tokenizer()
        self.encode = encoder(self.tokenizer)
        self.eot_id = int(self.tokenizer.eos_token_id)
        self.model = self._build_model()
        self.block_len = int(config.context_length or self.model.config.context_length)
        self.model.config.context_length = self.block_len
        self.loader = Prefetcher(self._build_packer(), config.batch_size, depth=config.prefetch,
                                 pin_memory=acc.device.type == "cuda")
        self.val_docs = self._validation_documents()
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
        self.data_wait = 0.0  # seconds the step waited for a batch
        self.last_loss = float("nan")  # mean training loss of the last logging window
        self._summary: dict[str, Any] | None = None  # the final figures of a finished run being resumed
        metrics_records = 0
        if self.resume_from is not None:
            metrics_records = self._load_trainer_state(self.resume_from)
        if acc.is_main_process:
            self.run_dir.claim("metrics.jsonl")
            if self._resume_here:
                truncate_metrics(self.output_dir / "metrics.jsonl", metrics_records)
            tb = None
            if config.tensorboard:
                self.run_dir.claim("tensorboard/")
                tb = self.output_dir / "tensorboard"
            self.metrics = MetricsLogger(self.output_dir / "metrics.jsonl", tensorboard_dir=tb)
            if config.debug_rank_log:
                for r in range(self.world):
                    self.run_dir.claim(f"rank-{r}.jsonl")
        if config.debug_rank_log:
            acc.wait_for_everyone()
            self.rank_log = open(self.output_dir / f"rank-{self.rank}.jsonl", "a", encoding="utf-8")

    # ----- set-up -----

    def _on_main(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the main process; when it fails, every rank raises (the others a
        :class:`RunDirError` quoting it) instead of waiting forever for the main process."""
        error: BaseException | None = None
        if self.accelerator.is_main_process:
            try:
                fn()
            except Exception as e:
                error = e
        if self.world > 1:
            box = [None if error is None else f"{type(error).__name__}: {error}"]
            broadcast_object_list(box, from_process=0)
            if error is None and box[0] is not None:
                raise RunDirError(f"the main process failed: {box[0]}")
        if error is not None:
            raise error

    def _run_files(self) -> list[str]:
        """The files a run writes at the top of output_dir besides its final model."""
        return ["metrics.jsonl", "train_config.yaml", *(f"rank-{r}.jsonl" for r in range(self.world))]

    def _open_run_dir(self) -> None:
        """Main process: take output_dir's lock, then check that the run may start there (see run_dir)."""
        run_dir = RunDir(self.output_dir)
        run_dir.lock()
        try:
            run_dir.remove_stale_temporaries()
            if self.resume_from is None:
                run_dir.start_fresh(self.config.overwrite_output_dir)
            else:
                self._check_resume(run_dir)
        except BaseException:
            run_dir.unlock()
            raise
        self.run_dir = run_dir

    def _check_resume(self, run_dir: RunDir) -> None:
        ckpt = self.resume_from
        verify_checkpoint(ckpt)
        try:
            saved = yaml.safe_load((ckpt / "train_config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise CheckpointError(f"checkpoint {ckpt} has no readable train_config.yaml ({e})") from None
        changed = changed_settings(saved, self.config.to_dict())
        if changed:
            raise ValueError(
                f"cannot resume {ckpt} with changed settings: {'; '.join(changed)}. These fix the model, its "
                "tokenizer or the data stream: drop those overrides to continue the run, or start a new run in "
                f"another --output_dir (--init_from {ckpt} starts from its weights)"
            )
        step = checkpoint_step(ckpt)
        self._resume_here = step is not None and ckpt.resolve().parent == self.output_dir.resolve()
        if not self._resume_here:  # another run's checkpoint: a new run here, starting from its state
            run_dir.start_fresh(self.config.overwrite_output_dir)
            return
        existing = list_checkpoints(self.output_dir)
        run_dir.adopt([p.name + "/" for _, p in existing]
                      + (["metrics.jsonl"] if (self.output_dir / "metrics.jsonl").is_file() else []))
        newer = [p for s, p in existing if s > step]
        if newer:
            dest = run_dir.supersede(newer, move=run_dir.model_files(self._run_files()), copy=["metrics.jsonl"])
            logger.warning(
                "resuming from %s while newer checkpoints exist: a branch starts here. The abandoned line's "
                "%s, its final model (if any) and a copy of its metrics were moved to %s", ckpt.name,
                ", ".join(p.name for p in newer), dest,
            )

    def _load_tokenizer(self):
        cfg, acc, data = self.config, self.accelerator, self.token_data
        if self.resume_from is not None:
            return AutoTokenizer.from_pretrained(self.resume_from)
        if data is not None and data.tokenizer_dir is not None:  # prepared data: the tokenizer it was made with
            tok = AutoTokenizer.from_pretrained(data.tokenizer_dir)
            if cfg.tokenizer not in BUILT_TOKENIZERS and tokenizer_hash(load_tokenizer(cfg.tokenizer)) != \
                    data.tokenizer_hash:
                raise ValueError(f"tokenizer {cfg.tokenizer!r} is not the one data {cfg.data!r} was prepared with "
                                 f"(in {data.tokenizer_dir}); leave tokenizer unset or name that one")
            return tok
        if data is not None and cfg.tokenizer in ("bpe", "char"):
            raise ValueError(f"data {cfg.data!r} holds token ids without their tokenizer: set tokenizer to the one "
                             "it was made with (a Hub name or directory, e.g. EleutherAI/gpt-neox-20b)")
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
                self.run_dir.publish(tok.save_pretrained, into="tokenizer")
                logger.info("trained a %s tokenizer with %d tokens in %.1f s", cfg.tokenizer, len(tok),
                            time.perf_counter() - t0)
            else:
                tok = AutoTokenizer.from_pretrained(tok_dir)
        return tok

    def _build_packer(self):
        cfg = self.config
        if self.token_data is not None:
            eot = None if self.token_data.kind == "binidx" else self.eot_id  # binidx documents end with theirs
            return TokenPacker(self.token_data.split("train"), eot, self.block_len, seed=cfg.seed, rank=self.rank,
                               world_size=self.world)
        return BlockPacker(
            self.source, self.encode, self.eot_id, self.block_len, seed=cfg.seed, val_fraction=cfg.val_fraction,
            shuffle_buffer=cfg.shuffle_buffer, rank=self.rank, world_size=self.world,
        )

    def _validation_documents(self) -> list[tuple[str | int, list[int]]]:
        cfg = self.config
        if self.token_data is not None:
            docs = token_validation_documents(  # characters: of the prepared index, or of the decoded text
                self.token_data, cfg.val_max_tokens,
                decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True))
            if self.token_data.kind == "binidx":  # each ends with its end-of-document token: the streams add one
                docs = [(chars, ids[:-1] if ids and ids[-1] == self.eot_id else ids) for chars, ids in docs]
            return docs
        return validation_documents(self.source, cfg.seed, cfg.val_fraction, cfg.val_max_tokens, self.encode)

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

    def save_checkpoint(self, summary: dict[str, Any] | None = None) -> Path:
        """Write ``checkpoint-<step>`` (all ranks must call this) and keep the newest ``keep_checkpoints``.
        ``summary``: the final figures of a finished run (a resume of it reports them instead of retraining).

        Every rank writes its part into one temporary directory (rank 0 makes it and shares its name): the
        optimizer state (under FSDP each rank its shard), then rank 0 the model, tokenizer, trainer state
        and config, the manifest, and renames it into place. A failure on any rank removes the temporary
        directory and raises on every rank (out of disk space: ``OutOfSpaceError``)."""
        acc, cfg = self.accelerator, self.config
        state_dict = gather_model_state(acc, self.model)
        rngs = gather_object([rng_state()]) if self.world > 1 else [rng_state()]
        position = self.loader.state_dict()
        positions = gather_object([position]) if self.world > 1 else [position]
        path = checkpoint_path(self.output_dir, self.step)

        def begin() -> Path:
            self.run_dir.claim(path.name + "/")
            return begin_checkpoint(path)

        tmp = shared_directory(acc, begin)
        try:
            save_optimizer(acc, self.model, self.optimizer, tmp)
            failure = None
        except Exception as e:
            failure = f"rank {self.rank} could not write its optimizer state: {type(e).__name__}: {e}"
        failures = [f for f in (gather_object([failure]) if self.world > 1 else [failure]) if f is not None]

        def write_rest() -> None:
            trainer_state = {
                "step": self.step, "tokens": self.tokens, "train_time": self.train_time,
                "data_wait": self.data_wait, "world_size": self.world, "scheduler": self.scheduler.state_dict(),
                "rng": rngs, "data": positions, "train_loss": self.last_loss,
                "metrics_records": self.metrics.records, "summary": summary,
            }
            with removed_on_failure(tmp, "checkpoint", path):
                if failures:
                    raise OSError("; ".join(failures))
                with _quiet_saving():
                    acc.unwrap_model(self.model).save_pretrained(tmp, state_dict=state_dict)
                self.tokenizer.save_pretrained(tmp)
                torch.save(trainer_state, tmp / TRAINER_STATE)
                save_config(cfg, tmp / "train_config.yaml")
            finish_checkpoint(tmp, path)
            self.run_dir.prune_checkpoints(cfg.keep_checkpoints)
            logger.info("saved %s", path)

        self._on_main(write_rest)
        self._saved_step = self.step
        return path

    def _load_trainer_state(self, path: Path) -> int:
        """Restore optimizer, schedule, step, RNG and data position from checkpoint ``path``; return the number
        of metrics records it had logged."""
        try:
            state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
            records = int(state["metrics_records"])
        except KeyError as e:
            raise CheckpointError(f"checkpoint {path} lacks {e} in {TRAINER_STATE} (written by an older spikegpt; "
                                  "start a new run with --init_from it)") from None
        except Exception as e:  # a checksummed file that still fails to load
            raise CheckpointError(f"checkpoint {path} is corrupt: {TRAINER_STATE} cannot be read ({e})") from e
        if state["world_size"] != self.world:
            raise ValueError(
                f"checkpoint {path} was written by {state['world_size']} processes; resume it with the same "
                f"number (this run has {self.world}) so that every rank continues its own data stream"
            )
        # this run's optimizer settings (a resumed run may change them: lr, betas, eps, weight decay)
        groups = self.optimizer.param_groups
        settings = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in groups]
        load_optimizer(self.accelerator, self.model, self.optimizer, path)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = [g["initial_lr"] for g in settings]
        step = self.scheduler.last_epoch
        for g, mine, rule in zip(groups, settings, self.scheduler.lr_lambdas):
            g.update(mine)
            g["lr"] = mine["initial_lr"] * rule(step)
        self.scheduler._last_lr = [g["lr"] for g in groups]
        self.step, self.tokens, self.train_time = int(state["step"]), int(state["tokens"]), float(state["train_time"])
        self.data_wait, self.last_loss = float(state["data_wait"]), float(state["train_loss"])
        self._summary = state["summary"]
        self._saved_step = self.step
        self.loader.load_state_dict(state["data"][self.rank])
        set_rng_state(state["rng"][self.rank])
        if self.accelerator.is_main_process:
            logger.info("resumed from %s at step %d", path, self.step)
        return records

    def save_model_dir(self) -> None:
        """Write the final model, tokenizer and config into ``output_dir`` (loadable with from_pretrained)."""
        acc = self.accelerator
        state_dict = gather_model_state(acc, self.model)

        def publish() -> None:
            unwrapped = acc.unwrap_model(self.model)

            def write(tmp: Path) -> None:
                with _quiet_saving():
                    unwrapped.save_pretrained(tmp, state_dict=state_dict)
                self.tokenizer.save_pretrained(tmp)

            self.run_dir.publish(write)

        self._on_main(publish)

    # ----- evaluation -----

    def validate(self) -> EvalResult | None:
        """Loss / perplexity / bits per character on the held-out documents (shared out over the ranks)."""
        if not self.val_docs:
            return None
        acc = self.accelerator
        mine = self.val_docs[self.rank :: self.world]
        streams = build_streams(mine, self.eot_id, self.config.eval_batch_size) if mine else None
        nats, count = validation_nats(acc, self.model, streams.streams if streams else None, self.block_len,
                                      self.config.eval_batch_size)
        totals = torch.tensor([nats, count, streams.characters if streams else 0, len(mine)], dtype=torch.float64,
                              device=acc.device)
        if self.world > 1:
            totals = acc.reduce(totals, reduction="sum")
        nats, count, chars, docs = totals.tolist()
        return EvalResult(nats=nats, tokens=int(count), characters=int(chars), documents=int(docs))

    def sample(self) -> str | None:
        """A generated continuation of ``sample_prompt`` (fixed seed; the training RNG is left untouched)."""
        acc, cfg = self.accelerator, self.config
        model = acc.unwrap_model(self.model)
        prompt_ids = [self.eot_id, *self.encode(cfg.sample_prompt)]
        ids = torch.tensor([prompt_ids], device=acc.device)
        devices = [acc.device.index or 0] if acc.device.type == "cuda" else []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), acc.autocast():
                torch.manual_seed(cfg.seed + self.step)
                out = generate(
                    acc, self.model, ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.sample_max_new_tokens,
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

    def _mean_loss(self, window: list[float]) -> float:
        local = torch.tensor([sum(window) / len(window)], device=self.accelerator.device)
        return float(self.accelerator.reduce(local, reduction="mean") if self.world > 1 else local)

    def _train(self) -> bool:
        """The optimizer steps up to ``max_steps``; return whether a stop signal ended them early."""
        acc, cfg = self.accelerator, self.config
        model, optimizer = self.model, self.optimizer
        tokens_per_step = cfg.batch_size * (self.block_len - 1) * cfg.grad_accum_steps * self.world
        window: list[float] = []
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
                    t_wait = time.perf_counter()
                    batch = self.loader.next()
                    self.data_wait += time.perf_counter() - t_wait
                    batches.append(batch)
                    sync = micro == cfg.grad_accum_steps - 1
                    with contextlib.nullcontext() if sync else acc.no_sync(model):
                        loss, extra = self.objective(model, {"input_ids": batch.to(acc.device, non_blocking=True)})
                        acc.backward(loss / cfg.grad_accum_steps)
                    micro_losses.append(loss.detach().float())
                    for k, v in extra.items():
                        extras[k] = extras.get(k, 0.0) + float(v) / cfg.grad_accum_steps
                grad_norm = None
                if cfg.grad_clip > 0:
                    grad_norm = clip_grad_norm(acc, model, cfg.grad_clip)
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
                    self.last_loss = self._mean_loss(window)
                    window = []
                    tps = self.tokens / max(self.train_time, 1e-9)
                    values = {
                        "loss": self.last_loss, "ppl": math.exp(min(self.last_loss, 700.0)),
                        "lr": self.scheduler.get_last_lr()[0], "tokens": self.tokens, "tokens_per_s": tps,
                        "data_wait_frac": self.data_wait / max(self.train_time, 1e-9), **extras,
                    }
                    if grad_norm is not None:
                        values["grad_norm"] = float(grad_norm)
                    self._log("train", **values)
                    bar.set_postfix(loss=f"{self.last_loss:.3f}", ppl=f"{values['ppl']:.1f}", tok_s=f"{tps:.0f}")
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
            self.last_loss = self._mean_loss(window)
        return interrupted

    def run(self) -> dict[str, Any]:
        """Train to ``max_steps`` (or until a stop signal); return the final metrics.

        A resumed run that had already finished reports its saved final figures (nothing is trained,
        validated or logged twice)."""
        acc, cfg = self.accelerator, self.config
        self._on_main(lambda: self.run_dir.publish(lambda tmp: save_config(cfg, tmp / "train_config.yaml")))
        if acc.is_main_process:
            self._log("run", world_size=self.world, num_parameters=acc.unwrap_model(self.model).num_parameters(),
                      block_len=self.block_len, resumed_from=str(self.resume_from) if self.resume_from else None,
                      python=sys.version.split()[0], mixed_precision=acc.mixed_precision)
        interrupted = False
        summary = self._summary if self.step >= cfg.max_steps else None
        if summary is not None:
            logger.info("the run had finished at step %d (max_steps %d): nothing left to train", self.step,
                        cfg.max_steps)
        else:
            interrupted = self._train()
            if interrupted:
                logger.warning("stopping at step %d on request", self.step)
            else:
                result = self._run_validation()
                sample = self._run_sample()
                summary = {"train_loss": self.last_loss, "val_loss": result.loss if result else None,
                           "val_ppl": result.ppl if result else None, "val_bpc": result.bpc if result else None,
                           "sample": sample}
            if self._saved_step != self.step or summary is not None:
                self.save_checkpoint(summary)
        if not interrupted:
            self.save_model_dir()
        final = {
            "step": self.step,
            "train_loss": summary["train_loss"] if summary else self.last_loss,
            "val_loss": summary["val_loss"] if summary else None,
            "val_ppl": summary["val_ppl"] if summary else None,
            "val_bpc": summary["val_bpc"] if summary else None,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / max(self.train_time, 1e-9),
            "train_time_s": self.train_time,
            "data_wait_frac": self.data_wait / max(self.train_time, 1e-9),
            "malformed_records": self.source.malformed if self.source is not None else 0,
            "interrupted": interrupted,
            "output_dir": str(self.output_dir),
        }
        if summary is not None and summary.get("sample") is not None:
            final["sample"] = summary["sample"]
        if acc.is_main_process:
            self._log("final", **final)
        return clean_record(final)

    def _write_rank_log(self, batches: list[torch.Tensor]) -> None:
        rows = [hashlib.sha256(row.numpy().tobytes()).hexdigest()[:16] for b in batches for row in b]
        record = {"step": self.step, "params": parameter_checksum(self.accelerator.unwrap_model(self.model)),
                  "rows": rows}
        self.rank_log.write(json.dumps(record) + "\n")
        self.rank_log.flush()

    def close(self) -> None:
        """Stop the data worker, close the logs and release output_dir's lock (safe to call twice)."""
        if self.loader is not None:
            self.loader.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.rank_log is not None:
            self.rank_log.close()
            self.rank_log = None
        if self.run_dir is not None:
            self.run_dir.unlock()


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
