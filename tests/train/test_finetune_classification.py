"""spikegpt.train.finetune_classification end to end on local CSV / JSONL files with a tiny model."""

import csv
import json
import random

import pytest
from interop_helpers import save_byte_tokenizer, tiny_model
from transformers import AutoModelForSequenceClassification

import spikegpt  # noqa: F401  (registers the Auto classes)
from spikegpt.train.finetune_classification import encode_labels, main

WORDS = "the spike neuron fires when its membrane crosses a threshold and resets".split()


def examples(n, seed):
    """Sentiment-like rows whose class is the closing mark: '!' -> pos, '?' -> neg."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + ("!" if label == "pos" else "?")
        rows.append({"sentence": text, "label": label})
    return rows


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    tiny_model(hidden_size=32, num_hidden_layers=1).save_pretrained(d)
    save_byte_tokenizer(d)
    return d


def test_finetunes_from_csv_and_saves_a_classifier(lm_dir, tmp_path, capsys):
    for name, rows in (("train.csv", examples(96, 0)), ("dev.csv", examples(40, 1))):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["sentence", "label"])
            w.writeheader()
            w.writerows(rows)
    out = tmp_path / "clf"
    result = main([
        "--model", str(lm_dir), "--data", str(tmp_path / "train.csv"), "--eval_data", str(tmp_path / "dev.csv"),
        "--epochs", "3", "--batch_size", "8", "--lr", "3e-3", "--output_dir", str(out), "--no_progress",
    ])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == result["steps"] == 36
    assert result["train_examples"] == 96 and result["eval_examples"] == 40
    assert result["train_loss"] < result["first_train_loss"]
    assert result["best_eval_accuracy"] >= 0.9  # the closing mark decides the class
    clf = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(clf).__name__ == "SpikeGPTForSequenceClassification"
    assert clf.config.id2label == {0: "neg", 1: "pos"}  # string labels in sorted order


def test_jsonl_with_held_out_fraction_and_integer_labels(lm_dir, tmp_path):
    rows = [{"text": r["sentence"], "label": int(r["label"] == "pos")} for r in examples(40, 2)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = main([
        "--model", str(lm_dir), "--data", str(tmp_path / "data.jsonl"), "--val_fraction", "0.25",
        "--max_steps", "3", "--batch_size", "8", "--output_dir", str(tmp_path / "o"), "--no_progress",
    ])
    assert result["steps"] == 3 and result["eval_examples"] == 10 and result["train_examples"] == 30
    assert 0.0 <= result["eval_accuracy"] <= 1.0


def test_bad_data_is_reported(lm_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        main(["--model", str(lm_dir), "--data", str(tmp_path / "missing.csv"), "--output_dir", str(tmp_path / "o")])
    (tmp_path / "d.csv").write_text("body,label\nhello,0\nworld,1\n")
    with pytest.raises(ValueError, match="text column 'sentence' not in the data"):
        main(["--model", str(lm_dir), "--data", str(tmp_path / "d.csv"), "--text_field", "sentence",
              "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="row 1: label 'maybe' is not one of"):
        encode_labels(["pos", "maybe"], ["neg", "pos"], 2, "training data")
    with pytest.raises(ValueError, match=r"label 2 outside \[0, 2\)"):
        encode_labels([0, 2], None, 2, "evaluation data")
