import pytest

from pipeline.core import config


def test_defaults_apply_the_default_preset():
    cfg = config.resolve({})
    assert cfg["training"]["preset"] == "default"
    for key, value in config.TRAINING_PRESETS["default"].items():
        assert cfg["training"][key] == value


def test_an13331_preset_is_the_notes_recipe_and_keys_override_it():
    cfg = config.resolve({"training": {"preset": "an13331", "epochs": 3}})
    t = cfg["training"]
    assert (t["optimizer"], t["lr"], t["batch_size"], t["augment"]) == ("adam", 0.001, 16, False)
    assert t["epochs"] == 3


def test_repository_configs_are_valid():
    for path in (config.ROOT / "pipeline.toml", config.ROOT / "configs" / "smoke.toml"):
        config.load(path, environ={})


@pytest.mark.parametrize("raw, words", [
    ({"training": {"learning_rate": 0.1}}, ["training.learning_rate", "valid keys", "lr"]),
    ({"trainig": {}}, ["[trainig]", "valid sections", "training"]),
    ({"training": {"epochs": "15"}}, ["training.epochs", "expected int"]),
    ({"training": {"lr": 0.0}}, ["training.lr", "must be > 0"]),
    ({"training": {"lr": -1}}, ["training.lr", "must be > 0"]),
    ({"training": {"epochs": 0}}, ["training.epochs", ">= 1"]),
    ({"training": {"batch_size": 0}}, ["training.batch_size", ">= 1"]),
    ({"training": {"preset": "fast"}}, ["training.preset", "'an13331'", "'default'"]),
    ({"firmware": {"boards": ["rt1170"]}}, ["rt1170", "rt1060", "rt685_m33", "boards/<name>.toml"]),
    ({"quantization": {"backend": "tflite"}}, ["quantization.backend", "'builtin'", "'glow'"]),
    ({"model": {"channels": [32, 64]}}, ["model.channels", "four positive integers"]),
    ({"training": {"precision": "fp16"}}, ["training.precision", "'bf16'", "'fp32'"]),
    ({"training": {"distillation": 1.5}}, ["training.distillation", "<= 1.0"]),
    ({"teacher": {"precision": "int8"}}, ["teacher.precision", "'bf16'", "'fp32'"]),
    ({"teacher": {"channels": [64]}}, ["teacher.channels", "two or more positive integers"]),
    ({"teacher": {"distillation": 0.5}}, ["teacher.distillation", "valid keys in [teacher]"]),
])
def test_bad_config_names_the_key_and_the_choices(raw, words):
    with pytest.raises(config.ConfigError) as err:
        config.resolve(raw, origin="my.toml")
    message = str(err.value)
    assert message.startswith("my.toml")
    for word in words:
        assert word in message


def test_dataset_source_environment_overrides_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[dataset]\nsource = "official"\n')
    assert config.load(path, environ={"DATASET_SOURCE": "/data/x"})["dataset"]["source"] == "/data/x"
    assert config.load(path, environ={})["dataset"]["source"] == "official"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(bad)


def test_subset_picks_sections_and_keys():
    cfg = config.resolve({})
    picked = config.subset(cfg, "export", "model.channels")
    assert picked == {"export": cfg["export"], "model.channels": [32, 32, 64, 128]}
