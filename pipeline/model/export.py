"""Export stage: cifar.pth -> cifar.onnx (batch 1, NCHW, input `input`, output `output`), verified by ONNX Runtime
against PyTorch, plus test_data_set_0/ in the ONNX model-zoo layout for onnx_test_runner on a board.

The model is written only after it passes verification, so a mismatch leaves no ONNX file behind.
"""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from pipeline.core import atomic
from pipeline.model.dataset import load_split
from pipeline.model.network import CifarNet
from pipeline.model.shapes import INPUT_SHAPE, to_input
from pipeline.model.evaluation import load_model

INPUT_NAME, OUTPUT_NAME = "input", "output"


class ExportMismatch(RuntimeError):
    """ONNX Runtime disagrees with PyTorch beyond the tolerance."""


def onnx_bytes(model: CifarNet, opset: int) -> bytes:
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # The TorchScript exporter gives a plain, stable graph (BatchNorm folded into Conv) at a fixed opset.
        torch.onnx.export(model, (torch.zeros(INPUT_SHAPE),), buffer, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False, do_constant_folding=True)
    return buffer.getvalue()


def compare_runtimes(model: CifarNet, model_bytes: bytes, images) -> dict:
    """Run PyTorch and ONNX Runtime on each image (batch 1): max abs difference and top-1 agreement."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    inputs = to_input(images)
    max_diff, agree = 0.0, 0
    with torch.no_grad():
        for x in inputs:
            x = x[None]
            reference = model(torch.from_numpy(x)).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            max_diff = max(max_diff, float(np.abs(reference - got).max()))
            agree += int(reference.argmax() == got.argmax())
    return {"images": int(len(inputs)), "max_abs_diff": max_diff, "top1_agreement": agree / len(inputs)}


def export(pth, out_onnx, *, data_dir, channels, opset: int, verify_count: int, tolerance: float,
           test_data_dir) -> dict:
    """Export, verify against PyTorch on the first `verify_count` validation images, then write the model
    and its test data."""
    model = load_model(pth, channels)
    verify_images = load_split(data_dir, "val")[0][:verify_count]
    data = onnx_bytes(model, opset)
    onnx.checker.check_model(onnx.load_from_string(data))
    check = compare_runtimes(model, data, verify_images)
    check["tolerance"] = tolerance
    if check["max_abs_diff"] > tolerance or check["top1_agreement"] < 1.0:
        raise ExportMismatch(f"{out_onnx}: ONNX Runtime disagrees with PyTorch on {check['images']} validation "
                             f"images: max abs diff {check['max_abs_diff']:.3g} (tolerance {tolerance}), top-1 "
                             f"agreement {check['top1_agreement']:.2%}; the ONNX file was not written")
    write_test_data(model, verify_images[0], Path(test_data_dir))
    atomic.write_bytes(out_onnx, data)
    atomic.write_text(Path(out_onnx).with_name("export_check.json"), json.dumps(check, indent=2) + "\n")
    return check


def write_test_data(model: CifarNet, image, folder: Path) -> None:
    """input_0.pb / output_0.pb, the layout onnx_test_runner reads next to model.onnx."""
    x = to_input(image[None])
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    with atomic.atomic_dir(folder) as tmp:
        (tmp / "input_0.pb").write_bytes(numpy_helper.from_array(x, INPUT_NAME).SerializeToString())
        (tmp / "output_0.pb").write_bytes(numpy_helper.from_array(y, OUTPUT_NAME).SerializeToString())
