"""The built-in backend's model: float reference vs ONNX Runtime, Glow's power-of-2 parameters, op errors."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tiny_model import export_onnx, synthetic_images, train_tiny_model
from pipeline.int8 import graph as int8_graph
from pipeline.model.shapes import to_input


def onnxruntime_outputs(onnx_path, inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": inputs[i:i + 1]})[0] for i in range(len(inputs))])


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.onnx"
    export_onnx(train_tiny_model(*synthetic_images(320, seed=1), steps=20), path)
    return path


def test_float_reference_matches_onnxruntime(small_onnx):
    images, _ = synthetic_images(40, seed=3)
    x = to_input(images)
    graph = int8_graph.load_graph(small_onnx)
    np.testing.assert_allclose(int8_graph.run_float(graph, x), onnxruntime_outputs(small_onnx, x), atol=1e-4)


def test_int8_reference_tracks_float(small_onnx):
    images, _ = synthetic_images(100, seed=4)
    x = to_input(images)
    graph = int8_graph.load_graph(small_onnx)
    tensors = int8_graph.run_float(graph, x[:10], keep_all=True)
    ranges = {graph.profile_names()[t]: (float(v.min()), float(v.max())) for t, v in tensors.items()}
    qm = int8_graph.quantize_graph(graph, ranges)
    floats, int8 = int8_graph.run_float(graph, x), int8_graph.run_int8(qm, x)
    assert np.mean(floats.argmax(1) == int8.argmax(1)) >= 0.9
    # every quantized value is a multiple of the output scale
    scale = 2.0 ** qm.exps[f"{graph.output_name}/quantized"]
    assert np.all(np.abs(int8 / scale) <= 128) and np.all(int8 / scale == np.round(int8 / scale))


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (0.0, 6.0), (-3.3, 0.2), (-0.001, 0.0007), (0.0, 0.0)])
def test_power2_exponent_follows_glow_formula(lo, hi):
    exp = int8_graph.power2_exponent(lo, hi)
    scale = max(-min(lo, 0) / 128, max(hi, 0) / 127) or 0.1
    # the smallest power of two not below the symmetric scale
    assert 2.0 ** exp >= scale * (1 - 1e-7) and 2.0 ** (exp - 1) < scale


def test_quantize_rounds_half_to_even_and_saturates():
    q = int8_graph.quantize_array(np.array([0.5, 1.5, -0.5, -1.5, 2.49, 1000, -1000], np.float32), 0)
    assert q.tolist() == [0, 2, 0, -2, 2, 127, -128]


def test_kernel_weight_layout_pairs_rows_and_pads():
    from pipeline.int8.ops import kernel_weight_layout

    rows = np.arange(1, 16, dtype=np.int8).reshape(3, 5)  # rows 1..5, 6..10, 11..15: padded to 8 with zeros,
    assert kernel_weight_layout(rows).tolist() == [1, 2, 3, 4, 6, 7, 8, 9, 5, 0, 0, 0, 10, 0, 0, 0,  # the odd last
                                                   11, 12, 13, 14, 0, 0, 0, 0, 15, 0, 0, 0, 0, 0, 0, 0]  # with zeros


def _single_op_model(path, op_type):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])
    node = helper.make_node(op_type, ["input"], ["output"], name="act1")
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y])), str(path))


def test_unsupported_op_names_op_and_node(tmp_path):
    _single_op_model(tmp_path / "sig.onnx", "Sigmoid")
    with pytest.raises(int8_graph.UnsupportedOpError, match=r"Sigmoid.*'act1'|'act1'.*Sigmoid"):
        int8_graph.load_graph(tmp_path / "sig.onnx")


def test_matmul_add_is_folded_like_gemm(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(48, 5)).astype(np.float32)
    b = rng.normal(size=(5,)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], name="flat"),
             helper.make_node("MatMul", ["flat", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["output"], name="bias")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])],
                              [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, str(tmp_path / "mm.onnx"))
    x = rng.uniform(-1, 1, (6, 3, 4, 4)).astype(np.float32)
    loaded = int8_graph.load_graph(tmp_path / "mm.onnx")
    assert [op.kind for op in loaded.ops] == ["flatten", "fc"]
    np.testing.assert_allclose(int8_graph.run_float(loaded, x), onnxruntime_outputs(tmp_path / "mm.onnx", x),
                               atol=1e-5)
