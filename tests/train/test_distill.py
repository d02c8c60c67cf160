"""Shadow training (spikegpt.train.distill): the loss against direct computations, the recipe end to end and resumed."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_overrides, tiny_run

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.spike_coding import SpikeEncoder
from spikegpt.train.checkpoint import list_checkpoints
from spikegpt.train.config import load_config
from spikegpt.train.distill import DistillationObjective, SpikeAnnealer, SpikeCountPenalty, distillation_kl
from spikegpt.train.distill import main as prepare_main
from spikegpt.train.metrics import read_metrics
from spikegpt.train.pretrain import main
from spikegpt.train.trainer import train


def _softmax64(z):
    z = z.double()
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def direct_kl(s, t, T):
    """T^2 * mean over positions of sum_v p log(p / q), p = softmax(t / T), q = softmax(s / T), from exp/sum."""
    p, q = _softmax64(t / T), _softmax64(s / T)
    return T * T * (p * (p.log() - q.log())).sum(-1).mean()


def direct_ce(logits, ids):
    lp = _softmax64(logits[:, :-1]).log()
    return -lp.gather(-1, ids[:, 1:, None]).mean()


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kl_and_its_gradient_closed_form(T):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 11, generator=g, requires_grad=True)
    t = 3 * torch.randn(2, 5, 11, generator=g)
    kl = distillation_kl(s, t, T)
    assert float(kl.detach()) == pytest.approx(float(direct_kl(s.detach(), t, T)), rel=1e-5)
    kl.backward()
    # d/ds of T^2 KL(p || softmax(s / T)) averaged over N positions = T (softmax(s / T) - p) / N
    want = T * (_softmax64(s.detach() / T) - _softmax64(t / T)) / 10
    assert torch.allclose(s.grad.double(), want, atol=1e-7)
    assert float(distillation_kl(t, t, T)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        distillation_kl(s, t[:, :4], T)


def _teacher_dir(tmp_path, vocab=40):
    torch.manual_seed(0)
    teacher = SpikeGPTForCausalLM(SpikeGPTConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, spiking=False))
    teacher.save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


@pytest.mark.parametrize("ce_weight,kl_weight,T", [(1.0, 1.0, 2.0), (0.3, 2.0, 1.0), (0.0, 1.0, 3.0)])
def test_objective_equals_direct_computation(tmp_path, ce_weight, kl_weight, T):
    src = _teacher_dir(tmp_path)
    student = SpikeGPTForCausalLM.from_pretrained(src, spiking=True)
    teacher = SpikeGPTForCausalLM.from_pretrained(src).eval()
    cfg = SimpleNamespace(objective_args={"teacher": str(src), "temperature": T, "ce_weight": ce_weight,
                                          "kl_weight": kl_weight}, grad_accum_steps=1, resume=None, output_dir=".")
    objective = DistillationObjective(cfg)
    ids = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(1))
    loss, extra = objective(student, {"input_ids": ids})
    with torch.no_grad():
        s, t = student(ids).logits, teacher(ids).logits
    want = ce_weight * direct_ce(s, ids) + kl_weight * direct_kl(s, t, T)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert extra["ce"] == pytest.approx(float(direct_ce(s, ids)), rel=1e-5)
    assert extra["kl"] == pytest.approx(float(direct_kl(s, t, T)), rel=1e-5)
    assert extra["teacher_ce"] == pytest.approx(float(direct_ce(t, ids)), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in objective.teacher.parameters())
    assert not objective.teacher.config.spiking


def test_objective_rejects_bad_settings(tmp_path):
    src = _teacher_dir(tmp_path)

    def cfg(**args):
        return SimpleNamespace(objective_args=args, grad_accum_steps=1, resume=None, output_dir=".")

    for args, match in [({}, "teacher"), ({"teacher": str(src), "temprature": 2}, "unknown"),
                        ({"teacher": str(src), "temperature": 0}, "temperature"),
                        ({"teacher": str(src), "ce_weight": 0, "kl_weight": 0}, "not both 0")]:
        with pytest.raises(ValueError, match=match):
            DistillationObjective(cfg(**args))
    objective = DistillationObjective(cfg(teacher=str(src)))
    non_spiking = SpikeGPTForCausalLM.from_pretrained(src)
    with pytest.raises(ValueError, match="must be spiking"):
        objective(non_spiking, {"input_ids": torch.zeros(1, 4, dtype=torch.long)})


def test_annealer_blends_in_training_only(tmp_path):
    src = _teacher_dir(tmp_path)
    student = SpikeGPTForCausalLM.from_pretrained(src, spiking=True)
    teacher = SpikeGPTForCausalLM.from_pretrained(src)
    ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        spiking = student.eval()(ids).logits
        plain = teacher.eval()(ids).logits
        annealer = SpikeAnnealer(student)
        assert len(annealer.handles) == 1 + 2 * 2  # the binary embedding and the two LIFs of each block
        annealer.lam = 0.0
        assert torch.allclose(student.train()(ids).logits, plain, atol=1e-5)  # lambda 0: the non-spiking model
        assert torch.equal(student.eval()(ids).logits, spiking)  # eval: always the true spiking model
        annealer.lam = 0.25  # the embedding blended directly: 0.25 H(E) + 0.75 E
        emb = student.model.emb.weight[ids]
        blended = student.train()(ids, output_hidden_states=True).hidden_states[0]
        torch.testing.assert_close(blended, 0.25 * (emb >= 0).to(emb.dtype) + 0.75 * emb)
        annealer.lam = 1.0
        assert torch.equal(student.train()(ids).logits, spiking)
        annealer.lam = 0.0
        annealer.remove()  # no hooks left: training mode is the spiking model again
        assert torch.equal(student.train()(ids).logits, spiking)
    with pytest.raises(ValueError, match="no spike sites"):
        SpikeAnnealer(torch.nn.Linear(2, 2))


def test_annealer_at_zero_turns_a_spike_driven_student_into_its_teacher(tmp_path):
    """With spike-coded Linear inputs too (spike_inputs): lambda 0 gives the non-spiking teacher's logits, lambda 1
    the spike-driven model, and every code is blended (x_hat = lam * vth * c + (1 - lam) * x)."""
    src = _teacher_dir(tmp_path)
    student = SpikeGPTForCausalLM.from_pretrained(src, spiking=True, spike_inputs="int3")
    teacher = SpikeGPTForCausalLM.from_pretrained(src)
    ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        spike_driven = student.eval()(ids).logits
        annealer = SpikeAnnealer(student)
        assert len(annealer.handles) == 1 + 2 * 2 + 2 * 7 + 1  # + seven codes per block and the head's
        annealer.lam = 0.0
        torch.testing.assert_close(student.train()(ids).logits, teacher.eval()(ids).logits, atol=1e-5, rtol=1e-5)
        annealer.lam = 1.0
        assert torch.equal(student.train()(ids).logits, spike_driven)
        annealer.remove()


def test_spike_count_penalty_is_the_accumulate_weighted_mean_count_and_reaches_the_gains(tmp_path):
    src = _teacher_dir(tmp_path)
    student = SpikeGPTForCausalLM.from_pretrained(src, spiking=True, spike_inputs="int3").train()
    penalty = SpikeCountPenalty(student)
    seen = {}

    def keep(name):
        def hook(module, args, out):
            seen[name] = out[0].detach()
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in student.named_modules() if isinstance(m, SpikeEncoder)]
    ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(3))
    student(ids)
    value = penalty.value()
    outs = {n: (student.get_submodule(n.rsplit(".codes.", 1)[0]).get_submodule(n.rsplit(".", 1)[1]).out_features
                if ".codes." in n else student.head.out_features) for n in seen}
    want = sum(outs[n] * seen[n].abs().mean() for n in seen) / sum(outs.values())
    torch.testing.assert_close(value, want)
    assert 0 < float(value.detach()) < 3
    value.backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for n, p in student.named_parameters() if n.endswith("gain"))
    assert penalty.value().item() == 0  # consumed
    student.eval()(ids)
    assert penalty.value().item() == 0  # eval forwards add nothing
    for h in hooks:
        h.remove()
    penalty.remove()
    with pytest.raises(ValueError, match="spike-driven student"):
        SpikeCountPenalty(SpikeGPTForCausalLM.from_pretrained(src, spiking=True))


def _recipe(corpus, out, teacher, init, **extra):
    return ["--config", "configs/distill-tiny.yaml", *tiny_overrides(
        corpus, out, init_from=str(init), context_length=32, **{"objective_args.teacher": str(teacher)}, **extra)]


def test_recipe_end_to_end_and_resume(tmp_path, corpus_file):
    """Teacher (non-spiking, trained here) -> student prepared with calibration -> distilled through
    spikegpt train with annealing; a run stopped at step 3 and resumed equals the uninterrupted run."""
    teacher = tmp_path / "teacher"
    t = main(tiny_run(corpus_file, teacher, max_steps=4, **{"model.spiking": False}))
    assert t["step"] == 4
    init = tmp_path / "init"
    prepare_main(_recipe(corpus_file, tmp_path / "unused", teacher, init, **{"objective_args.calibrate_batches": 1}))
    student = SpikeGPTForCausalLM.from_pretrained(init)
    assert student.config.spiking and (init / "tokenizer.json").is_file()
    with pytest.raises(ValueError, match="already holds a model"):
        prepare_main(_recipe(corpus_file, tmp_path / "unused", teacher, init))

    extra = {"max_steps": 6, "objective_args.anneal_steps": 4}
    ref = main(_recipe(corpus_file, tmp_path / "a", teacher, init, **extra))
    assert ref["step"] == 6 and ref["val_loss"] is not None
    records = read_metrics(tmp_path / "a" / "metrics.jsonl", "train")
    assert [r["spike_lambda"] for r in records] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert all({"ce", "kl", "teacher_ce"} <= set(r) for r in records)
    assert all(r["loss"] == pytest.approx(r["ce"] + r["kl"], rel=1e-5) for r in records)
    assert SpikeGPTForCausalLM.from_pretrained(tmp_path / "a").config.spiking

    def ctrl_c_at_3(step, logs):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = load_config("configs/distill-tiny.yaml", _recipe(corpus_file, tmp_path / "b", teacher, init, **extra)[2:])
    stopped = train(cfg, callbacks=[ctrl_c_at_3])
    assert stopped["interrupted"] and [s for s, _ in list_checkpoints(tmp_path / "b")] == [3]
    resumed = main(_recipe(corpus_file, tmp_path / "b", teacher, init, resume="latest", **extra))
    assert resumed["step"] == 6
    got = read_metrics(tmp_path / "b" / "metrics.jsonl", "train")
    assert [(r["step"], r["loss"], r["spike_lambda"]) for r in got] == [
        (r["step"], r["loss"], r["spike_lambda"]) for r in records]
    assert resumed["val_loss"] == ref["val_loss"]
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
