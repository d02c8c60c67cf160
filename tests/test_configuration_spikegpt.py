"""SpikeGPTConfig: every field checked (type and range, no coercion), run-time settings not saved, no context limit."""

import json

import pytest

from spikegpt import SpikeGPTConfig
from spikegpt.configuration_spikegpt import NO_CONTEXT_LIMIT

SMALL = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2)


@pytest.mark.parametrize("field, value", [
    ("hidden_size", "abc"), ("hidden_size", 0), ("hidden_size", 8.0), ("hidden_size", True),
    ("num_hidden_layers", 0), ("vocab_size", -3), ("intermediate_size", 0), ("context_length", "1024"),
    ("spiking", "false"), ("spiking", 1), ("detach_reset", "no"), ("use_cache", None), ("batch_invariant", "yes"),
    ("tau", 1.0), ("tau", "2"), ("threshold", 0.0), ("threshold", float("nan")), ("surrogate_alpha", -1.0),
    ("dropout", 1.0), ("layer_norm_epsilon", -1e-5), ("l2wrap_coef", -1.0), ("initializer_range", 0),
    ("v_reset", "0"), ("v_reset", float("inf")), ("surrogate", "nope"), ("kernel_backend", "cuda"),
    ("pad_token_id", 50), ("bos_token_id", -1), ("eos_token_id", [3, 99]), ("eos_token_id", "0"),
])
def test_bad_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SpikeGPTConfig\.{field} must be"):
        SpikeGPTConfig(**{**SMALL, field: value})


def test_good_values_are_kept_as_given():
    cfg = SpikeGPTConfig(**SMALL, v_reset=None, eos_token_id=[0, 3], layer_norm_epsilon=0.0, tau=1.5)
    assert cfg.intermediate_size == 64 and cfg.v_reset is None and cfg.eos_token_id == [0, 3]
    assert SpikeGPTConfig(**SMALL, intermediate_size=40).intermediate_size == 40


def test_a_config_mutated_after_construction_is_checked_when_a_model_is_built():
    from spikegpt import SpikeGPTForCausalLM

    cfg = SpikeGPTConfig(**SMALL)
    cfg.spiking = "false"
    with pytest.raises(ValueError, match="SpikeGPTConfig.spiking must be"):
        SpikeGPTForCausalLM(cfg)


def test_run_time_settings_are_not_saved_and_there_is_no_context_limit(tmp_path):
    cfg = SpikeGPTConfig(**SMALL, kernel_backend="torch", batch_invariant=True)
    cfg.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "kernel_backend" not in saved and "batch_invariant" not in saved and "max_position_embeddings" not in saved
    again = SpikeGPTConfig.from_pretrained(tmp_path)
    assert again.kernel_backend is None and again.batch_invariant is False
    assert cfg.max_position_embeddings == NO_CONTEXT_LIMIT == 2**63 - 1
    assert cfg.context_length == 1024  # the training block length of recipes, not a limit
