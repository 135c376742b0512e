"""The deployed int8 graph as a TensorFlow Lite flatbuffer (build/model/<name>_int8.tflite).

Route: the flatbuffer is written from our own quantized graph (pipeline/int8/graph.py) with TensorFlow Lite's
schema bindings (the flatc-generated Python object API that the tflite-micro wheel ships), not converted from
PyTorch or ONNX: a converter would re-calibrate and choose its own (non power-of-two, per-channel) scales, while
this keeps every scale, int8 weight and int32 bias identical to the Glow-ABI bundle's, so the two formats differ
only in how each runtime rounds its requantization.

Layout: TensorFlow Lite is NHWC, so the model's input is (1, H, W, C) where the ONNX model's is (1, C, H, W).
Every quantized tensor is per-tensor, zero point 0, scale 2**exponent; biases are int32 at input * weight scale.
"""
from pathlib import Path

import flatbuffers
import numpy as np

from pipeline.core.atomic import write_bytes
from pipeline.int8 import graph as int8_graph
from pipeline.int8.profile import read_profile

IO_TYPES = {"float32": np.float32, "int8": np.int8}
# The op version that introduced the int8 kernel each op needs (TensorFlow Lite's quantizer's operator
# properties); runtimes look kernels up by (op, version).
OP_VERSIONS = {"QUANTIZE": 1, "DEQUANTIZE": 2, "CONV_2D": 3, "FULLY_CONNECTED": 4, "MAX_POOL_2D": 2,
               "RESHAPE": 1, "RELU": 2, "ADD": 2, "SOFTMAX": 1}
SCHEMA_VERSION = 3


def schema():
    """TensorFlow Lite's schema bindings (tensorflow/lite/schema/schema.fbs compiled by flatc)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


def load_quantized(onnx_path, profile_path) -> int8_graph.QuantModel:
    """The int8 graph the bundle is built from: the ONNX model quantized with the profile's ranges."""
    graph = int8_graph.load_graph(onnx_path)
    return int8_graph.quantize_graph(graph, read_profile(profile_path, graph).ranges(), source=str(profile_path))


def padding_mode(onnx_path, op, in_shape) -> str:
    """TensorFlow Lite's padding name for an op's explicit ONNX pads: VALID (none) or SAME (out = ceil(in /
    stride), the extra row/column at the bottom/right); other paddings have no TensorFlow Lite equivalent."""
    if not any(op.pads):
        return "VALID"
    same = []
    for size, kernel, stride in zip(in_shape[:2], op.kernel, op.stride):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        same.append((total // 2, total - total // 2))
    if op.pads == (same[0][0], same[1][0], same[0][1], same[1][1]):
        return "SAME"
    raise int8_graph.UnsupportedOpError(
        f"{onnx_path}: node {op.node!r} pads {op.pads} (top, left, bottom, right) are neither VALID nor SAME for "
        f"input {in_shape[:2]}, kernel {op.kernel}, stride {op.stride}; TensorFlow Lite has no explicit conv "
        f"padding. Export the model with padding = kernel // 2 (odd kernels) or none")


class _Writer:
    """Collects tensors, buffers and operators into a ModelT (buffer 0 is the schema's empty sentinel)."""

    def __init__(self):
        self.fb = schema()
        self.tensors, self.buffers, self.operators, self.opcodes = [], [self.fb.BufferT()], [], []
        self.index = {}

    def tensor(self, name: str, shape, dtype, exponent=None, data: np.ndarray | None = None) -> int:
        fb = self.fb
        t = fb.TensorT()
        t.name, t.shape = name, list(shape)
        t.type = {np.int8: fb.TensorType.INT8, np.int32: fb.TensorType.INT32,
                  np.float32: fb.TensorType.FLOAT32}[dtype]
        if exponent is not None:
            t.quantization = fb.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [float(2.0 ** exponent)], [0]
        t.buffer = 0
        if data is not None:
            buffer = fb.BufferT()
            buffer.data = np.ascontiguousarray(data, dtype).view(np.uint8).reshape(-1)
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        self.index[name] = len(self.tensors) - 1
        return self.index[name]

    def operator(self, name: str, inputs, outputs, options_type: str | None = None, options=None) -> None:
        fb = self.fb
        code = getattr(fb.BuiltinOperator, name)
        if code not in [c.builtinCode for c in self.opcodes]:
            opcode = fb.OperatorCodeT()
            opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), OP_VERSIONS[name]
            self.opcodes.append(opcode)
        op = fb.OperatorT()
        op.opcodeIndex = [c.builtinCode for c in self.opcodes].index(code)
        op.inputs, op.outputs = [self.index[i] if isinstance(i, str) else i for i in inputs], \
            [self.index[o] if isinstance(o, str) else o for o in outputs]
        if options_type:
            op.builtinOptionsType, op.builtinOptions = getattr(fb.BuiltinOptions, options_type), options
        self.operators.append(op)

    def model(self, inputs, outputs, description: str) -> bytes:
        fb = self.fb
        subgraph = fb.SubGraphT()
        subgraph.tensors, subgraph.operators, subgraph.name = self.tensors, self.operators, "main"
        subgraph.inputs, subgraph.outputs = [self.index[i] for i in inputs], [self.index[o] for o in outputs]
        model = fb.ModelT()
        model.version, model.description = SCHEMA_VERSION, description
        model.operatorCodes, model.subgraphs, model.buffers = self.opcodes, [subgraph], self.buffers
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _activation(fb, op) -> int:
    return fb.ActivationFunctionType.RELU if op.act_min == 0 else fb.ActivationFunctionType.NONE


def to_flatbuffer(qm: int8_graph.QuantModel, io_type: str = "float32", source="the model") -> bytes:
    """The .tflite bytes of a quantized graph. io_type float32: float input and output with QUANTIZE and
    DEQUANTIZE inside the model (as the bundle's placeholders); int8: the int8 input and logits themselves."""
    if io_type not in IO_TYPES:
        raise ValueError(f"tflite io_type {io_type!r} is not one of {sorted(IO_TYPES)}; choose float32 (float "
                         f"input and output, like the bundle) or int8 (quantized input and logits)")
    if io_type == "int8" and qm.ops[-1].kind == "softmax":
        raise ValueError(f"{source}: the model ends in Softmax, which the bundle runs in float; an int8-output "
                         f".tflite would drop it. Use io_type float32, or export the model without the Softmax")
    graph, w = qm.graph, _Writer()
    fb = w.fb
    shapes = dict(graph.shapes)
    _, c, h, wd = graph.input_shape

    def activation_tensor(name):
        if name not in w.index:
            w.tensor(name, (1, *shapes[name]), np.int8, qm.exps[name])
        return name

    inputs, outputs = [], []
    for op in qm.ops:
        if op.kind == "quantize":
            if io_type == "int8":
                w.tensor(op.output, (1, h, wd, c), np.int8, op.out_exp)
                inputs.append(op.output)
                continue
            w.tensor(f"{graph.input_name}/float", (1, h, wd, c), np.float32)
            inputs.append(f"{graph.input_name}/float")
            w.operator("QUANTIZE", inputs, [activation_tensor(op.output)])
        elif op.kind in ("conv", "fc"):
            x = op.inputs[0]
            weight_shape = (op.weight.shape[0], *op.kernel, shapes[x][2]) if op.kind == "conv" else op.weight.shape
            weight = w.tensor(f"{op.node}/weight", weight_shape, np.int8, op.weight_exp, op.weight)
            bias = w.tensor(f"{op.node}/bias", op.bias.shape, np.int32, qm.exps[x] + op.weight_exp, op.bias)
            if op.kind == "conv":
                options = fb.Conv2DOptionsT()
                options.padding = getattr(fb.Padding, padding_mode(source, op, shapes[x]))
                options.strideH, options.strideW = op.stride
                options.dilationHFactor = options.dilationWFactor = 1
                options.fusedActivationFunction = _activation(fb, op)
                # A conv with a fused 2x2 max pool (op.pool == 2) writes the pooled tensor; TensorFlow Lite has no
                # such fusion, so the pool's input (same scale) is written and pooled by MAX_POOL_2D.
                pooled = next((f.inputs[0] for f in graph.ops if f.kind == "maxpool" and f.output == op.output),
                              None) if op.pool == 2 else None
                w.operator("CONV_2D", [x, weight, bias], [activation_tensor(pooled or op.output)], "Conv2DOptions",
                           options)
                if pooled:
                    pool = fb.Pool2DOptionsT()
                    pool.padding = fb.Padding.VALID
                    pool.strideH = pool.strideW = pool.filterHeight = pool.filterWidth = 2
                    w.operator("MAX_POOL_2D", [pooled], [activation_tensor(op.output)], "Pool2DOptions", pool)
            else:
                options = fb.FullyConnectedOptionsT()
                options.fusedActivationFunction = _activation(fb, op)
                w.operator("FULLY_CONNECTED", [x, weight, bias], [activation_tensor(op.output)],
                           "FullyConnectedOptions", options)
        elif op.kind == "maxpool":
            options = fb.Pool2DOptionsT()
            options.padding = getattr(fb.Padding, padding_mode(source, op, shapes[op.inputs[0]]))
            options.strideH, options.strideW = op.stride
            options.filterHeight, options.filterWidth = op.kernel
            w.operator("MAX_POOL_2D", op.inputs, [activation_tensor(op.output)], "Pool2DOptions", options)
        elif op.kind == "flatten":
            # Flattening NHWC in storage order is what the fc weights' columns were reordered for.
            size = shapes[op.output][0]
            new_shape = w.tensor(f"{op.node}/shape", (2,), np.int32, data=np.array([-1, size], np.int32))
            options = fb.ReshapeOptionsT()
            options.newShape = [-1, size]
            w.operator("RESHAPE", [op.inputs[0], new_shape], [activation_tensor(op.output)], "ReshapeOptions",
                       options)
        elif op.kind == "relu":
            w.operator("RELU", op.inputs, [activation_tensor(op.output)])
        elif op.kind == "add":
            options = fb.AddOptionsT()
            options.fusedActivationFunction = _activation(fb, op)
            w.operator("ADD", op.inputs, [activation_tensor(op.output)], "AddOptions", options)
        elif op.kind == "dequantize":
            if io_type == "int8":
                outputs.append(op.inputs[0])
                break
            w.tensor(op.output, (1, *shapes[op.output]), np.float32)
            w.operator("DEQUANTIZE", op.inputs, [op.output])
            outputs = [op.output]
        else:  # softmax, in float on the dequantized logits as in the bundle
            w.tensor(op.output, (1, *shapes[op.inputs[0]]), np.float32)
            options = fb.SoftmaxOptionsT()
            options.beta = 1.0
            w.operator("SOFTMAX", op.inputs, [op.output], "SoftmaxOptions", options)
            outputs = [op.output]
    return w.model(inputs, outputs, "int8 graph with Glow's power-of-two scales (an13331-pipeline)")


def tflite_stage(onnx_path, profile_path, out_path, io_type: str = "float32") -> dict:
    """The doit stage: build/model/<name>_int8.tflite from the ONNX model and the deployed (tuned) profile."""
    data = to_flatbuffer(load_quantized(onnx_path, profile_path), io_type, source=Path(onnx_path))
    write_bytes(out_path, data)
    return {"bytes": len(data)}
