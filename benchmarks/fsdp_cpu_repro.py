"""FSDP2 on CPU ranks (gloo): torch runs it; accelerate drops the FSDP plugin there. No spikegpt involved.

    python benchmarks/fsdp_cpu_repro.py          # launches 3 x torchrun --nproc_per_node 2, prints one line each

Cases (each its own 2-rank torchrun, since accelerate's state is a per-process singleton):

``torch``        ``fully_shard`` on a 2-layer MLP (each Linear, then the root), forward, backward, global-norm
                 clipping, Adam step, full state dicts on rank 0 (``get_model_state_dict`` /
                 ``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``), and the sharded
                 optimizer saved and loaded with torch.distributed.checkpoint. Works (torch 2.13, gloo has
                 all-gather-into-tensor and reduce-scatter-tensor).
``accel_cpu``    ``Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2, ...))``:
                 ``distributed_type`` comes out MULTI_CPU, ``state.fsdp_plugin`` is never set, and ``prepare``
                 wraps the model in DistributedDataParallel. No error, no warning: accelerate 1.15's
                 ``AcceleratorState.__init__`` switches to FSDP only inside ``elif self.distributed_type in
                 [MULTI_GPU, MULTI_MLU, MULTI_SDAA, MULTI_MUSA, MULTI_NPU, MULTI_XPU, MULTI_HPU, MULTI_NEURON]``.
``accel_nocpu``  The same without ``cpu=True`` on a machine without GPUs: every rank gets ``DistributedType.NO``
                 and ``process_index`` 0 (each rank believes it is alone), and ``prepare`` returns the bare model.

spikegpt.train.parallel.build_accelerator works around ``accel_cpu`` by setting what accelerate skipped
(distributed_type FSDP, the plugin); the day accelerate does it itself, ``accel_cpu`` prints FSDP here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


def _mlp():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def case_torch(rank: int) -> str:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    model = _mlp()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(rank))
    model(x).pow(2).mean().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_model_state_dict(model, options=full), get_optimizer_state_dict(model, optimizer, options=full)
    path = os.environ["REPRO_DIR"]
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=path)
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=path)
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    model(x).sum().backward()
    dist.destroy_process_group()
    return (f"fully_shard ok: param {type(model[0].weight).__name__} {model[0].weight.placements}, "
            f"full model keys {len(msd)}, full optimizer keys {len(osd)}, DCP files {sorted(os.listdir(path))}")


def case_accelerate(rank: int, cpu: bool) -> str:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["Linear"])
    acc = Accelerator(cpu=cpu, fsdp_plugin=plugin)
    model, _ = acc.prepare(_mlp(), torch.optim.Adam(_mlp().parameters()))
    has_plugin = "fsdp_plugin" in acc.state.__dict__
    text = (f"distributed_type {acc.distributed_type.value}, process_index {acc.process_index}, "
            f"state.fsdp_plugin set: {has_plugin}, prepared model: {type(model).__name__}")
    acc.end_training()
    return text


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--case":  # inside torchrun
        rank, case = int(os.environ["RANK"]), sys.argv[2]
        text = case_torch(rank) if case == "torch" else case_accelerate(rank, cpu=case == "accel_cpu")
        with open(os.path.join(os.environ["REPRO_OUT"], f"rank{rank}.txt"), "w") as f:
            f.write(f"{case} rank {rank}: {text}")
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for case in ("torch", "accel_cpu", "accel_nocpu"):
        with tempfile.TemporaryDirectory() as tmp:
            env.update(REPRO_DIR=os.path.join(tmp, "optimizer"), REPRO_OUT=tmp)
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                   "2", __file__, "--case", case], env=env, capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode:
                print(f"{case}: FAILED\n{proc.stderr[-3000:]}")
                continue
            for rank in range(2):
                with open(os.path.join(tmp, f"rank{rank}.txt")) as f:
                    print(f.read())


if __name__ == "__main__":
    main()
