"""Glow's model-tuner algorithm on the int8 reference."""
import json
import shutil

import pytest
from PIL import Image

from tiny_model import export_onnx, synthetic_images, train_tiny_model
from pipeline.int8 import graph as int8_graph
from pipeline.int8 import profile
from pipeline.int8 import quantize
from pipeline.int8 import tune
from pipeline.model.shapes import to_input


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    export_onnx(train_tiny_model(*synthetic_images(320, seed=1), steps=12), tmp / "m.onnx")
    calib, _ = synthetic_images(10, seed=7)
    profile.make_profile(tmp / "m.onnx", calib, tmp / "profile.yml")
    images, labels = synthetic_images(60, seed=8)
    return tmp, images, labels


def test_tuning_halves_ranges_and_never_loses_accuracy(setup):
    tmp, images, labels = setup
    # target 1.0 is never exceeded (Glow stops on accuracy > target), so every tensor is tried
    result = tune.tune_profile(tmp / "m.onnx", tmp / "profile.yml", images, labels, tmp / "tuned.yml",
                               target_accuracy=1.0)
    assert result["tuned_int8_accuracy"] >= result["initial_int8_accuracy"]
    before = profile.read_profile(tmp / "profile.yml").entries
    after = profile.read_profile(tmp / "tuned.yml").entries
    assert [e.name for e in before] == [e.name for e in after]
    for b, a in zip(before, after):
        if (a.min, a.max) != (b.min, b.max):  # a tuned tensor: symmetric range halved 1..3 times
            ratio = max(abs(b.min), abs(b.max)) / a.max
            assert a.min == -a.max and ratio in (2.0, 4.0, 8.0)
        assert a.histogram == b.histogram
    graph = int8_graph.load_graph(tmp / "m.onnx")
    acc = tune.quantized_accuracy(graph, profile.read_profile(tmp / "tuned.yml").ranges(), to_input(images), labels)
    assert acc == result["tuned_int8_accuracy"]
    assert 1 <= len(result["trials"]) <= 3 * len(before)


def test_target_reached_means_no_change(setup):
    tmp, images, labels = setup
    result = tune.tune_profile(tmp / "m.onnx", tmp / "profile.yml", images, labels, tmp / "same.yml",
                               target_accuracy=-1.0)
    assert result["trials"] == []
    assert profile.read_profile(tmp / "same.yml").entries == profile.read_profile(tmp / "profile.yml").entries


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model that has learnt the synthetic classes, so that a bad range costs accuracy."""
    tmp = tmp_path_factory.mktemp("tune_trained")
    export_onnx(train_tiny_model(*synthetic_images(320, seed=1)), tmp / "m.onnx")
    profile.make_profile(tmp / "m.onnx", synthetic_images(10, seed=7)[0], tmp / "profile.yml")
    images, labels = synthetic_images(60, seed=8)
    return tmp, images, labels


def damaged_profile(tmp, images, labels):
    """profile.yml with one tensor's range cut 64x: a stand-in for a tuner that fitted its tuning images and
    lost accuracy elsewhere. Picks the first tensor whose damage costs accuracy on `images`."""
    graph = int8_graph.load_graph(tmp / "m.onnx")
    original = profile.read_profile(tmp / "profile.yml", graph)
    untuned = tune.quantized_accuracy(graph, original.ranges(), to_input(images), labels)
    for i, entry in enumerate(original.entries):
        ranges = dict(original.ranges(), **{entry.name: (entry.min / 64, entry.max / 64)})
        if tune.quantized_accuracy(graph, ranges, to_input(images), labels) < untuned:
            entries = list(original.entries)
            entries[i] = type(entry)(entry.name, entry.min / 64, entry.max / 64, entry.histogram)
            profile.write_profile(profile.Profile(original.tools_version, original.graph_hash, entries),
                                  tmp / "damaged.yml")
            return tmp / "damaged.yml"
    raise AssertionError("no tensor's range matters: the tiny model cannot show the check")


def test_held_out_check_keeps_the_tuned_profile_only_when_it_is_better(trained):
    tmp, images, labels = trained
    damaged = damaged_profile(tmp, images, labels)
    worse = tune.held_out_check(tmp / "m.onnx", tmp / "profile.yml", damaged, images, labels)
    assert worse["kept"] == "untuned" and worse["tuned_int8_accuracy"] < worse["untuned_int8_accuracy"]
    assert worse["images"] == len(labels)
    better = tune.held_out_check(tmp / "m.onnx", damaged, tmp / "profile.yml", images, labels)
    assert better["kept"] == "tuned" and better["tuned_int8_accuracy"] > better["untuned_int8_accuracy"]
    tie = tune.held_out_check(tmp / "m.onnx", tmp / "profile.yml", tmp / "profile.yml", images, labels)
    assert tie["kept"] == "untuned", "a tie is no evidence for the tuned ranges"


@pytest.mark.parametrize("check", [True, False])
def test_tune_stage_deploys_the_untuned_ranges_when_the_check_fails(trained, tmp_path, monkeypatch, check):
    """Through the stage: held-out images/ and dataset-tuning/ in a data folder, a tuner that makes things
    worse; with the check, profile_tuned.yml is profile.yml byte for byte and tuning.json says why."""
    tmp, images, labels = trained
    damaged = damaged_profile(tmp, images, labels)
    classes = [f"c{n}" for n in range(int(labels.max()) + 1)]
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    tuning = tmp_path / "dataset-tuning"
    tuning.mkdir()
    rows = []
    for n, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / "images" / classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "images" / classes[label] / f"{n:04d}.png")
        Image.fromarray(image).save(tuning / f"{n:04d}.png")
        rows.append(f"{n:04d}.png,{label}")
    (tuning / "Labels.csv").write_text("\n".join(rows) + "\n")

    def overfitting_tuner(onnx_path, profile_path, images, labels, out_path, **settings):
        shutil.copy(damaged, out_path)
        return {"tuned_int8_accuracy": 1.0}

    monkeypatch.setattr(tune, "tune_profile", overfitting_tuner)
    out = tmp_path / "quant" / "profile_tuned.yml"
    out.parent.mkdir()
    quantize.tune_stage("builtin", tmp / "m.onnx", tmp / "profile.yml", tmp_path, out, target_accuracy=0.9,
                        max_iterations=3, accuracy_drop=0.05, check_held_out=check)
    expected = (tmp / "profile.yml") if check else damaged
    assert out.read_bytes() == expected.read_bytes()
    report = json.loads((out.parent / "tuning.json").read_text())
    assert ("held_out_check" in report) == check
    if check:
        assert report["held_out_check"]["kept"] == "untuned"
        assert report["held_out_check"]["images"] == len(labels)
