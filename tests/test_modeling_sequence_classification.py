"""SpikeGPTForSequenceClassification: last-real-token pooling, losses, loading from a causal LM, Auto class."""

import pytest
import torch
import torch.nn.functional as F
from interop_helpers import tiny_model
from transformers import AutoModelForSequenceClassification

from spikegpt import SpikeGPTForSequenceClassification


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    tiny_model(vocab_size=50, hidden_size=24, num_hidden_layers=2, dtype=torch.float64).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clf(lm_dir):
    model = SpikeGPTForSequenceClassification.from_pretrained(lm_dir, num_labels=3, dtype=torch.float64)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    return model.eval()


def alone(clf, row):
    """Logits of one unpadded sequence, from the base model's last hidden state and the score weights."""
    with torch.no_grad():
        h = clf.model(torch.tensor([row])).last_hidden_state[0, -1]
    return h @ clf.score.weight.T


def test_loads_lm_weights_and_starts_a_fresh_head(lm_dir, clf):
    from spikegpt import SpikeGPTForCausalLM

    lm = SpikeGPTForCausalLM.from_pretrained(lm_dir, dtype=torch.float64)
    for k, v in lm.model.state_dict().items():
        torch.testing.assert_close(clf.model.state_dict()[k], v, rtol=0, atol=0)
    assert clf.score.weight.shape == (3, 24)
    auto = AutoModelForSequenceClassification.from_pretrained(lm_dir, num_labels=2)
    assert isinstance(auto, SpikeGPTForSequenceClassification) and auto.num_labels == 2
    assert 0 < auto.score.weight.std() < 0.1  # small init: near-uniform predictions at the start


@pytest.mark.parametrize("side", ["right", "left"])
def test_pools_the_last_real_token_with_any_padding(clf, side):
    rows = [[5, 7, 9, 11, 2, 3], [4, 4, 8], [1]]
    T = max(map(len, rows))
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    with torch.no_grad():
        logits = clf(ids, attention_mask=mask).logits
    for i, r in enumerate(rows):
        torch.testing.assert_close(logits[i], alone(clf, r), rtol=1e-9, atol=1e-9)


def test_pad_token_id_marks_padding_when_no_mask(clf):
    rows = [[5, 7, 9, 11], [4, 8]]
    ids = torch.tensor([[5, 7, 9, 11], [4, 8, 0, 0]])
    clf.config.pad_token_id = 0
    try:
        with torch.no_grad():
            logits = clf(ids).logits
    finally:
        clf.config.pad_token_id = None
    for i, r in enumerate(rows):
        torch.testing.assert_close(logits[i], alone(clf, r), rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # no mask, no pad id: nothing is padding, the last position is pooled
        torch.testing.assert_close(clf(ids[1:]).logits[0], alone(clf, [4, 8, 0, 0]), rtol=1e-9, atol=1e-9)


def test_losses_follow_problem_type(clf):
    ids = torch.tensor([[5, 7, 9], [4, 8, 1]])
    with torch.no_grad():
        logits = clf(ids).logits
        y = torch.tensor([2, 0])
        clf.config.problem_type = None
        out = clf(ids, labels=y)
        assert clf.config.problem_type == "single_label_classification"
        torch.testing.assert_close(out.loss, F.cross_entropy(logits, y).float())
        clf.config.problem_type = "multi_label_classification"
        yy = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
        torch.testing.assert_close(clf(ids, labels=yy).loss, F.binary_cross_entropy_with_logits(logits, yy).float())
        clf.config.problem_type = "regression"
        torch.testing.assert_close(clf(ids, labels=yy).loss, F.mse_loss(logits, yy).float())
        clf.config.problem_type = "single_label_classification"
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            clf(ids, labels=torch.tensor([3, 0]))
        assert clf(ids, labels=torch.tensor([-100, 1])).loss == pytest.approx(
            float(F.cross_entropy(logits[1:], torch.tensor([1]))))
    clf.config.problem_type = None


def test_gradients_reach_the_stack(clf):
    clf.train()
    try:
        loss = clf(torch.tensor([[5, 7, 9]]), labels=torch.tensor([1])).loss
        loss.backward()
        assert clf.score.weight.grad.abs().sum() > 0
        assert clf.model.blocks[0].att.key.weight.grad.abs().sum() > 0
    finally:
        clf.zero_grad(set_to_none=True)
        clf.eval()


def test_refuses_bad_inputs_and_checkpoints(clf, lm_dir, tmp_path):
    with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
        clf(torch.tensor([[1, 2], [3, 4]]), attention_mask=torch.tensor([[1, 1], [0, 0]]))
    clf.save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match="score.weight"):
        SpikeGPTForSequenceClassification.from_pretrained(tmp_path / "clf", num_labels=5)
    again = SpikeGPTForSequenceClassification.from_pretrained(tmp_path / "clf", num_labels=5,
                                                              ignore_mismatched_sizes=True)
    assert again.score.weight.shape == (5, 24)
    from safetensors.torch import load_file, save_file

    sd = load_file(lm_dir / "model.safetensors")
    del sd["model.blocks.1.ffn.key.weight"]
    (tmp_path / "broken").mkdir()
    save_file(sd, tmp_path / "broken" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "broken" / "config.json").write_text((lm_dir / "config.json").read_text())
    with pytest.raises(ValueError, match=r"model\.blocks\.1\.ffn\.key\.weight"):
        SpikeGPTForSequenceClassification.from_pretrained(tmp_path / "broken", num_labels=2)
