"""pipeline.toml: every knob of the pipeline, validated against one schema.

Unknown keys, wrong types and out-of-range values are errors that name the file, the key and the valid
choices. Training presets fill in the recipe; keys written in [training] override the preset.
"""
import copy
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pipeline import ROOT
from pipeline.model.numerics import PRECISIONS

BOARDS_DIR = ROOT / "boards"


class ConfigError(ValueError):
    """A configuration mistake, with a message that says how to fix it."""


@dataclass(frozen=True)
class Key:
    default: object
    kind: type
    choices: tuple = ()
    minimum: float | None = None      # inclusive
    above: float | None = None        # exclusive lower bound
    maximum: float | None = None      # inclusive
    help: str = ""


TRAINING_PRESETS = {
    # The app note's recipe, unchanged (float32 throughout, as PyTorch trains by default).
    "an13331": dict(optimizer="adam", lr=0.001, batch_size=16, epochs=15, schedule="constant", weight_decay=0.0,
                    augment=False, crop_padding=0, flip="random", whitening_init=False, label_smoothing=0.0,
                    ema_decay=0.0, precision="fp32", distillation=0.0, distillation_temperature=4.0),
    # Ours: same network, no longer to train than the note's; bf16 convolutions, flip + 2-pixel crop, SGD with a
    # one-cycle schedule, distilled from the teacher, the saved weights an exponential moving average. Measured
    # choices (whitening_init and alternating flips too): README, "Training recipe".
    "default": dict(optimizer="sgd", lr=0.08, batch_size=64, epochs=32, schedule="onecycle", weight_decay=5e-4,
                    augment=True, crop_padding=2, flip="random", whitening_init=False, label_smoothing=0.0,
                    ema_decay=0.999, precision="bf16", distillation=0.8, distillation_temperature=4.0),
}
RECIPE_KEYS = tuple(TRAINING_PRESETS["default"])
# The distillation teacher's recipe; any key written in [teacher] overrides it.
TEACHER_RECIPE = dict(optimizer="sgd", lr=0.2, batch_size=256, epochs=24, schedule="onecycle", weight_decay=5e-4,
                      augment=True, crop_padding=4, flip="random", whitening_init=False, label_smoothing=0.0,
                      ema_decay=0.99, precision="bf16", distillation=0.0, distillation_temperature=4.0)
# project.name becomes C symbols (<name>(), <NAME>_input) and file names (<name>.o, <name>.onnx).
NAME_RULE = re.compile(r"[a-z_][a-z0-9_]{0,31}")
C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "main".split())

SCHEMA = {
    "project": {
        "name": Key("cifar", str, help="network name: bundle symbols, file names (cifar.o, CIFAR_input)"),
        "version": Key("0.1.0", str),
        "build_dir": Key("build", str),
    },
    "dataset": {
        "source": Key("auto", str, help="'auto', 'official', or a path to cifar-10-python.tar.gz, an image-folder "
                                         "tree or a .tar/.tar.gz of {train,test}/<class>/*.png|jpg"),
        "validation_per_class": Key(150, int, minimum=1, help="held out from train: images + tuning + checks"),
        "train_per_class": Key(0, int, minimum=0, help="0 = all"),
        "test_per_class": Key(0, int, minimum=0, help="0 = all"),
        "images_per_class": Key(100, int, minimum=1, help="build/data/images/<class>/"),
        "tuning_per_class": Key(30, int, minimum=1, help="build/data/dataset-tuning/"),
        "seed": Key(0, int, minimum=0),
    },
    "model": {
        "channels": Key([32, 32, 64, 128], list, help="widths of the four conv blocks"),
    },
    "training": {
        "preset": Key("default", str, choices=tuple(TRAINING_PRESETS)),
        "optimizer": Key(None, str, choices=("adam", "sgd")),
        "lr": Key(None, float, above=0.0),
        "batch_size": Key(None, int, minimum=1),
        "epochs": Key(None, int, minimum=1),
        "schedule": Key(None, str, choices=("constant", "onecycle")),
        "weight_decay": Key(None, float, minimum=0.0),
        "augment": Key(None, bool, help="random horizontal flip and crop"),
        "crop_padding": Key(None, int, minimum=0, maximum=8, help="pixels of reflection padding before the "
                                                                   "random crop; 0 = flip only"),
        "flip": Key(None, str, choices=("random", "alternating"), help="with augment: mirror each image at "
                                                                        "random, or in every other epoch"),
        "whitening_init": Key(None, bool, help="start the first convolution as a whitening filter bank of the "
                                               "training images' patches"),
        "label_smoothing": Key(None, float, minimum=0.0, maximum=0.5),
        "ema_decay": Key(None, float, minimum=0.0, maximum=0.9999, help="save an exponential moving average of "
                                                                         "the weights; 0 = the last weights"),
        "precision": Key(None, str, choices=PRECISIONS, help="bf16: convolutions in bfloat16 under CPU autocast "
                                                             "(fp32 with a notice on a CPU without BF16)"),
        "distillation": Key(None, float, minimum=0.0, maximum=1.0, help="weight of the teacher's soft targets in "
                                                                        "the loss; 0 = labels only, no teacher"),
        "distillation_temperature": Key(None, float, above=0.0, help="softmax temperature of the soft targets"),
        "seed": Key(0, int, minimum=0),
        "threads": Key(2, int, minimum=1, help="torch threads; results are bit-identical for a fixed count"),
        "init_from": Key("", str, help="start from this .pth (transfer learning / retraining)"),
    },
    "teacher": {
        "channels": Key([32, 64, 256, 256], list, help="widths of the teacher's stem and blocks (never deployed)"),
        "seed": Key(0, int, minimum=0),
    },
    "export": {
        "opset": Key(13, int, minimum=7),
        "verify_images": Key(100, int, minimum=1),
        "tolerance": Key(1e-4, float, above=0.0),
    },
    "quantization": {
        "backend": Key("auto", str, choices=("auto", "builtin", "glow")),
        "calibration_per_class": Key(1, int, minimum=1),
        "target_accuracy": Key(0.9, float, above=0.0, maximum=1.0),
        "max_iterations": Key(3, int, minimum=0, help="halvings tried per tensor when tuning"),
        "accuracy_drop": Key(0.05, float, minimum=0.0, maximum=1.0, help="skip a tensor if accuracy drops more"),
        "check_tuning": Key(True, bool, help="deploy the untuned ranges unless tuning raises int8 accuracy on "
                                             "the held-out images/ (the tuner sees only dataset-tuning/)"),
        "test_image_class": Key("horse", str),
        "test_image_index": Key(0, int, minimum=0),
        "eval_images": Key(0, int, minimum=0, help="test images for deployed accuracy; 0 = all"),
    },
    "firmware": {
        "boards": Key(["rt1060", "rt685_m33", "rt685_hifi4"], list),
        "hardening": Key({}, dict, help="per board, a confidence-hardening option added to main.c after softmax, "
                                         "e.g. rt1060 = { method = \"round\", step = 0.05 }; off by default"),
        "emulator_images": Key(5, int, minimum=1, help="test images run through the firmware under QEMU"),
        "emulator_timeout": Key(120.0, float, above=0.0, help="seconds before an emulator run counts as hung"),
    },
    "evaluation": {
        "hardening_options": Key([{"method": "round", "step": 0.05}, {"method": "round", "step": 0.25},
                                  {"method": "noise", "range": 0.1, "seed": 1}, {"method": "pseudo_noise_sin"}],
                                 list, help="confidence-hardening options evaluated on the test split"),
        "robustness_images": Key(1000, int, minimum=0, help="test images for the robustness evaluation; 0 = all"),
        "robustness_transforms": Key([{"kind": "rotate", "degrees": 8}, {"kind": "rotate", "degrees": -8},
                                      {"kind": "blur", "radius": 0.6}, {"kind": "noise", "sigma": 6, "seed": 0},
                                      {"kind": "jpeg", "quality": 60}], list),
        "fgsm_epsilons": Key([1, 2, 4, 8], list, help="FGSM strengths in pixel levels (0..255)"),
        "parity_images": Key(0, int, minimum=0, help="validation images for engine parity; 0 = all"),
    },
    "tflite": {
        "io_type": Key("float32", str, choices=("float32", "int8"),
                       help="the .tflite's input and output: float (quantized inside, like the bundle) or int8"),
        "parity_images": Key(0, int, minimum=0, help="test images for TensorFlow Lite parity; 0 = all"),
    },
}


# The teacher's recipe keys: those of [training] but distillation's, defaulting to TEACHER_RECIPE.
SCHEMA["teacher"].update({name: SCHEMA["training"][name] for name in RECIPE_KEYS
                          if not name.startswith("distillation")})


def available_boards() -> list[str]:
    return sorted(p.stem for p in BOARDS_DIR.glob("*.toml"))


def _check_value(where: str, key: Key, value):
    if key.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, key.kind) or (key.kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} = {value!r}: expected {key.kind.__name__}"
                          + (f" (e.g. {key.default!r})" if key.default is not None else ""))
    if key.choices and value not in key.choices:
        raise ConfigError(f"{where} = {value!r}: valid choices are {', '.join(map(repr, key.choices))}")
    if key.minimum is not None and value < key.minimum:
        raise ConfigError(f"{where} = {value!r}: must be >= {key.minimum}")
    if key.above is not None and value <= key.above:
        raise ConfigError(f"{where} = {value!r}: must be > {key.above}")
    if key.maximum is not None and value > key.maximum:
        raise ConfigError(f"{where} = {value!r}: must be <= {key.maximum}")
    return value


def resolve(raw: dict, origin: str = "<config>") -> dict:
    """Validate a raw TOML dict and return the full config with defaults and the preset applied."""
    unknown_sections = set(raw) - set(SCHEMA)
    if unknown_sections:
        raise ConfigError(f"{origin}: unknown section [{sorted(unknown_sections)[0]}]; "
                          f"valid sections: {', '.join(SCHEMA)}")
    cfg = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        unknown = set(given) - set(keys)
        if unknown:
            raise ConfigError(f"{origin}: unknown key {section}.{sorted(unknown)[0]}; "
                              f"valid keys in [{section}]: {', '.join(keys)}")
        cfg[section] = {}
        for name, key in keys.items():
            where = f"{origin}: {section}.{name}"
            value = given[name] if name in given else copy.deepcopy(key.default)
            cfg[section][name] = value if value is None else _check_value(where, key, value)
    _apply_recipe(cfg["training"], TRAINING_PRESETS[cfg["training"]["preset"]],
                  f"training.{{}} (preset {cfg['training']['preset']})", origin)
    _apply_recipe(cfg["teacher"], TEACHER_RECIPE, "teacher.{}", origin)
    _check_name(cfg["project"]["name"], origin)
    _check_lists(cfg, origin)
    return cfg


def _check_name(name: str, origin: str) -> None:
    if not NAME_RULE.fullmatch(name) or name in C_KEYWORDS:
        raise ConfigError(f"{origin}: project.name = {name!r}: the network name becomes C symbols and file names, so "
                          f"it must be 1-32 lower-case letters, digits or underscores, not starting with a digit, "
                          f"and not a C keyword or 'main' (e.g. 'cifar' or 'my_net')")


def _apply_recipe(section: dict, recipe: dict, where: str, origin: str) -> None:
    """Fill the recipe keys a section does not set from `recipe` (a preset)."""
    for name in RECIPE_KEYS:
        if section.get(name) is None:
            section[name] = _check_value(f"{origin}: {where.format(name)}", SCHEMA["training"][name], recipe[name])


def _check_lists(cfg: dict, origin: str) -> None:
    channels = cfg["model"]["channels"]
    if len(channels) != 4 or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
        raise ConfigError(f"{origin}: model.channels = {channels!r}: expected four positive integers, "
                          f"e.g. [32, 32, 64, 128]")
    teacher = cfg["teacher"]["channels"]
    if len(teacher) < 2 or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in teacher):
        raise ConfigError(f"{origin}: teacher.channels = {teacher!r}: expected two or more positive integers (the "
                          f"stem's width, then one per block), e.g. [32, 64, 256, 256]")
    valid = available_boards()
    from pipeline.evaluations.hardening import parse_option

    for board, option in cfg["firmware"]["hardening"].items():
        if board not in valid:
            raise ConfigError(f"{origin}: firmware.hardening has unknown board {board!r}; valid boards: "
                              f"{', '.join(valid)}")
        try:
            parse_option(option, where=f"{origin}: firmware.hardening.{board}")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    for i, option in enumerate(cfg["evaluation"]["hardening_options"]):
        try:
            parse_option(option, where=f"{origin}: evaluation.hardening_options[{i}]")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    for board in cfg["firmware"]["boards"]:
        if board not in valid:
            raise ConfigError(f"{origin}: firmware.boards has unknown board {board!r}; valid boards: "
                              f"{', '.join(valid)} (add boards/<name>.toml for a new one)")


def load(path, environ=None) -> dict:
    """Read, validate and resolve a config file; DATASET_SOURCE in the environment overrides dataset.source."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing file, e.g. doit config=pipeline.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    if environ.get("DATASET_SOURCE"):
        raw.setdefault("dataset", {})["source"] = environ["DATASET_SOURCE"]
    return resolve(raw, origin=str(path))


def load_board(name: str) -> dict:
    path = BOARDS_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown board {name!r}; valid boards: {', '.join(available_boards())}")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def subset(cfg: dict, *dotted: str) -> dict:
    """The config keys a task uses, e.g. subset(cfg, 'training', 'model.channels'), for doit's config_changed."""
    out = {}
    for name in dotted:
        section, _, key = name.partition(".")
        out[name] = cfg[section] if not key else cfg[section][key]
    return out


# Stage argument <- config key, for the stages from .pth to the deployed int8 model; the build graph (dodo.py) and
# benchmarks/training_recipes.py both call the stages with these.
STAGE_SETTINGS = {
    "export": {"opset": "export.opset", "verify_count": "export.verify_images", "tolerance": "export.tolerance"},
    "profile": {"per_class": "quantization.calibration_per_class"},
    "tune": {"target_accuracy": "quantization.target_accuracy", "max_iterations": "quantization.max_iterations",
             "accuracy_drop": "quantization.accuracy_drop", "check_held_out": "quantization.check_tuning"},
    "accuracy": {"eval_images": "quantization.eval_images"},
}


def stage_settings(cfg: dict, stage: str) -> dict:
    """The keyword arguments `stage` (a STAGE_SETTINGS key) takes from the config."""
    return {argument: subset(cfg, key)[key] for argument, key in STAGE_SETTINGS[stage].items()}
