"""Engine parity (pipeline/parity.py): PyTorch, ONNX Runtime and OpenCV on a tiny exported CifarNet."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from pipeline.evaluations import parity
from pipeline.model.evaluation import balanced_subset
from tiny_model import TINY_CHANNELS, export_onnx, synthetic_images, train_tiny_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    model = train_tiny_model(*synthetic_images(1200), steps=10)
    torch.save(model.state_dict(), folder / "cifar.pth")
    export_onnx(model, folder / "cifar.onnx")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A split stored as the dataset stage stores it, class by class."""
    folder = tmp_path_factory.mktemp("data")
    images, labels = synthetic_images(200, seed=1)
    order = np.argsort(labels, kind="stable")
    np.save(folder / "val_images.npy", images[order])
    np.save(folder / "val_labels.npy", labels[order])
    return folder


def test_onnxruntime_matches_pytorch(exported):
    images, labels = synthetic_images(40, seed=2)
    logits, _ = parity.engine_logits(exported / "cifar.pth", TINY_CHANNELS, exported / "cifar.onnx", images)
    result = parity.compare_engines(logits, labels)
    pair = next(p for p in result["pairs"] if p["engines"] == ["pytorch", "onnxruntime"])
    assert pair["top1_agreement"] == 1.0 and pair["max_abs_diff"] < 1e-4
    assert result["engines"]["pytorch"]["accuracy"] == result["engines"]["onnxruntime"]["accuracy"]


def test_opencv_matches_onnxruntime(exported):
    pytest.importorskip("cv2", reason=f"OpenCV not installed: pip install {parity.OPENCV_PIN}")
    images = synthetic_images(40, seed=3)[0]
    from_opencv = parity.opencv_logits(exported / "cifar.onnx", images)
    from_ort = parity.onnxruntime_logits(exported / "cifar.onnx", images)
    np.testing.assert_allclose(from_opencv, from_ort, rtol=0, atol=1e-4)
    assert (from_opencv.argmax(axis=1) == from_ort.argmax(axis=1)).all()


def test_a_wrong_export_is_caught(exported, tmp_path):
    """Shift one class's bias in the ONNX file only: the engines reading it must part from PyTorch."""
    model = onnx.load(exported / "cifar.onnx")
    bias = next(t for t in model.graph.initializer if numpy_helper.to_array(t).shape == (10,))
    shifted = numpy_helper.to_array(bias).copy()
    shifted[3] += 50.0
    bias.CopyFrom(numpy_helper.from_array(shifted, bias.name))
    onnx.save(model, tmp_path / "broken.onnx")
    images, labels = synthetic_images(40, seed=4)
    logits, _ = parity.engine_logits(exported / "cifar.pth", TINY_CHANNELS, tmp_path / "broken.onnx", images)
    pair = parity.compare_engines(logits, labels)["pairs"][0]
    assert pair["engines"] == ["pytorch", "onnxruntime"]
    assert pair["max_abs_diff"] == pytest.approx(50.0, abs=1e-3)
    assert pair["disagreements"] > 0


def test_int8_agreement_counts_each_engine():
    labels = np.array([0, 1, 2, 3])
    logits = {"a": np.eye(4, dtype=np.float32), "b": np.eye(4, dtype=np.float32)[[0, 1, 2, 0]]}
    result = parity.compare_engines(logits, labels, int8_predictions=np.array([0, 1, 0, 0]))
    assert result["int8"] == {"accuracy": 0.5, "top1_agreement": {"a": 0.5, "b": 0.75}}
    with pytest.raises(ValueError, match="int8 predictions have shape"):
        parity.compare_engines(logits, labels, int8_predictions=np.array([0, 1]))


def test_stage_writes_json_and_markdown(exported, data_dir, tmp_path):
    predictions = tmp_path / "int8_predictions.npy"
    labels = np.load(data_dir / "val_labels.npy")
    keep = balanced_subset(labels, 50)
    np.save(predictions, labels[keep])  # a perfect int8 model, to check the plumbing
    result = parity.run_stage(exported / "cifar.pth", TINY_CHANNELS, exported / "cifar.onnx", data_dir,
                              tmp_path / "out", max_images=50, int8_predictions_path=predictions)
    assert result["images"] == 50 and result["int8"]["accuracy"] == 1.0
    assert json.loads((tmp_path / "out" / "parity.json").read_text()) == result
    table = (tmp_path / "out" / "parity.md").read_text()
    assert "| pytorch vs onnxruntime |" in table and "| int8 bundle |" in table
    if parity.opencv_skip_reason() is None:
        assert "opencv" in result["engines"]
    else:
        assert "skipped: OpenCV is not installed" in table


def test_missing_model_names_the_task(tmp_path):
    with pytest.raises(FileNotFoundError, match="doit export"):
        parity.onnxruntime_logits(tmp_path / "cifar.onnx", np.zeros((1, 32, 32, 3), np.uint8))


def test_weights_of_another_width_name_the_setting(exported):
    from pipeline.model.evaluation import load_model

    with pytest.raises(ValueError, match="model.channels"):
        load_model(exported / "cifar.pth", channels=(32, 32, 64, 128))
