"""Data parallelism of pretraining: DDP or FSDP2 through accelerate, and what each needs around it.

``parallelism`` (a recipe setting) is one of :data:`PARALLELISMS`:

* ``"ddp"``: today's behaviour. One process: a plain model. Several processes (torchrun / accelerate launch):
  DistributedDataParallel, parameters and optimizer state replicated on every rank; gloo on CPU ranks.
* ``"fsdp"``: FSDP2 (``torch.distributed.fsdp.fully_shard``, applied by accelerate's ``prepare``): every
  ``SpikeGPTBlock`` (the model's ``_no_split_modules``) is one shard group, resharded after its forward; the
  embedding and the tail (``ln_out`` + head) get groups of their own and the root holds the rest.
  Parameters, gradients and Adam moments are split over the ranks. The model files a checkpoint or the final
  model directory holds are a full state dict gathered on rank 0 (:func:`gather_model_state`), so they load
  with ``from_pretrained`` as usual; the optimizer state is saved sharded (:func:`save_optimizer`). With one
  process there is nothing to shard: a plain model, as ``"ddp"``. Mixed precision ``bf16``: parameters are
  all-gathered and computed in bf16, gradients reduced in fp32 (FSDP2's ``MixedPrecisionPolicy``).

FSDP2 on CPU ranks: torch runs it on gloo (forward, backward, optimizer step, full state dict gather and
torch.distributed.checkpoint all work), but accelerate (1.x) only turns an FSDP plugin on for accelerator
devices: ``AcceleratorState.__init__`` sets ``DistributedType.FSDP`` inside its branch for MULTI_GPU /
MULTI_NPU / ... and MULTI_CPU is not among them, so with ``cpu=True`` the plugin is dropped without a word
and ``prepare`` wraps the model in DDP. :func:`build_accelerator` completes that step itself on CPU ranks
(the same three assignments accelerate makes for GPUs), so CPU ranks take accelerate's own FSDP2 code path,
which is what the 2-rank CPU tests check. Without ``cpu=True`` a CPU-only torchrun gives every rank
``DistributedType.NO`` and ``process_index`` 0, so that is no way around it.

Launcher and recipe must agree: ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` exports
``ACCELERATE_USE_FSDP=true``, and a recipe with ``parallelism: ddp`` under it is refused (ValueError naming both)
rather than silently sharded: the two train alike but their checkpoints differ (``optimizer/`` shards versus
``optimizer.pt``). Pass ``--parallelism fsdp`` with that launcher config.

Everything that runs a forward under FSDP must run it on every rank, the same number of times: each forward
all-gathers the parameters, a collective every rank joins. Hence :func:`validation_nats` (pads the ranks
with fewer validation windows with dummy forwards) and :func:`generate` (``synced_gpus``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, broadcast_object_list

from spikegpt.modeling_spikegpt import SpikeGPTPreTrainedModel
from spikegpt.train.evaluation import stream_nats

logger = logging.getLogger(__name__)

PARALLELISMS = ("ddp", "fsdp")
OPTIMIZER_FILE = "optimizer.pt"  # DDP / one process: the optimizer's state_dict(), written by rank 0
OPTIMIZER_DIR = "optimizer"  # FSDP: a torch.distributed.checkpoint directory, one shard file per rank
WRAPPED_BLOCKS = list(SpikeGPTPreTrainedModel._no_split_modules)  # ["SpikeGPTBlock"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_mixed_precision(setting: str) -> str:
    """``"auto"`` -> ``"bf16"`` on a GPU that has it, else ``"no"``; any other value is returned as is."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def check_launcher(parallelism: str) -> None:
    """Raise ValueError when ``parallelism`` is unknown or disagrees with the accelerate launcher's config."""
    if parallelism not in PARALLELISMS:
        raise ValueError(f"parallelism must be one of {', '.join(PARALLELISMS)}, got {parallelism!r}")
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        raise ValueError(f"parallelism is {parallelism!r} but accelerate launch was given a DeepSpeed config "
                         "(ACCELERATE_USE_DEEPSPEED=true); launch with configs/accelerate/ddp.yaml or fsdp.yaml")
    launcher_fsdp = _flag("ACCELERATE_USE_FSDP")
    if parallelism == "ddp" and launcher_fsdp:
        raise ValueError(
            "parallelism is 'ddp' but accelerate launch was given an FSDP config (distributed_type: FSDP, "
            "ACCELERATE_USE_FSDP=true, e.g. --config_file configs/accelerate/fsdp.yaml): pass --parallelism fsdp, "
            "or launch with configs/accelerate/ddp.yaml or torchrun"
        )
    version = os.environ.get("FSDP_VERSION", "").strip()
    if parallelism == "fsdp" and launcher_fsdp and version not in ("", "2"):
        raise ValueError(f"parallelism 'fsdp' is FSDP2, but the accelerate config asks for fsdp_version {version}; "
                         "set fsdp_version: 2 (as configs/accelerate/fsdp.yaml does)")


def fsdp_plugin(mixed_precision: str) -> FullyShardedDataParallelPlugin:
    """The FSDP2 plugin of ``parallelism: fsdp``. Settings left unset here (parameter offload, activation
    checkpointing, RAM-efficient loading) come from an accelerate config's ``fsdp_config`` when there is one."""
    policy = None
    if mixed_precision == "bf16":
        from torch.distributed.fsdp import MixedPrecisionPolicy

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=WRAPPED_BLOCKS,
        reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
        mixed_precision_policy=policy,
    )


def _enable_fsdp_on_cpu_ranks(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """What ``AcceleratorState.__init__`` does for an FSDP plugin on GPUs and skips for MULTI_CPU (see the
    module docstring): mark the state FSDP, hand it the plugin, mirror the type into PartialState."""
    state = accelerator.state
    if accelerator.is_main_process:
        logger.info("FSDP2 on CPU ranks: accelerate left the FSDP plugin unused (MULTI_CPU); enabling it")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def build_accelerator(parallelism: str, mixed_precision: str, **kwargs: Any) -> Accelerator:
    """The Accelerator of a pretraining run (see the module docstring for what each parallelism means).

    Args:
        parallelism: ``"ddp"`` or ``"fsdp"``; anything else is a ValueError naming ``parallelism``, and so is a
            ``"ddp"`` run under an accelerate FSDP config (or an FSDP config with ``fsdp_version`` 1).
        mixed_precision: ``"auto"`` (bf16 on a GPU that has it, else fp32), ``"no"``, ``"bf16"`` or ``"fp16"``.
        kwargs: passed on to ``Accelerator`` (not ``cpu``, ``mixed_precision`` or ``fsdp_plugin``).

    torchrun ranks on a machine without GPUs get ``cpu=True`` (accelerate forms the gloo group only then).
    Under ``"fsdp"`` with several processes ``accelerator.prepare(model, optimizer)`` (both in one call) shards
    the model; build the optimizer on the unsharded model first, as for DDP.
    """
    check_launcher(parallelism)
    mixed_precision = resolve_mixed_precision(mixed_precision)
    cpu_ranks = not torch.cuda.is_available() and _world_size() > 1
    if parallelism == "ddp" or _world_size() == 1:
        if parallelism == "fsdp":
            logger.info("parallelism fsdp with one process: nothing to shard, training an unsharded model")
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu_ranks, **kwargs)
    plugin = fsdp_plugin(mixed_precision)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu_ranks, fsdp_plugin=plugin, **kwargs)
    if accelerator.distributed_type == DistributedType.MULTI_CPU:
        _enable_fsdp_on_cpu_ranks(accelerator, plugin)
    if not accelerator.is_fsdp2:
        raise RuntimeError(f"parallelism fsdp: accelerate set up {accelerator.distributed_type} instead of FSDP2")
    return accelerator


def is_fsdp(accelerator: Accelerator) -> bool:
    """Whether the model is sharded (FSDP): checkpoints then gather it and shard the optimizer."""
    return accelerator.distributed_type == DistributedType.FSDP


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's AcceleratedOptimizer wrapper (itself when not wrapped)."""
    return getattr(optimizer, "optimizer", optimizer)


# ----- checkpoints (every rank calls these) -----


def gather_model_state(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) model state dict on CPU-able tensors on the main process, None on the others.

    Every rank must call it (under FSDP it all-gathers each shard group). Under FSDP the tensors are full
    CPU tensors; under DDP / one process they are the model's own tensors. Give it to
    ``accelerator.unwrap_model(model).save_pretrained(dir, state_dict=...)`` on the main process: the files
    load with ``from_pretrained`` like those of an unsharded run (transformers strips the ``FSDP`` class prefix
    from ``config.json``'s ``architectures``). save_pretrained pops every tensor out of the dict it is given
    (transformers 5 frees each one once written): copy the dict first to use it again."""
    if is_fsdp(accelerator):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if accelerator.is_main_process else None
    return accelerator.get_state_dict(model) if accelerator.is_main_process else None


def save_optimizer(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   directory: Path) -> None:
    """Save the optimizer state into checkpoint directory ``directory``; every rank must call it.

    Under FSDP: sharded, with torch.distributed.checkpoint, into ``directory/optimizer/`` (each rank writes
    the file of its own shard, rank 0 also the ``.metadata``; nothing is gathered), and when it returns on
    rank 0 every rank's file is written. Under DDP / one process: rank 0 writes ``directory/optimizer.pt``
    (``optimizer.state_dict()``).

    ``directory`` must be the same path on every rank and one directory for all of them (a shared file system
    across machines): the trainer creates its temporary checkpoint directory on rank 0, whose name carries
    rank 0's pid, so it must broadcast that name (:func:`shared_directory`) before calling this.
    """
    directory = Path(directory)
    if is_fsdp(accelerator):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = get_optimizer_state_dict(model, _inner(optimizer))
        dcp.save({"optimizer": state}, checkpoint_id=directory / OPTIMIZER_DIR)
    elif accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(_inner(optimizer).state_dict(), directory / OPTIMIZER_FILE)


def load_optimizer(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   directory: Path) -> None:
    """Restore the optimizer state :func:`save_optimizer` wrote into ``directory``; every rank must call it,
    with the same ``directory`` (see :func:`save_optimizer`), after ``accelerator.prepare``.

    Under FSDP each rank reads its shard from ``directory/optimizer/`` (the optimizer may be fresh: torch
    initialises its state with a zero-learning-rate step first); else ``directory/optimizer.pt``. A checkpoint
    written the other way (``optimizer.pt`` under FSDP, ``optimizer/`` without it) or with neither is a
    FileNotFoundError that names the directory and what it holds."""
    directory = Path(directory)
    sharded, single = directory / OPTIMIZER_DIR, directory / OPTIMIZER_FILE
    want, other = (sharded, single) if is_fsdp(accelerator) else (single, sharded)
    if not want.exists():
        how = "sharded (parallelism fsdp)" if other == sharded else "unsharded (parallelism ddp)"
        held = f"it holds {other.name}: it was saved {how}; resume it the same way" if other.exists() else \
            f"it holds neither {OPTIMIZER_FILE} nor {OPTIMIZER_DIR}/"
        raise FileNotFoundError(f"no optimizer state {want.name} in checkpoint {directory}: {held}")
    if is_fsdp(accelerator):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        inner = _inner(optimizer)
        state = {"optimizer": get_optimizer_state_dict(model, inner)}  # the template DCP loads into
        dcp.load(state, checkpoint_id=sharded)
        set_optimizer_state_dict(model, inner, state["optimizer"])
    else:
        optimizer.load_state_dict(torch.load(single, map_location="cpu", weights_only=True))


def shared_directory(accelerator: Accelerator, make: Callable[[], Path]) -> Path:
    """``make()`` run on the main process only (e.g. ``lambda: begin_checkpoint(path)``), its path returned on
    every rank. If it raises, the main process re-raises and the other ranks raise RuntimeError (none hangs)."""
    if accelerator.num_processes == 1:
        return Path(make())
    box: list[Any] = [None]
    error = None
    if accelerator.is_main_process:
        try:
            box[0] = str(make())
        except BaseException as e:  # still broadcast, so the other ranks do not wait forever
            error = e
            box[0] = None
    broadcast_object_list(box, from_process=0)
    if error is not None:
        raise error
    if box[0] is None:
        raise RuntimeError("the main process failed to create the shared directory (see its error)")
    return Path(box[0])


# ----- training step, validation, generation -----


def clip_grad_norm(accelerator: Accelerator, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` (every rank); return the norm before clipping as a plain
    0-d tensor, equal on every rank (under FSDP accelerate returns a replicated DTensor: made local here)."""
    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm


def forward_calls(streams: Sequence[Sequence[int]] | None, window: int, batch_size: int) -> int:
    """How many forwards :func:`spikegpt.train.evaluation.stream_nats` makes over ``streams``: per batch of
    ``batch_size`` streams, one per ``window`` tokens of its longest stream but the last token."""
    streams = streams or []
    return sum(len(range(0, max(len(s) for s in streams[b0 : b0 + batch_size]) - 1, window))
               for b0 in range(0, len(streams), batch_size))


def validation_nats(accelerator: Accelerator, model: torch.nn.Module, streams: Sequence[Sequence[int]] | None,
                    window: int, batch_size: int) -> tuple[float, int]:
    """:func:`spikegpt.train.evaluation.stream_nats` over this rank's ``streams`` (None or empty: nothing),
    with ``accelerator.autocast``; every rank must call it. Returns this rank's (nats, targets).

    Under FSDP the ranks first agree on the largest number of forwards any of them needs
    (:func:`forward_calls`, one all-reduce), and a rank that needs fewer then runs dummy one-token forwards
    (no grad, eval mode) up to it: ranks hold different amounts of validation text, and a rank that stopped
    early would leave the others waiting in a parameter all-gather. The count has to be known beforehand:
    a rank that finished and then asked would meet the others' all-gathers with its all-reduce."""
    if not is_fsdp(accelerator):
        model = accelerator.unwrap_model(model)  # no DDP forward (it may broadcast buffers: a collective)
        if not streams:
            return 0.0, 0
        return stream_nats(model, streams, window, batch_size, device=accelerator.device,
                           autocast=accelerator.autocast)
    mine = forward_calls(streams, window, batch_size)
    most = torch.tensor([mine], device=accelerator.device)
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
    nats, targets = 0.0, 0
    if streams:
        nats, targets = stream_nats(model, streams, window, batch_size, device=accelerator.device,
                                    autocast=accelerator.autocast)
    missing = int(most.item()) - mine
    if missing:
        was_training = model.training
        model.eval()
        dummy = torch.zeros((1, 1), dtype=torch.long, device=accelerator.device)
        try:
            with torch.no_grad(), accelerator.autocast():
                for _ in range(missing):
                    model(input_ids=dummy, use_cache=False)
        finally:
            model.train(was_training)
    return nats, targets


def generate(accelerator: Accelerator, model: torch.nn.Module, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``model.generate(input_ids, **kwargs)``. Under FSDP every rank must call it (with the same prompt and
    seed, so that all produce the same text): ``synced_gpus=True`` keeps a rank that is done stepping until
    the others are, since each forward all-gathers the parameters. Under DDP / one process it may be called
    on the main process alone."""
    if is_fsdp(accelerator) and accelerator.num_processes > 1:
        kwargs.setdefault("synced_gpus", True)
    return accelerator.unwrap_model(model).generate(input_ids, **kwargs)
