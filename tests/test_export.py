import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipeline.model import dataset
from pipeline.model import export
from pipeline.model.network import CifarNet
from pipeline.model.shapes import to_input

CHANNELS = [8, 8, 16, 16]


@pytest.fixture(scope="module")
def inputs(small_dataset_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    dataset.build_dataset(str(small_dataset_dir), data, root=root, validation_per_class=6, train_per_class=2,
                          test_per_class=1)
    torch.manual_seed(0)
    model = CifarNet(tuple(CHANNELS)).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, so folding them is really exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    pth = root / "cifar.pth"
    torch.save(model.state_dict(), pth)
    return data, pth, model


def run(inputs, out, **overrides):
    data, pth, _ = inputs
    args = dict(pth=pth, out_onnx=out / "cifar.onnx", data_dir=data, channels=CHANNELS, opset=13, verify_count=20,
                tolerance=1e-4, test_data_dir=out / "test_data_set_0")
    return export.export(**{**args, **overrides})


def test_exported_model_matches_pytorch_in_onnx_runtime(inputs, tmp_path):
    check = run(inputs, tmp_path)
    assert check["images"] == 20 and check["top1_agreement"] == 1.0 and check["max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "export_check.json").read_text()) == check
    model = onnx.load(tmp_path / "cifar.onnx")
    assert model.opset_import[0].version == 13
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    # the note's layer order, although training runs each block's ReLU after its pool (pipeline.model.network)
    layers = [n.op_type for n in model.graph.node if n.op_type in ("Conv", "Relu", "MaxPool")]
    assert layers == ["Conv", "Relu"] + ["Conv", "Relu", "MaxPool"] * 3
    images, _ = dataset.load_split(inputs[0], "test")
    x = to_input(images[:1])
    got = ort.InferenceSession(str(tmp_path / "cifar.onnx")).run(["output"], {"input": x})[0]
    with torch.no_grad():
        expected = inputs[2](torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-4


def test_export_is_byte_identical_across_runs(inputs, tmp_path):
    run(inputs, tmp_path / "a")
    run(inputs, tmp_path / "b")
    assert (tmp_path / "a" / "cifar.onnx").read_bytes() == (tmp_path / "b" / "cifar.onnx").read_bytes()


def test_mismatch_fails_and_writes_no_model(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cifar.onnx").write_bytes(b"the previous, verified model")
    with pytest.raises(export.ExportMismatch, match=r"max abs diff .* \(tolerance 1e-12\).*was not written"):
        run(inputs, out, tolerance=1e-12)
    assert (out / "cifar.onnx").read_bytes() == b"the previous, verified model"
    assert not list(out.glob(".*.tmp"))


def test_interrupted_export_leaves_no_partial_file(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cifar.onnx").write_bytes(b"previous")

    def interrupted_write(target, data):
        with export.atomic.atomic_path(target) as tmp:
            tmp.write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(export.atomic, "write_bytes", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        run(inputs, out)
    assert (out / "cifar.onnx").read_bytes() == b"previous"
    assert not list(out.glob(".*.tmp"))


def test_pth_for_another_network_is_a_clear_error(inputs, tmp_path):
    with pytest.raises(ValueError, match=r"cifar.pth: does not match the network"):
        run(inputs, tmp_path, channels=[4, 4, 4, 4])
