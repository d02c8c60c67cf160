"""Shadow training on CPU, end to end: does distilling a converted non-spiking model beat spiking from scratch?

    python benchmarks/shadow_tiny.py [--teacher_steps 400] [--distill_steps 200] [--out runs/shadow_tiny]

Every training run goes through ``spikegpt train`` (the students through ``configs/distill-tiny.yaml``):

1. teacher: ``configs/tiny.yaml`` with ``spiking: false`` (RWKV-4: 4 blocks x 128, context 64, BPE 4096)
   for ``teacher_steps``;
2. students: the teacher's weights with spiking on (``python -m spikegpt.train.distill`` prepares them), distilled for
   ``distill_steps`` with CE + T^2 KL (T = 2), in variants: plain, with the LIF input calibration, with
   spike annealing over the first quarter, and CE only (the converted init without the teacher's KL);
3. baselines: the same spiking model trained from scratch (``configs/tiny.yaml``, the teacher's tokenizer)
   for ``distill_steps`` (equal student steps) and for ``teacher_steps + distill_steps`` (equal total steps).

All use the same optimiser settings (Adam, lr 2e-3 -> 1e-4 cosine, 20 warmup steps, batch 16 x 64) and one
thread each (the 2-core machine is shared). Every model is then evaluated here by the trainer's own
validation (same held-out documents, state carried across windows), and the table printed: validation loss
(nats/token) and bits per character, the firing rates of the spiking models, and the wall time of each run.
Runs whose output directory already holds a final model are reused (delete the directory to redo one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ["--model.hidden_size", "128", "--model.num_hidden_layers", "4", "--model.context_length", "64"]
COMMON = ["--num_threads", "1", "--progress", "false", "--tensorboard", "false", "--eval_interval", "0",
          "--sample_interval", "0", "--sample_max_new_tokens", "16", "--save_interval", "0", "--batch_size", "16",
          "--lr", "2e-3", "--min_lr", "1e-4", "--warmup_steps", "20", "--log_interval", "20"]


def run(cmd: list[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def done(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def train(out: Path, config: str, steps: int, *extra: str) -> float:
    if done(out):
        print(f"reusing {out}", flush=True)
        return float("nan")
    return run([sys.executable, "-m", "spikegpt.train.pretrain", "--config", config, "--output_dir", str(out),
                "--overwrite_output_dir", "true", "--max_steps", str(steps), *COMMON, *extra])


def evaluate(model_dir: Path, teacher_dir: Path) -> dict:
    """Validation loss / bpc as the trainer computes it, and firing rates for spiking models."""
    import torch
    from transformers import AutoTokenizer

    from spikegpt import SpikeGPTForCausalLM
    from spikegpt.interop.rwkv import firing_rates
    from spikegpt.train.config import load_config
    from spikegpt.train.data import TextSource, validation_documents
    from spikegpt.train.evaluation import EvalResult, build_streams, stream_nats
    from spikegpt.train.tokenization import encoder

    torch.set_num_threads(1)
    cfg = load_config(str(teacher_dir / "train_config.yaml"))
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    model = SpikeGPTForCausalLM.from_pretrained(model_dir).eval()
    source = TextSource(cfg.data, text_field=cfg.text_field, text_unit=cfg.text_unit)
    docs = validation_documents(source, cfg.seed, cfg.val_fraction, cfg.val_max_tokens, encoder(tok))
    streams = build_streams(docs, int(tok.eos_token_id), cfg.eval_batch_size)
    nats, count = stream_nats(model, streams.streams, 64, cfg.eval_batch_size)
    res = EvalResult(nats=nats, tokens=count, characters=streams.characters, documents=streams.documents)
    row = {"val_loss": res.loss, "val_bpc": res.bpc, "firing_rate": None}
    if model.config.spiking:
        ids = torch.tensor([s[:64] for s in streams.streams if len(s) >= 64][:8])
        row["firing_rate"] = firing_rates(model, ids)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher_steps", type=int, default=400)
    p.add_argument("--distill_steps", type=int, default=200)
    p.add_argument("--out", default="runs/shadow_tiny")
    p.add_argument("--variants", default="plain,calibrated,annealed,ce_only")
    args = p.parse_args()
    out = ROOT / args.out
    T, D = args.teacher_steps, args.distill_steps
    times: dict[str, float] = {}
    teacher = out / "teacher"
    times["teacher"] = train(teacher, "configs/tiny.yaml", T, "--spiking", "false", *SHAPE)

    variants = {
        "plain": [],
        "calibrated": ["--objective_args.calibrate_batches", "4"],
        "annealed": ["--objective_args.anneal_steps", str(max(D // 4, 1))],
        "ce_only": ["--objective_args.kl_weight", "0"],
    }
    rows: dict[str, dict] = {"teacher (non-spiking)": {**evaluate(teacher, teacher), "steps": T}}
    for name in args.variants.split(","):
        init = out / f"init-{'calibrated' if name == 'calibrated' else 'plain'}"
        recipe = ["--init_from", str(init), "--objective_args.teacher", str(teacher), *variants[name]]
        if not done(init):
            run([sys.executable, "-m", "spikegpt.train.distill", "--config", "configs/distill-tiny.yaml", "--force",
                 *recipe])
        label = f"converted, before training ({'calibrated' if name == 'calibrated' else 'plain'})"
        if label not in rows:
            rows[label] = {**evaluate(init, teacher), "steps": 0}
        d = out / f"distill-{name}"
        times[d.name] = train(d, "configs/distill-tiny.yaml", D, *recipe)
        rows[f"distilled: {name}"] = {**evaluate(d, teacher), "steps": D}
    for steps in (D, T + D):
        d = out / f"scratch-{steps}"
        times[d.name] = train(d, "configs/tiny.yaml", steps, "--spiking", "true", "--tokenizer", str(teacher), *SHAPE)
        rows[f"spiking from scratch, {steps} steps"] = {**evaluate(d, teacher), "steps": steps}

    print(f"\nshadow training, tiny (4 x 128, ctx 64, BPE 4096, batch 16), teacher {T} steps, students {D} steps")
    print(f"{'model':48s} {'steps':>6s} {'val loss':>9s} {'val bpc':>8s} {'firing':>7s}")
    for name, r in rows.items():
        fr = r["firing_rate"]
        rate = f"{fr['mean']:.3f}" if fr else "-"
        print(f"{name:48s} {r['steps']:6d} {r['val_loss']:9.4f} {r['val_bpc']:8.4f} {rate:>7s}")
    print("wall time per run (s):", json.dumps({k: round(v, 1) for k, v in times.items()}))
    (out / "results.json").write_text(json.dumps({"rows": rows, "times": times}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
