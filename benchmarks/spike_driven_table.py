"""Spike-driven SpikeGPT on CPU: what spike-coding every Linear input costs in quality, what it saves in energy.

    python benchmarks/spike_driven_table.py [--teacher_steps 400] [--steps 200] [--long 3] [--jobs 2]

Rows: RWKV-4 (spiking off), SpikeGPT as published (spike_inputs none), and the spike-driven variants lif, binary,
ternary, int3, int7, each trained from scratch and distilled from the non-spiking teacher through the shadow-training
path (``python -m spikegpt.train.distill`` then ``configs/distill-tiny.yaml``: CE + T^2 KL, T = 2). Every run goes
through ``spikegpt train`` at the shadow-training shape (4 blocks x 128, context 64, BPE 4096 on the built-in corpus,
batch 16, Adam 2e-3 -> 1e-4, one thread each, ``--jobs`` at a time):

- teacher: RWKV-4 for ``teacher_steps``; the RWKV-4 rows are it (``T`` steps), RWKV-4 from scratch for ``steps``
  (the scratch rows' budget) and for ``teacher_steps + steps`` (the distilled rows' total budget);
- scratch: each variant for ``steps``; distilled: the teacher's weights with the variant's spikes and codes, then
  ``steps`` of distillation (``teacher_steps + steps`` in all);
- ``--tuned``: variants distilled once more with one setting changed, e.g. ``ternary:model.spike_gain=2.6`` (a
  higher initial threshold: sparser codes) or ``ternary:objective_args.spike_penalty=4`` (the accumulate-weighted
  mean spike count of the Linear inputs added to the loss): the quality / energy trade-off;
- ``--long K``: the best distilled variant (lowest validation loss among the spike-driven ones) and its RWKV-4
  comparator once more with K times the steps.

Columns: validation loss (nats/token) and bits per character on the trainer's held-out documents (state carried
across windows), the loss gap to the RWKV-4 row of equal training budget (``gap``) and, for the distilled rows, to
the RWKV-4 teacher they were distilled from (``vs teacher``), the same on a second text the
training corpus does not contain (numpy's docstrings, from the installed numpy: not CPython documentation), the mean
nonzero fraction of the Linear layers' inputs (1 where they read real values), the honest transformer / model
energy ratio of ``spikegpt.tools.energy`` (same text, same context: the model's 64), and batch-1 generation tokens/s
on one thread (median of 3). Runs whose directory already holds a final model are reused. Results go to
``<out>/results.json`` and the table to stdout.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shadow_tiny import ROOT, SHAPE, done, run, train  # noqa: E402  (the shared runner of the shadow-training study)

VARIANTS = ["none", "lif", "binary", "ternary", "int3", "int7"]
LABELS = {"rwkv4": "RWKV-4 (spiking off)", "none": "SpikeGPT as published", "lif": "spike-driven LIF-binary",
          "binary": "spike-driven binary", "ternary": "spike-driven ternary", "int3": "spike-driven int3",
          "int7": "spike-driven int7"}
HELDOUT_CHARS = 40_000


def heldout_documents() -> list[str]:
    """The second text: docstrings of numpy's top-level functions, in name order, up to HELDOUT_CHARS characters."""
    import numpy as np

    docs, n = [], 0
    for name in sorted(dir(np)):
        obj = getattr(np, name)
        doc = inspect.getdoc(obj) if not name.startswith("_") and callable(obj) else None
        if doc and n < HELDOUT_CHARS:
            docs.append(doc)
            n += len(doc)
    return docs


def distill(out: Path, teacher: Path, spike_inputs: str, steps: int, *extra: str) -> float:
    """Prepare the student (the teacher's weights with spiking and ``spike_inputs``) and distil it. ``extra``:
    further recipe overrides; ``--model.*`` ones change the student, so it gets its own init directory."""
    model_extra = [a for i, a in enumerate(extra) if extra[i - (i % 2)].startswith("--model.")]
    pairs = zip(model_extra[::2], model_extra[1::2])
    init = out.parent / "-".join(["init", spike_inputs, *(f"{k.split('.')[-1]}{v}" for k, v in pairs)])
    recipe = ["--init_from", str(init), "--objective_args.teacher", str(teacher), "--model.spike_inputs", spike_inputs,
              *model_extra]
    if not done(init):
        run([sys.executable, "-m", "spikegpt.train.distill", "--config", "configs/distill-tiny.yaml", "--force",
             *recipe])
    return train(out, "configs/distill-tiny.yaml", steps, *recipe, *[a for a in extra if a not in model_extra])


def scratch(out: Path, teacher: Path, spike_inputs: str | None, steps: int) -> float:
    spiking = ["--spiking", "false"] if spike_inputs is None else ["--spiking", "true", "--model.spike_inputs",
                                                                    spike_inputs]
    return train(out, "configs/tiny.yaml", steps, *spiking, "--tokenizer", str(teacher), *SHAPE)


def measure(model_dir: Path, teacher_dir: Path, heldout: list[str]) -> dict:
    """Validation and held-out loss / bpc, Linear-input sparsity, honest energy ratio, generation tokens/s."""
    import torch
    from transformers import AutoTokenizer

    from spikegpt import SpikeGPTForCausalLM
    from spikegpt.spike_coding import SpikeEncoder
    from spikegpt.tools.energy import energy_report
    from spikegpt.train.config import load_config
    from spikegpt.train.data import TextSource, validation_documents
    from spikegpt.train.evaluation import EvalResult, build_streams, stream_nats
    from spikegpt.train.tokenization import encoder

    torch.set_num_threads(1)
    cfg = load_config(str(teacher_dir / "train_config.yaml"))
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    model = SpikeGPTForCausalLM.from_pretrained(model_dir).eval()
    window = 64
    source = TextSource(cfg.data, text_field=cfg.text_field, text_unit=cfg.text_unit)
    encode = encoder(tok)

    def loss_bpc(docs):
        streams = build_streams(docs, int(tok.eos_token_id), cfg.eval_batch_size)
        with torch.no_grad():
            nats, count = stream_nats(model, streams.streams, window, cfg.eval_batch_size)
        r = EvalResult(nats=nats, tokens=count, characters=streams.characters, documents=streams.documents)
        return r.loss, r.bpc, streams

    val_loss, val_bpc, streams = loss_bpc(validation_documents(source, cfg.seed, cfg.val_fraction, cfg.val_max_tokens,
                                                               encode))
    held_loss, held_bpc, _ = loss_bpc([(d, encode(d)) for d in heldout])
    text = [s[:512] for s in streams.streams[:8]]
    nonzero = []
    hooks = [m.register_forward_hook(lambda m, a, o: nonzero.append(o[0].ne(0).double().mean().item()))
             for m in model.modules() if isinstance(m, SpikeEncoder)]
    with torch.no_grad():
        for s in text:
            model(torch.tensor([s]))
    for h in hooks:
        h.remove()
    report = energy_report(model, text, window=window, context=window)
    prompt = torch.tensor([streams.streams[0][:16]])
    speeds = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=64, do_sample=False, min_new_tokens=64)
        speeds.append((out.shape[1] - prompt.shape[1]) / (time.perf_counter() - t0))
    return {
        "val_loss": val_loss, "val_bpc": val_bpc, "heldout_loss": held_loss, "heldout_bpc": held_bpc,
        "linear_input_nonzero": statistics.fmean(nonzero) if nonzero else 1.0,
        "energy_ratio": report["ratios"]["transformer_over_spikegpt_energy"],
        "tokens_per_s": statistics.median(speeds),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher_steps", type=int, default=400)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--long", type=int, default=3, help="steps multiplier of the longer run (0: none)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--tuned", default="ternary:model.spike_gain=2.6,ternary:model.spike_gain=3.2,"
                                      "ternary:objective_args.spike_penalty=4",
                   help="comma-separated variant:setting=value rows, each distilled with that one override")
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time (one thread each)")
    p.add_argument("--out", default="runs/sd_table")
    args = p.parse_args()
    out = ROOT / args.out
    T, D = args.teacher_steps, args.steps
    variants = args.variants.split(",")
    teacher = out / "teacher"
    train(teacher, "configs/tiny.yaml", T, "--spiking", "false", *SHAPE)  # reused when it exists

    jobs = {("rwkv4", "scratch", D): lambda: scratch(out / f"rwkv4-scratch-{D}", teacher, None, D),
            ("rwkv4", "scratch", T + D): lambda: scratch(out / f"rwkv4-scratch-{T + D}", teacher, None, T + D)}
    tuned = [(item.split(":", 1)[0], *item.split(":", 1)[1].split("=", 1)) for item in args.tuned.split(",") if item]
    for v in variants:
        jobs[(v, "scratch", D)] = lambda v=v: scratch(out / f"{v}-scratch-{D}", teacher, v, D)
        jobs[(v, "distilled", T + D)] = lambda v=v: distill(out / f"{v}-distill-{D}", teacher, v, D)
    for v, setting, value in tuned:
        name = f"{setting.split('.')[-1]}={value}"
        jobs[(v, name, T + D)] = lambda v=v, s=setting, x=value, n=name: distill(
            out / f"{v}-distill-{n.replace('=', '')}-{D}", teacher, v, D, f"--{s}", x)
    with ThreadPoolExecutor(args.jobs) as pool:
        times = dict(zip(jobs, pool.map(lambda f: f(), jobs.values())))
    dirs = {("rwkv4", "teacher", T): teacher, ("rwkv4", "scratch", D): out / f"rwkv4-scratch-{D}",
            ("rwkv4", "scratch", T + D): out / f"rwkv4-scratch-{T + D}"}
    for v in variants:
        dirs[(v, "scratch", D)] = out / f"{v}-scratch-{D}"
        dirs[(v, "distilled", T + D)] = out / f"{v}-distill-{D}"
    for v, setting, value in tuned:
        name = f"{setting.split('.')[-1]}={value}"
        dirs[(v, name, T + D)] = out / f"{v}-distill-{name.replace('=', '')}-{D}"
    heldout = heldout_documents()
    rows = {key: measure(d, teacher, heldout) for key, d in dirs.items()}

    if args.long:
        K = args.long
        spiking = [k for k in rows if k[1] == "distilled" and k[0] not in ("none",)]
        best = min(spiking, key=lambda k: rows[k]["val_loss"])[0]
        long_jobs = {(best, "distilled", T + K * D): lambda: distill(out / f"{best}-distill-{K * D}", teacher, best,
                                                                       K * D),
                     (best, "scratch", K * D): lambda: scratch(out / f"{best}-scratch-{K * D}", teacher, best, K * D),
                     ("rwkv4", "scratch", K * D): lambda: scratch(out / f"rwkv4-scratch-{K * D}", teacher, None, K * D),
                     ("rwkv4", "scratch", T + K * D): lambda: scratch(out / f"rwkv4-scratch-{T + K * D}", teacher,
                                                                       None, T + K * D)}
        with ThreadPoolExecutor(args.jobs) as pool:
            times.update(zip(long_jobs, pool.map(lambda f: f(), long_jobs.values())))
        for key in long_jobs:
            name = {"distilled": f"{best}-distill-{K * D}", "scratch": f"{key[0]}-scratch-{key[2]}"}[key[1]]
            rows[key] = measure(out / name, teacher, heldout)

    def reference(key):
        """The RWKV-4 row of the same training budget (steps in all)."""
        steps = key[2]
        ref = ("rwkv4", "teacher", T) if steps == T else ("rwkv4", "scratch", steps)
        return rows.get(ref)

    print(f"\nspike-driven SpikeGPT, tiny (4 x 128, ctx 64, BPE 4096, batch 16); teacher {T} steps, students {D}")
    head = (f"{'model':26s} {'training':>20s} {'steps':>6s} {'val loss':>9s} {'val bpc':>8s} {'gap':>7s} "
            f"{'vs teacher':>10s} {'held loss':>9s} {'held bpc':>8s} {'held gap':>8s} {'nonzero':>8s} {'energy':>7s} "
            f"{'tok/s':>6s}")
    print(head)
    print("-" * len(head))
    table = []
    for key in sorted(rows, key=lambda k: (k[2], ["rwkv4", *VARIANTS].index(k[0]), k[1])):
        r, ref = rows[key], reference(key)
        gap = (r["val_loss"] / ref["val_loss"] - 1) if ref else float("nan")
        hgap = (r["heldout_loss"] / ref["heldout_loss"] - 1) if ref else float("nan")
        teacher_row = rows[("rwkv4", "teacher", T)]
        distilled = key[1] not in ("scratch", "teacher")
        tgap = r["val_loss"] / teacher_row["val_loss"] - 1 if distilled else float("nan")
        table.append({"variant": key[0], "training": key[1], "steps": key[2], **r, "gap": gap, "heldout_gap": hgap,
                      "gap_to_teacher": tgap})
        tshow = "-" if tgap != tgap else f"{tgap:+.1%}"
        print(f"{LABELS[key[0]]:26s} {key[1]:>20s} {key[2]:6d} {r['val_loss']:9.4f} {r['val_bpc']:8.4f} "
              f"{gap:+7.1%} {tshow:>10s} {r['heldout_loss']:9.4f} {r['heldout_bpc']:8.4f} {hgap:+8.1%} "
              f"{r['linear_input_nonzero']:8.3f} {r['energy_ratio']:6.2f}x {r['tokens_per_s']:6.1f}")
    print("wall time per run (s):", json.dumps({"/".join(map(str, k)): round(v, 1) for k, v in times.items()}))
    (out / "results.json").write_text(json.dumps({"rows": table}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
