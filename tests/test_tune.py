"""Glow's model-tuner algorithm on the int8 reference."""
import pytest

from tiny_model import export_onnx, synthetic_images, train_tiny_model
from pipeline import int8_graph, profile, tune
from pipeline.shapes import to_input


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
