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


def _recipe(tmp_path, model):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"max_steps": 10, "model": model}))
    return path


@pytest.mark.parametrize(
    "typo, valid", [("hiden_size", "hidden_size"), ("num_layers", "num_hidden_layers"), ("spikng", "spiking")]
)
def test_an_unknown_model_key_in_a_recipe_names_the_closest_valid_key(tmp_path, typo, valid):
    with pytest.raises(ValueError, match=f"unknown key '{typo}' in the model section: did you mean '{valid}'"):
        load_config(_recipe(tmp_path, {typo: 64}))


def test_unknown_model_keys_on_the_command_line_are_refused_the_same_way(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'hiden_size' in the model section: did you mean 'hidden_size'"):
        load_config(None, ["--model.hiden_size", "4"])
    recipe = _recipe(tmp_path, {"hidden_size": 64})
    with pytest.raises(ValueError, match=r"unknown config key --hiden_size: .*did you mean --hidden_size\?"):
        load_config(recipe, ["--hiden_size", "4"])  # the recipe has hidden_size: the bare form is valid
    with pytest.raises(ValueError, match=r"unknown config key --num_layers: .*did you mean --model.num_hidden_layers"):
        load_config(recipe, ["--num_layers", "4"])  # not in the recipe: set it as --model.num_hidden_layers


def test_every_config_argument_and_the_token_ids_are_valid_model_keys():
    import inspect

    from spikegpt import SpikeGPTConfig

    cfg = load_config(None, ["--model.pad_token_id", "0", "--model.bos_token_id", "1", "--model.eos_token_id", "1",
                             "--model.tie_word_embeddings", "false", "--model.intermediate_size", "96"])
    assert cfg.model["eos_token_id"] == 1 and cfg.model["tie_word_embeddings"] is False
    named = [n for n in inspect.signature(SpikeGPTConfig.__init__).parameters if n not in ("self", "kwargs")]
    for name in named:  # no argument of SpikeGPTConfig is refused as unknown (values may still be refused)
        try:
            load_config(None, [f"--model.{name}", "null"])
        except ValueError as e:
            assert "unknown key" not in str(e), name


@pytest.mark.parametrize(
    "model, field",
    [
        ({"spiking": "false"}, "spiking"),  # a YAML string, not a boolean
        ({"hidden_size": 0}, "hidden_size"),
        ({"tau": 1.0}, "tau"),
        ({"dropout": 1.5}, "dropout"),
        ({"surrogate": "nosuch"}, "surrogate"),
        ({"vocab_size": 10, "eos_token_id": 10}, "eos_token_id"),
    ],
)
def test_bad_model_values_are_refused_at_load_naming_the_field(tmp_path, model, field):
    with pytest.raises(ValueError, match=f"model section: SpikeGPTConfig.{field} must be"):
        load_config(_recipe(tmp_path, model))


def test_min_lr_above_lr_is_refused():
    with pytest.raises(ValueError, match=r"min_lr must not exceed lr .*min_lr 0.01 > lr 0.001"):
        load_config(None, ["--lr", "1e-3", "--min_lr", "1e-2"])
    assert load_config(None, ["--lr", "1e-3", "--min_lr", "1e-3"]).min_lr == 1e-3  # a flat floor is fine


def test_save_config_records_only_validated_settings(tmp_path):
    cfg = load_config(None, ["--model.hidden_size", "48"])
    cfg.model["hiden_size"] = 4  # changed after loading, past the check at load
    with pytest.raises(ValueError, match="hiden_size"):
        save_config(cfg, tmp_path / "c.yaml")
    assert not (tmp_path / "c.yaml").exists()
    cfg.model.pop("hiden_size")
    cfg.min_lr = 1.0
    with pytest.raises(ValueError, match="min_lr"):
        save_config(cfg, tmp_path / "c.yaml")
    assert not (tmp_path / "c.yaml").exists()
