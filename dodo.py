"""The build graph: dataset -> model -> ONNX -> profiles -> bundles -> firmware -> report, per board.

Run `doit` (or `doit config=configs/smoke.toml`). Every stage is a function in pipeline/; this file only
declares what each task reads (file_dep, config keys, its own code) and what it writes (targets).
"""
import sys
from pathlib import Path

from doit import get_var

from pipeline import config as configuration
from pipeline import dataset
from pipeline.cache import cached_action
from pipeline.config import subset
from pipeline.graph import code, keys, stage

try:
    CONFIG = configuration.load(get_var("config", "pipeline.toml"))
    SOURCE = dataset.resolve_source(CONFIG["dataset"]["source"], configuration.ROOT)
except (configuration.ConfigError, dataset.DatasetError) as err:
    sys.exit(f"error: {err}")

BUILD = Path(CONFIG["project"]["build_dir"])
NAME = CONFIG["project"]["name"]
DATA, MODEL = BUILD / "data", BUILD / "model"
DATA_FILES = [str(DATA / f) for f in (*dataset.ARRAY_FILES, "classes.json", "manifest.json")]
PTH, ONNX = MODEL / f"{NAME}.pth", MODEL / f"{NAME}.onnx"

BUILD.mkdir(parents=True, exist_ok=True)
DOIT_CONFIG = {
    "dep_file": str(BUILD / ".doit.db"),
    "backend": "sqlite3",
    "verbosity": 2,
    "default_tasks": ["dataset", "train", "export"],
}


def task_dataset():
    """Canonical dataset (train / held-out validation / test) plus the Glow image folders."""
    source_is_file = Path(SOURCE).is_file()
    return {
        "actions": [stage("dataset:build_dataset", source=SOURCE, out_dir=DATA, root=configuration.ROOT,
                          **{k: v for k, v in CONFIG["dataset"].items() if k != "source"})],
        "file_dep": code("dataset", "atomic") + ([SOURCE] if source_is_file else []),
        "targets": DATA_FILES,
        "uptodate": [keys({"dataset": CONFIG["dataset"], "resolved": SOURCE,
                           "fingerprint": "" if source_is_file else dataset.source_fingerprint(SOURCE)})],
        "clean": True,
    }


def task_train():
    """Train CifarNet: the .pth state_dict, per-epoch metrics and the training curves."""
    training = CONFIG["training"]
    recipe = {k: training[k] for k in (*configuration.RECIPE_KEYS, "seed", "threads", "init_from", "preset")}
    inputs = DATA_FILES + ([training["init_from"]] if training["init_from"] else [])
    outputs = [PTH, MODEL / "metrics.json", MODEL / "training.png"]
    return {
        "actions": [cached_action(
            "train", stage("train:train", data_dir=DATA, out_dir=MODEL, channels=CONFIG["model"]["channels"], **recipe),
            code_files=code("train", "model", "atomic"), config_subset=subset(CONFIG, "training", "model.channels"),
            input_files=inputs, libraries=["torch", "numpy"], outputs=outputs)],
        "file_dep": inputs + code("train", "model", "atomic"),
        "targets": [str(p) for p in outputs],
        "uptodate": [keys(subset(CONFIG, "training", "model.channels"))],
        "clean": True,
    }


def task_export():
    """Export to ONNX, verified by ONNX Runtime against PyTorch, with model-zoo test data."""
    return {
        "actions": [stage("export:export", pth=PTH, out_onnx=ONNX, data_dir=DATA, channels=CONFIG["model"]["channels"],
                          opset=CONFIG["export"]["opset"], verify_count=CONFIG["export"]["verify_images"],
                          tolerance=CONFIG["export"]["tolerance"], test_data_dir=MODEL / "test_data_set_0")],
        "file_dep": [str(PTH), str(DATA / "val_images.npy"), str(DATA / "classes.json")]
                    + code("export", "model", "atomic"),
        "targets": [str(ONNX), str(MODEL / "export_check.json")],
        "uptodate": [keys(subset(CONFIG, "export", "model.channels"))],
        "clean": True,
    }
