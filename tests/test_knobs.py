"""Every knob works: changing each config key once changes the config dependency of exactly the tasks that use it
(doit reruns them; the tasks after them rerun when their input files change). The expected tasks are written out
here, per key, from what each setting means, not derived from the code under test."""
import copy
import fnmatch
import json
import os
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT
from pipeline.core.config import SCHEMA
from pipeline.model import numerics

AUDIT = ROOT / "tests" / "audit_tasks.py"
ARM = ("rt1060", "rt685_m33")
EVERY_STEP = ["train", "export", "profile", "tune", "accuracy", "bundle:*", "main_c:*", "firmware:rt1060",
              "firmware:rt685_m33", "emulate:rt1060", "emulate:rt685_m33", "layer_profile:rt1060",
              "layer_profile:rt685_m33", "int8_predictions:*", "hardening", "robustness", "parity", "tflite",
              "tflite_parity"]
# key: (new value, the tasks whose settings it is). The release and the report record the whole config (the
# report shows its digest), so both are in every row.
CHANGES = {
    "project.name": ("mynet", EVERY_STEP),
    "project.version": ("0.2.0", []),
    "project.build_dir": ("build_other", ["dataset", "image_folders", "teacher", "image_inc:*", *EVERY_STEP]),
    "dataset.source": (str(ROOT / "boards"), ["dataset"]),
    "dataset.validation_per_class": (200, ["dataset"]),
    "dataset.train_per_class": (31, ["dataset"]),
    "dataset.test_per_class": (21, ["dataset"]),
    "dataset.images_per_class": (90, ["image_folders"]),
    "dataset.tuning_per_class": (20, ["image_folders"]),
    "dataset.seed": (1, ["dataset"]),
    "model.channels": ([16, 16, 32, 64], ["train", "export", "hardening", "robustness", "parity"]),
    "training.preset": ("default", ["train"]),
    "training.optimizer": ("sgd", ["train"]),
    "training.lr": (0.002, ["train"]),
    "training.batch_size": (16, ["train"]),
    "training.epochs": (2, ["train"]),
    "training.schedule": ("onecycle", ["train"]),
    "training.weight_decay": (1e-4, ["train"]),
    "training.augment": (True, ["train"]),
    "training.crop_padding": (2, ["train"]),
    "training.flip": ("alternating", ["train"]),
    "training.whitening_init": (True, ["train"]),
    "training.label_smoothing": (0.1, ["train"]),
    "training.ema_decay": (0.99, ["train"]),
    "training.precision": ("bf16", ["train"]),
    "training.distillation": (0.5, ["train"]),
    "training.distillation_temperature": (2.0, ["train"]),
    "training.seed": (1, ["train"]),
    "training.threads": (1, ["train", "teacher"]),
    "teacher.channels": ([8, 16], ["teacher"]),
    "teacher.seed": (1, ["teacher"]),
    "teacher.optimizer": ("adam", ["teacher"]),
    "teacher.lr": (0.1, ["teacher"]),
    "teacher.batch_size": (128, ["teacher"]),
    "teacher.epochs": (3, ["teacher"]),
    "teacher.schedule": ("constant", ["teacher"]),
    "teacher.weight_decay": (1e-4, ["teacher"]),
    "teacher.augment": (False, ["teacher"]),
    "teacher.crop_padding": (2, ["teacher"]),
    "teacher.flip": ("alternating", ["teacher"]),
    "teacher.whitening_init": (True, ["teacher"]),
    "teacher.label_smoothing": (0.1, ["teacher"]),
    "teacher.ema_decay": (0.9, ["teacher"]),
    "teacher.precision": ("fp32", ["teacher"]),
    "training.init_from": ("build/model/start.pth", ["train"]),
    "export.opset": (14, ["export"]),
    "export.verify_images": (10, ["export"]),
    "export.tolerance": (1e-3, ["export"]),
    "quantization.backend": ("builtin", []),  # 'auto' already resolves to the built-in backend without Glow
    "quantization.calibration_per_class": (2, ["profile"]),
    "quantization.target_accuracy": (0.8, ["tune"]),
    "quantization.max_iterations": (2, ["tune"]),
    "quantization.accuracy_drop": (0.1, ["tune"]),
    "quantization.check_tuning": (False, ["tune"]),
    "quantization.test_image_class": ("ship", ["image_inc:*"]),
    "quantization.test_image_index": (1, ["image_inc:*"]),
    "quantization.eval_images": (100, ["accuracy", "int8_predictions:test"]),
    "firmware.boards": (["rt1060"], ["*:rt685_m33", "*:rt685_hifi4"]),
    "firmware.hardening": ({"rt1060": {"method": "round", "step": 0.05}},
                           ["main_c:rt1060", "firmware:rt1060", "emulate:rt1060"]),
    "firmware.emulator_images": (3, [f"emulate:{board}" for board in ARM]),
    "firmware.emulator_timeout": (60.0, [f"{task}:{board}" for task in ("emulate", "layer_profile") for board in ARM]),
    "evaluation.hardening_options": ([{"method": "round", "step": 0.1}], ["hardening"]),
    "evaluation.robustness_images": (50, ["robustness"]),
    "evaluation.robustness_transforms": ([{"kind": "blur", "radius": 0.6}], ["robustness"]),
    "evaluation.fgsm_epsilons": ([2], ["robustness"]),
    "evaluation.parity_images": (100, ["int8_predictions:val", "parity"]),
    "tflite.io_type": ("int8", ["tflite"]),
    "tflite.parity_images": (100, ["tflite_parity"]),
}


def toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and booleans are written alike in JSON and TOML


def write_config(path, config: dict) -> str:
    path.write_text("".join(f"[{section}]\n" + "".join(f"{key} = {toml_value(value)}\n"
                                                       for key, value in keys.items()) + "\n"
                            for section, keys in config.items()))
    return str(path)


def test_the_table_names_every_key_of_the_schema():
    assert set(CHANGES) == {f"{section}.{key}" for section, keys in SCHEMA.items() for key in keys}


def test_each_key_changes_the_settings_of_exactly_the_tasks_that_use_it(tmp_path):
    base = tomllib.loads((ROOT / "configs" / "smoke.toml").read_text())
    base.setdefault("dataset", {})["source"] = str(ROOT / "configs")  # a fixed source, present everywhere
    paths = {"base": write_config(tmp_path / "base.toml", base)}
    for key, (value, _) in CHANGES.items():
        section, name = key.split(".")
        variant = copy.deepcopy(base)
        variant.setdefault(section, {})[name] = value
        paths[key] = write_config(tmp_path / f"{key}.toml", variant)
    out = tmp_path / "settings.json"
    env = {name: value for name, value in os.environ.items() if name != "DATASET_SOURCE"}
    subprocess.run([sys.executable, AUDIT, "settings", out, *paths.values()], cwd=ROOT, check=True, env=env)
    declared = json.loads(out.read_text())
    before = declared[paths["base"]]
    wrong = {}
    for key, (_, expected) in CHANGES.items():
        after = declared[paths[key]]
        changed = {task for task in before.keys() | after.keys() if before.get(task) != after.get(task)}
        # a task that appears or disappears counts as changed; one skipped on this machine keeps its settings
        expected = {task for task in before.keys() | after.keys()
                    if any(fnmatch.fnmatch(task, pattern) for pattern in [*expected, "release", "report"])
                    and (task not in before.keys() & after.keys() or not is_skipped(before[task]))}
        if changed != expected:
            wrong[key] = {"changed but not expected": sorted(changed - expected),
                          "expected but unchanged": sorted(expected - changed)}
    assert not wrong, json.dumps(wrong, indent=1)


def is_skipped(settings) -> bool:
    """A step skipped on this machine (no Xtensa, Zephyr or SDK) depends only on its skip reason."""
    return bool(settings["config_changed"]) and set(settings["config_changed"][0]) == {"skipped"}


@pytest.mark.skipif(numerics.precision_used("bf16") != "bf16", reason="this CPU has no native BF16")
def test_the_numeric_mode_training_really_runs_in_is_in_its_cache_key(tmp_path):
    """pipeline.toml asks for bf16; on a CPU without it training runs in fp32, so its cache key must differ: a
    fallback result is never stored or restored as a bf16 one."""
    env = {**os.environ, "DATASET_SOURCE": str(ROOT / "configs")}
    keys = {}
    for cpu, flags in (("this-cpu", []), ("without-bf16", ["--cpu-flags=fpu,sse2,avx2"])):
        out = tmp_path / f"{cpu}.json"
        subprocess.run([sys.executable, AUDIT, "settings", out, *flags, ROOT / "pipeline.toml"], cwd=ROOT, env=env,
                       check=True)
        keys[cpu] = json.loads(out.read_text())[str(ROOT / "pipeline.toml")]["train"]["cache_key"]
    assert keys["this-cpu"]["precision"] == keys["without-bf16"]["precision"] == "bf16"
    assert keys["this-cpu"]["precision_used"] == "bf16" and keys["without-bf16"]["precision_used"] == "fp32"
    assert {k: v for k, v in keys["this-cpu"].items() if k != "precision_used"} == \
        {k: v for k, v in keys["without-bf16"].items() if k != "precision_used"}
