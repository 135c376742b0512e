"""The int8 .tflite: it opens in LiteRT and TFLite Micro with exactly our scales, weights and biases; the
parity figures against the NumPy int8 reference, the host bundle, LiteRT and TFLM; TFLM's arena; the rounding
explanation checked against LiteRT's own first-layer tensor; skips when a runtime is missing."""
import dataclasses
import json
import sys

import numpy as np
import pytest

from tiny_model import export_onnx, synthetic_images, train_tiny_model
from pipeline.evaluations import tflite_parity
from pipeline.int8 import graph as int8_graph
from pipeline.int8 import ops, profile
from pipeline.int8 import tflite
from pipeline.model.shapes import to_input

pytest.importorskip("ai_edge_litert.interpreter", reason=f"LiteRT is not installed ({tflite_parity.LITERT_PIN})")
pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                    reason=f"TFLite Micro is not installed ({tflite_parity.TFLM_PIN})")
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny trained model, its profile, its quantized graph and its .tflite (float input and output)."""
    tmp = tmp_path_factory.mktemp("tflite")
    export_onnx(train_tiny_model(*synthetic_images(320, seed=1), steps=20), tmp / "m.onnx")
    profile.make_profile(tmp / "m.onnx", synthetic_images(10, seed=11)[0], tmp / "profile.yml")
    tflite.tflite_stage(tmp / "m.onnx", tmp / "profile.yml", tmp / "m_int8.tflite")
    return tmp, tflite.load_quantized(tmp / "m.onnx", tmp / "profile.yml")


def expected_scales(qm) -> dict:
    """Tensor name -> the scale our graph gives it: activations 2**exp, weights 2**weight_exp, biases their
    product with the input's."""
    scales = {name: 2.0 ** exp for name, exp in qm.exps.items()}
    for op in qm.ops:
        if op.kind in ("conv", "fc"):
            scales[f"{op.node}/weight"] = 2.0 ** op.weight_exp
            scales[f"{op.node}/bias"] = 2.0 ** (qm.exps[op.inputs[0]] + op.weight_exp)
    return scales


def test_litert_reads_our_scales_weights_and_biases(model):
    tmp, qm = model
    interpreter = Interpreter(model_path=str(tmp / "m_int8.tflite"))
    interpreter.allocate_tensors()
    details = {d["name"]: d for d in interpreter.get_tensor_details()}
    expected = expected_scales(qm)
    quantized = {name: d for name, d in details.items() if len(d["quantization_parameters"]["scales"])}
    # every int8 and int32 tensor but the reshape's shape operand is quantized, each with our scale
    assert set(quantized) == {name for name, d in details.items()
                              if d["dtype"] != np.float32 and not name.endswith("/shape")}
    for name, d in quantized.items():
        # LiteRT may expand a per-tensor weight scale into per-channel copies: every copy must be ours
        assert set(d["quantization_parameters"]["scales"].tolist()) == {expected[name]}, name
        assert set(d["quantization_parameters"]["zero_points"].tolist()) == {0}, name
    layers = [op for op in qm.ops if op.kind in ("conv", "fc")]
    for op in layers:
        weight = interpreter.get_tensor(details[f"{op.node}/weight"]["index"])
        assert weight.dtype == np.int8 and np.array_equal(weight.reshape(len(weight), -1), op.weight), op.node
        bias = interpreter.get_tensor(details[f"{op.node}/bias"]["index"])
        assert bias.dtype == np.int32 and np.array_equal(bias, op.bias), op.node
    assert interpreter.get_input_details()[0]["shape"].tolist() == [1, 32, 32, 3]  # NHWC


def test_int8_io_model_in_tflm_has_our_input_and_output_scales(model, tmp_path):
    tmp, qm = model
    data = tflite.to_flatbuffer(qm, io_type="int8")
    interpreter = tflite_parity.tflm_interpreter(data, 200_000)
    source, sink = interpreter.get_input_details(0), interpreter.get_output_details(0)
    assert source["dtype"] == np.int8 and sink["dtype"] == np.int8
    assert list(source["quantization_parameters"]["scales"]) == [2.0 ** qm.input_exp]
    logits = next(op for op in qm.ops if op.kind == "dequantize")
    assert list(sink["quantization_parameters"]["scales"]) == [2.0 ** logits.out_exp]
    # The same images through the float-I/O model (QUANTIZE/DEQUANTIZE inside) give the same logits.
    x = to_input(synthetic_images(8, seed=5)[0])
    float_model = (tmp / "m_int8.tflite").read_bytes()
    assert np.array_equal(tflite_parity.tflm_outputs(data, tflite_parity.model_inputs(data, x), 200_000),
                          tflite_parity.tflm_outputs(float_model, tflite_parity.model_inputs(float_model, x), 200_000))


def test_tflite_rounding_reproduces_litert_first_layer(model):
    """The rounding analysis's TensorFlow Lite requantization equals what LiteRT's reference kernels compute
    for the first conv from the same int8 input, and differs from Glow's exactly where it says."""
    tmp, qm = model
    x = to_input(synthetic_images(16, seed=7)[0])
    interpreter = Interpreter(model_path=str(tmp / "m_int8.tflite"), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.resize_tensor_input(0, (len(x), 32, 32, 3))
    interpreter.allocate_tensors()
    interpreter.set_tensor(0, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    interpreter.invoke()
    details = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    conv = next(op for op in qm.ops if op.kind == "conv")
    ours_in = int8_graph.run_int8(qm, x, keep_all=True)[conv.inputs[0]]
    assert np.array_equal(interpreter.get_tensor(details[conv.inputs[0]]), ours_in)  # same int8 input
    acc = int8_graph.im2col(ours_in, conv.kernel, conv.stride, conv.pads, 0).astype(np.int64) @ \
        conv.weight.T.astype(np.int64) + conv.bias
    litert = interpreter.get_tensor(details[conv.output])
    assert np.array_equal(tflite_parity.tflite_requantize(acc, conv.shift, conv.act_min), litert)
    differ = int(np.count_nonzero(int8_graph.requantize(acc, conv.shift, conv.act_min) != litert))
    assert differ > 0 and tflite_parity.rounding_differences(qm, x)[0]["differ"] == differ


def test_parity_figures_and_tflm_arena(model, tmp_path):
    tmp, qm = model
    images, labels = synthetic_images(40, seed=3)
    result = tflite_parity.compare(tmp / "m.onnx", tmp / "profile.yml", tmp / "m_int8.tflite", images, labels, "m")
    assert set(result["engines"]) == {"numpy_int8", "host_bundle", "litert", "litert_reference_kernels", "tflm"}
    figures = result["against_reference"]
    assert figures["host_bundle"]["images_differing"] == 0  # the bundle's C is bit-exact with the reference
    data = (tmp / "m_int8.tflite").read_bytes()
    inputs = tflite_parity.model_inputs(data, to_input(images))
    reference = int8_graph.run_int8(qm, to_input(images))
    tflm = tflite_parity.tflm_outputs(data, inputs, 200_000)
    assert figures["tflm"]["images_differing"] == int((np.abs(tflm - reference).max(axis=1) > 0).sum())
    assert figures["tflm"]["top1_agreement"] == float((tflm.argmax(1) == reference.argmax(1)).mean())
    # Differences are requantization rounding: a few output LSBs, never more.
    assert all(f["max_diff_lsb"] <= 4 for f in figures.values())
    arena = result["memory"]["tflm"]["arena_bytes"]
    with tflite_parity.quiet_stderr(), pytest.raises(RuntimeError):
        tflite_parity.tflm_outputs(data, inputs[:1], arena - 1)
    assert tflite_parity.tflm_outputs(data, inputs[:1], arena).shape == (1, 10)
    assert result["memory"]["tflm"]["ops_resolved"] == ["QUANTIZE", "CONV_2D", "MAX_POOL_2D", "RESHAPE",
                                                        "FULLY_CONNECTED", "DEQUANTIZE"]
    text = tflite_parity.markdown(result)
    assert f"{arena:,}-byte tensor arena" in text and "| tflm |" in text


@pytest.mark.parametrize("module, engine, pin", [
    ("ai_edge_litert.interpreter", "litert", tflite_parity.LITERT_PIN),
    ("tflite_micro.python.tflite_micro.runtime", "tflm", tflite_parity.TFLM_PIN)])
def test_missing_runtime_is_skipped_with_the_pip_command(model, monkeypatch, module, engine, pin):
    tmp, _ = model
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    images, labels = synthetic_images(10, seed=3)
    result = tflite_parity.compare(tmp / "m.onnx", tmp / "profile.yml", tmp / "m_int8.tflite", images, labels, "m")
    assert engine not in result["engines"] and "numpy_int8" in result["engines"]
    assert pin in result["skipped"][engine]
    assert f"{engine}: {result['skipped'][engine]}" in tflite_parity.markdown(result)
    assert ("tflm" in result["memory"]) == (engine != "tflm")


def test_padding_without_tflite_equivalent_names_the_node(model):
    _, qm = model
    conv = next(i for i, op in enumerate(qm.ops) if op.kind == "conv")
    ops = list(qm.ops)
    ops[conv] = dataclasses.replace(ops[conv], pads=(0, 0, 2, 2))
    with pytest.raises(int8_graph.UnsupportedOpError, match=qm.ops[conv].node):
        tflite.to_flatbuffer(dataclasses.replace(qm, ops=ops))
    with pytest.raises(ValueError, match="'uint8'.*float32"):
        tflite.to_flatbuffer(qm, io_type="uint8")


def test_smoke_graph_builds_tflite_and_parity(smoke_build):
    """`doit` builds both tasks in the default graph; the report can read the JSON."""
    assert (smoke_build / "build/model/cifar_int8.tflite").stat().st_size > 0
    result = json.loads((smoke_build / "build/reports/tflite_parity/tflite_parity.json").read_text())
    assert result["against_reference"]["host_bundle"]["images_differing"] == 0
    assert result["memory"]["tflm"]["arena_bytes"] > 0
    assert result["images"] == int(np.load(smoke_build / "build/data/test_labels.npy").size)


def test_every_tflm_difference_is_requantization_rounding(model, monkeypatch):
    """Our int8 reference with TensorFlow Lite's requantization in place of Glow's gives TFLM's outputs bit for
    bit: the scales, weights, layouts and ops are the same, only the rounding differs."""
    tmp, qm = model
    x = to_input(synthetic_images(40, seed=9)[0])
    data = (tmp / "m_int8.tflite").read_bytes()
    tflm = tflite_parity.tflm_outputs(data, tflite_parity.model_inputs(data, x), 200_000)
    assert not np.array_equal(int8_graph.run_int8(qm, x), tflm)  # Glow's rounding: different outputs
    monkeypatch.setattr(ops, "requantize", tflite_parity.tflite_requantize)  # what the conv and fc references call
    assert np.array_equal(int8_graph.run_int8(qm, x), tflm)
