"""Quantize-and-compile stages behind one interface: the Glow tools when chosen, the built-in backend otherwise.

Each stage takes the canonical dataset folder and file paths; which images it uses follows the app note:
calibration from build/data/images/ (held-out split, `per_class` per class), tuning on build/data/dataset-tuning/.
"""
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core import atomic
from pipeline.int8 import bundle
from pipeline.int8 import glow
from pipeline.int8 import graph as int8_graph
from pipeline.int8 import profile
from pipeline.int8 import tune
from pipeline.model.dataset import CALIBRATION_FOLDER, TUNING_FOLDER, load_classes, load_split
from pipeline.model.shapes import to_input


def class_images(data_dir) -> dict[str, list[Path]]:
    """build/data/images/<class>/*.png (held-out split), sorted, per class in class order."""
    folder = Path(data_dir) / CALIBRATION_FOLDER
    return {cls: sorted((folder / cls).glob("*.png")) for cls in load_classes(data_dir)}


def calibration_images(data_dir, per_class: int) -> list[Path]:
    """The first `per_class` PNGs of each class in build/data/images/, in class order."""
    picked = {cls: paths[:per_class] for cls, paths in class_images(data_dir).items()}
    short = [cls for cls, paths in picked.items() if len(paths) < per_class]
    if short:
        raise ValueError(f"{Path(data_dir) / CALIBRATION_FOLDER}: classes {short} have fewer than {per_class} "
                         f"calibration images; lower quantization.calibration_per_class or raise "
                         f"dataset.images_per_class")
    return [p for paths in picked.values() for p in paths]


def tuning_set(data_dir) -> tuple[Path, Path]:
    folder = Path(data_dir) / TUNING_FOLDER
    return folder, folder / "Labels.csv"


def read_pngs(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths])


def read_tuning_set(data_dir) -> tuple[np.ndarray, np.ndarray]:
    folder, labels_csv = tuning_set(data_dir)
    rows = [line.split(",") for line in labels_csv.read_text().splitlines() if line.strip()]
    return read_pngs([folder / name for name, _ in rows]), np.array([int(label) for _, label in rows])


def profile_stage(backend: str, onnx_path, data_dir, out_path, per_class: int) -> None:
    """profile.yml from `per_class` calibration images per class (the note: one)."""
    images = calibration_images(data_dir, per_class)
    if backend == "glow":
        glow.make_profile(onnx_path, images, out_path)
    else:
        profile.make_profile(onnx_path, read_pngs(images), out_path)


def held_out_images(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """All of build/data/images/ with their labels: held-out images, disjoint from the tuning set."""
    paths = [(path, label) for label, files in enumerate(class_images(data_dir).values()) for path in files]
    return read_pngs([path for path, _ in paths]), np.array([label for _, label in paths])


def tune_stage(backend: str, onnx_path, profile_path, data_dir, out_path, target_accuracy: float,
               max_iterations: int, accuracy_drop: float, check_held_out: bool) -> dict:
    """profile_tuned.yml, plus tuning.json beside it with the accuracies the tuner saw (built-in backend) and,
    with check_held_out, both profiles' accuracy on the held-out images: unless tuning raises it, the untuned
    ranges are deployed (profile_tuned.yml is then a copy of profile.yml)."""
    with tempfile.TemporaryDirectory() as work:
        candidate = Path(work) / Path(out_path).name
        if backend == "glow":
            folder, labels_csv = tuning_set(data_dir)
            glow.tune_profile(onnx_path, profile_path, folder, labels_csv, candidate, target_accuracy=target_accuracy)
            result = {}
        else:
            images, labels = read_tuning_set(data_dir)
            result = tune.tune_profile(onnx_path, profile_path, images, labels, candidate,
                                       target_accuracy=target_accuracy, max_iter_per_node=max_iterations,
                                       acc_drop_skip=accuracy_drop)
        deployed = candidate
        if check_held_out:
            result["held_out_check"] = tune.held_out_check(onnx_path, profile_path, candidate,
                                                           *held_out_images(data_dir))
            if result["held_out_check"]["kept"] == "untuned":
                deployed = Path(profile_path)
                print(f"tune: tuning did not raise held-out int8 accuracy "
                      f"({result['held_out_check']['untuned_int8_accuracy']:.4f} -> "
                      f"{result['held_out_check']['tuned_int8_accuracy']:.4f}); "
                      f"{out_path} keeps the untuned ranges", file=sys.stderr)
        atomic.write_text(Path(out_path).with_name("tuning.json"), json.dumps(result, indent=2) + "\n")
        atomic.write_bytes(out_path, deployed.read_bytes())
    return {}


def bundle_stage(backend: str, onnx_path, profile_path, board: dict, out_dir, network: str) -> dict:
    make = glow.make_bundle if backend == "glow" else bundle.make_bundle
    return make(onnx_path, profile_path, board, out_dir, network)


@contextlib.contextmanager
def host_bundle(onnx_path, profile_path, network: str):
    """The bundle's generated C for a profile, in a temp folder: (sources folder, work folder)."""
    with tempfile.TemporaryDirectory() as work:
        sources = Path(work) / "bundle"
        sources.mkdir()
        for fname, data in bundle.generate_sources(onnx_path, profile_path, network).items():
            (sources / fname).write_bytes(data)
        yield sources, work


def int8_predictions_stage(onnx_path, profile_path, data_dir, split: str, max_images: int, out_path,
                           network: str) -> None:
    """Top-1 classes of the host-compiled int8 bundle on a class-balanced subset of a split (.npy), for
    comparing the deployed model with other engines."""
    from pipeline.model.evaluation import balanced_subset

    images, labels = load_split(data_dir, split)
    inputs = to_input(images[balanced_subset(labels, max_images)])
    with host_bundle(onnx_path, profile_path, network) as (sources, work):
        outputs = bundle.host_outputs(sources, inputs, work, network)
    atomic.save_npy(out_path, outputs.argmax(axis=1))


def accuracy_stage(onnx_path, profiles: dict, data_dir, out_path, network: str, eval_images: int) -> dict:
    """Float (ONNX Runtime) vs int8 (host-compiled bundle C) top-1 on the test split, for each profile given
    ({"untuned": profile.yml, "tuned": profile_tuned.yml}); written to accuracy.json."""
    from pipeline.model.evaluation import balanced_subset, onnxruntime_logits

    images, labels = load_split(data_dir, "test")
    if eval_images:
        keep = balanced_subset(labels, eval_images)
        images, labels = images[keep], labels[keep]
    # The float model runs once; each profile's bundle C runs on the same inputs.
    float_acc = int8_graph.accuracy(onnxruntime_logits(onnx_path, images), labels)
    # With Glow as the backend the boards get Glow's bundles, which keep no C to run here: the figures are of the
    # built-in backend's bundle from the same profiles, and say so.
    result = {"split": "test", "images": int(len(labels)), "float_accuracy": float_acc,
              "bundle": "built-in int8 bundle (C compiled for this host) of each profile"}
    for name, profile_path in profiles.items():
        with host_bundle(onnx_path, profile_path, network) as (sources, work):
            int8_acc = int8_graph.accuracy(bundle.host_outputs(sources, to_input(images), work, network), labels)
        result[f"int8_{name}_accuracy"] = int8_acc
        result[f"int8_{name}_minus_float_points"] = round(100 * (int8_acc - float_acc), 3)
    atomic.write_text(out_path, json.dumps(result, indent=2) + "\n")
    return result
