from pathlib import Path

import pytest
import yaml

from spikegpt.train.config import TrainConfig, load_config, parse_overrides, save_config

REPO = Path(__file__).resolve().parents[2]


def test_overrides_parse_types_and_forms(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"max_steps": 10, "model": {"hidden_size": 64, "spiking": True}}))
    cfg = load_config(recipe, ["--max_steps", "20", "--lr=1e-3", "--model.num_hidden_layers", "3",
                               "--spiking", "false", "--data", "123", "--resume", "--objective_args.t", "2.5"])
    assert cfg.max_steps == 20 and isinstance(cfg.max_steps, int)
    assert cfg.lr == pytest.approx(1e-3) and isinstance(cfg.lr, float)
    assert cfg.model == {"hidden_size": 64, "spiking": False, "num_hidden_layers": 3}
    assert cfg.data == "123"  # strings stay verbatim
    assert cfg.resume == "true"  # a bare flag means true
    assert cfg.objective_args == {"t": 2.5}


def test_parse_overrides_rejects_positional():
    with pytest.raises(ValueError, match="expected --key"):
        parse_overrides(["max_steps", "3"])


@pytest.mark.parametrize(
    "args, match",
    [
        (["--max_stepz", "3"], "unknown config key --max_stepz"),
        (["--max_steps", "2.5"], "max_steps must be an integer"),
        (["--max_steps", "0"], "max_steps must be >= 1"),
        (["--progress", "maybe"], "progress must be true or false"),
        (["--val_fraction", "1.5"], "val_fraction"),
        (["--optimizer", "sgd"], "optimizer"),
        (["--nosuch.key", "1"], "unknown config section"),
    ],
)
def test_bad_overrides_raise_value_error(args, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, args)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config(None, ["--max_steps", "7", "--model.hidden_size", "48", "--data", "x.jsonl"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("name", ["tiny", "tiny-nonspiking", "spikegpt-46m-enwik8", "spikegpt-216m-owt2"])
def test_shipped_recipes_load_and_build_a_model_config(name):
    import spikegpt

    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert isinstance(cfg, TrainConfig)
    spikegpt.SpikeGPTConfig(**cfg.model)  # every model key is a SpikeGPTConfig argument


def test_nonspiking_recipe_differs_from_tiny_only_in_spiking_and_output_dir():
    a = load_config(REPO / "configs" / "tiny.yaml").to_dict()
    b = load_config(REPO / "configs" / "tiny-nonspiking.yaml").to_dict()
    assert a["model"].pop("spiking") is True and b["model"].pop("spiking") is False
    a.pop("output_dir"), b.pop("output_dir")
    assert a == b
