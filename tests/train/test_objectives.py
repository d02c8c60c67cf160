import pytest
from train_helpers import tiny_run

from spikegpt.train.config import load_config
from spikegpt.train.metrics import read_metrics
from spikegpt.train.objectives import build_objective
from spikegpt.train.pretrain import main


def test_unknown_objective_is_a_value_error():
    with pytest.raises(ValueError, match="unknown objective 'nosuch'"):
        build_objective(load_config(None, ["--objective", "nosuch"]), None)
    with pytest.raises(ValueError, match="takes no objective_args"):
        build_objective(load_config(None, ["--objective_args.t", "1"]), None)


def test_a_plugged_in_objective_drives_training_and_logs_its_metrics(tmp_path, corpus_file):
    main(tiny_run(corpus_file, tmp_path / "o", max_steps=3, objective="train_helpers:HalfLossObjective",
                  **{"objective_args.scale": 0.5}))
    for rec in read_metrics(tmp_path / "o" / "metrics.jsonl", "train"):
        assert rec["loss"] == pytest.approx(0.5 * rec["full_loss"], rel=1e-6)
