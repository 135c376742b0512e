"""The built-in backend's model: ONNX -> op list, a float NumPy reference, Glow's
symmetric_with_power2_scale parameters, and the int8 NumPy reference the generated C must match bit for bit.

Activations are kept NHWC (CMSIS-NN style); the float input and output placeholders keep the ONNX layout.
Quantization follows Glow: int8, offset 0, scale 2**exp with exp = ceil(log2(symmetric scale)), int32 bias at
scale_in * scale_w, every rescale a rounding shift, Relu fused into the producing Conv/Gemm/Add with the Relu's
own range, MaxPool/Flatten keeping their input's parameters.
"""
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.int8.ops import (INT8_MAX, INT8_MIN, OPS, UnsupportedOpError, im2col, quantize_array,  # noqa: F401
                               requantize)

OPS_BY_ONNX_TYPE = {onnx_type: op for op in OPS.values() for onnx_type in op.onnx_types}
SUPPORTED_OPS = tuple(OPS_BY_ONNX_TYPE)
# Glow limits int32 bias to int30 so that bias - offset cannot overflow (Base.cpp getQuantizedRange).
BIAS_MIN, BIAS_MAX = -(2**31) >> 2, (2**31 - 1) >> 2
BATCH = 64  # images per NumPy step: bounds the im2col memory


@dataclass
class FloatOp:
    kind: str  # conv, fc, relu, maxpool, flatten, add, softmax
    node: str  # ONNX node name; Glow names its output "<node>:0" in profiles
    inputs: tuple
    output: str
    weight: np.ndarray | None = None  # conv (O, kh, kw, C); fc (N, K) with K in ONNX (NCHW-flatten) order
    bias: np.ndarray | None = None
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)  # top, left, bottom, right


@dataclass
class Graph:
    input_name: str
    input_shape: tuple  # (1, C, H, W) as in the ONNX model
    output_name: str
    ops: list
    shapes: dict = field(default_factory=dict)  # tensor -> per-image shape as stored: (H, W, C) or (K,)

    def profile_names(self) -> dict:
        """Tensor name -> Glow NodeOutputName ("<node>:0"; the input placeholder is "<input>:0")."""
        names = {self.input_name: f"{self.input_name}:0"}
        names.update({op.output: f"{op.node}:0" for op in self.ops})
        return names


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _unsupported(onnx_path, node, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"{onnx_path}: {what} in node {node.name or node.output[0]!r} (op {node.op_type}) is not supported by the "
        f"built-in int8 backend (supported ops: {', '.join(SUPPORTED_OPS)}). Export the model with only these ops "
        f"(Conv with BatchNorm folded, eval mode) or use the Glow backend (set GLOW_BIN)."
    )


def load_graph(onnx_path) -> Graph:
    """Parse an ONNX model of the supported ops into a Graph (raises UnsupportedOpError naming op and node)."""
    import onnx
    from onnx import numpy_helper

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    consts = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in consts]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ValueError(f"{onnx_path}: expected one input and one output, found {len(inputs)} and "
                         f"{len(model.graph.output)}; export the model with a single input and output")
    dims = tuple(d.dim_value or 1 for d in inputs[0].type.tensor_type.shape.dim)
    if len(dims) != 4:
        raise ValueError(f"{onnx_path}: input {inputs[0].name!r} has shape {dims}; expected NCHW (1, C, H, W)")
    ops, producers = [], {}
    for node in model.graph.node:
        a = _attrs(node)
        name = node.name or node.output[0]
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(a["value"]).astype(np.float32)
            continue
        if node.op_type not in OPS_BY_ONNX_TYPE:
            raise _unsupported(onnx_path, node, f"operator {node.op_type}")
        definition = OPS_BY_ONNX_TYPE[node.op_type]
        op = definition.from_onnx(node, a, consts, producers, functools.partial(_unsupported, onnx_path, node),
                                  functools.partial(FloatOp, definition.kind, name))
        if op is None:
            continue
        ops.append(op)
        producers[op.output] = op
    graph = Graph(inputs[0].name, dims, model.graph.output[0].name, ops)
    graph.shapes = _infer_shapes(graph, onnx_path)
    return graph


def _infer_shapes(graph: Graph, onnx_path) -> dict:
    _, c, h, w = graph.input_shape
    shapes = {graph.input_name: (h, w, c)}
    for op in graph.ops:
        shapes[op.output] = OPS[op.kind].output_shape(op, shapes, onnx_path)
    return shapes


# ---------------------------------------------------------------- float reference
def _to_onnx_layout(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def run_float(graph: Graph, x_nchw: np.ndarray, keep_all: bool = False):
    """Float32 forward pass. Returns the output (ONNX layout), or with keep_all a dict of every tensor
    (activations NHWC / flat in ONNX order): the calibration source."""
    outs = []
    for start in range(0, len(x_nchw), BATCH):
        t = {graph.input_name: np.ascontiguousarray(x_nchw[start:start + BATCH].transpose(0, 2, 3, 1), np.float32)}
        for op in graph.ops:
            y = OPS[op.kind].run_float(op, [t[i] for i in op.inputs])
            t[op.output] = y.astype(np.float32)
        outs.append(t if keep_all else _to_onnx_layout(t[graph.output_name]))
    if keep_all:
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return np.concatenate(outs)


# ---------------------------------------------------------------- Glow quantization parameters
def power2_exponent(tmin: float, tmax: float, qmin: int = INT8_MIN, qmax: int = INT8_MAX) -> int:
    """Glow chooseQuantizationParams for SymmetricWithPower2Scale: scale = 2**exponent (offset is 0)."""
    lo, hi = np.float32(min(tmin, 0.0)), np.float32(max(tmax, 0.0))
    rmin, rmax = float(lo) / qmin, float(hi) / qmax
    if rmin > rmax:
        hi = np.float32(rmin * qmax)
    else:
        lo = np.float32(rmax * qmin)
    scale = (float(hi) - float(lo)) / (qmax - qmin)
    if scale == 0:
        scale = 0.1
    return int(math.ceil(math.log2(scale)))


@dataclass
class QuantOp:
    kind: str  # quantize, conv, fc, maxpool, flatten, relu, add, dequantize, softmax
    node: str
    inputs: tuple
    output: str
    out_exp: int
    shift: int = 0  # rounding right shift from accumulator to output (negative: left shift)
    act_min: int = INT8_MIN  # 0 when a Relu is fused
    weight: np.ndarray | None = None  # int8 (rows, K): conv rows in (kh, kw, C) order, fc columns in stored order
    bias: np.ndarray | None = None  # int32, at accumulator scale
    input_shifts: tuple = ()  # add: per-input shift to the output scale
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    weight_exp: int = 0
    pool: int = 1  # conv: 2 with a fused 2x2 stride-2 MaxPool (the output is the pooled tensor)


@dataclass
class QuantModel:
    graph: Graph
    ops: list
    exps: dict  # tensor -> exponent

    @property
    def input_exp(self) -> int:
        return self.exps[self.graph.input_name]


def _stored_order(shape) -> np.ndarray:
    """For a tensor stored NHWC and flattened, the ONNX (CHW) index of each stored position."""
    if len(shape) == 1:
        return np.arange(shape[0])
    h, w, c = shape
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


def _fusable_pool(op: FloatOp, users: list) -> FloatOp | None:
    """The MaxPool that the conv kernel can compute from its accumulators (its only consumer, 2x2 stride 2,
    unpadded), else None. Max before requantizing is exact because requantization is monotonic."""
    if op.kind != "conv" or len(users) != 1:
        return None
    pool = users[0]
    if pool.kind == "maxpool" and pool.kernel == (2, 2) and pool.stride == (2, 2) and not any(pool.pads):
        return pool
    return None


def quantize_graph(graph: Graph, ranges: dict, source="profile") -> QuantModel:
    """Quantize `graph` with `ranges` {NodeOutputName: (min, max)} (from a profile). Raises ValueError naming
    `source` when a needed tensor has no range."""
    names = graph.profile_names()

    def range_exp(tensor):
        key = names[tensor]
        if key not in ranges:
            raise ValueError(f"{source}: no entry for NodeOutputName {key!r} needed by the model; regenerate the "
                             f"profile for this model (make_profile) or add the entry")
        return power2_exponent(*ranges[key])

    consumers = {}
    for op in graph.ops:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op)
    exps = {graph.input_name: range_exp(graph.input_name)}
    qops = [QuantOp("quantize", graph.input_name, (graph.input_name,), graph.input_name, exps[graph.input_name])]
    fused = set()
    flat_order = {}  # flattened tensor -> stored order of its elements
    for op in graph.ops:
        if op.output in fused:
            continue
        out = op.output
        users = consumers.get(out, [])
        relu = users[0] if len(users) == 1 and users[0].kind == "relu" and op.kind in ("conv", "fc", "add") \
            and out != graph.output_name else None
        if relu is not None:
            fused.add(relu.output)
            out = relu.output
        pool = _fusable_pool(op, consumers.get(out, []))
        if pool is not None:
            fused.add(pool.output)
        x = op.inputs[0]
        if op.kind in ("maxpool", "flatten", "relu"):
            exps[out] = exps[x]
            if op.kind == "flatten":
                flat_order[out] = _stored_order(graph.shapes[x])[flat_order[x]] if x in flat_order \
                    else _stored_order(graph.shapes[x])
            qops.append(QuantOp(op.kind, op.node, (x,), out, exps[out], act_min=0 if op.kind == "relu" else INT8_MIN,
                                kernel=op.kernel, stride=op.stride, pads=op.pads))
            continue
        if op.kind == "softmax":
            if out != graph.output_name:
                raise UnsupportedOpError(f"Softmax node {op.node!r} is supported only as the model's last op")
            qops.append(QuantOp("softmax", op.node, (x,), out, 0))
            continue
        exps[out] = range_exp(out)
        if pool is not None:  # the pooled tensor keeps the conv output's parameters, like an unfused MaxPool
            exps[pool.output] = exps[out]
            out = pool.output
        act_min = 0 if relu is not None else INT8_MIN
        if op.kind == "add":
            shifts = tuple(exps[out] - exps[i] for i in op.inputs)
            qops.append(QuantOp("add", op.node, op.inputs, out, exps[out], act_min=act_min, input_shifts=shifts))
            continue
        w = op.weight.reshape(op.weight.shape[0], -1)
        if op.kind == "fc" and x in flat_order:
            order = flat_order[x]
            w = w[:, order]
        w_exp = power2_exponent(float(w.min()), float(w.max()))
        acc_exp = exps[x] + w_exp
        b_exp = max(power2_exponent(float(op.bias.min()), float(op.bias.max()), BIAS_MIN, BIAS_MAX), acc_exp)
        bias_q = quantize_array(op.bias, b_exp, BIAS_MIN, BIAS_MAX, np.int64) << (b_exp - acc_exp)
        if np.abs(bias_q).max(initial=0) >= 2**30:
            raise ValueError(f"node {op.node!r}: bias too large for int32 at scale 2**{acc_exp}; "
                             f"check the model's bias values")
        qops.append(QuantOp(op.kind, op.node, (x,), out, exps[out], shift=exps[out] - acc_exp, act_min=act_min,
                            weight=quantize_array(w, w_exp), bias=bias_q.astype(np.int32), kernel=op.kernel,
                            stride=op.stride, pads=op.pads, weight_exp=w_exp, pool=1 if pool is None else 2))
    softmax = qops.pop() if qops[-1].kind == "softmax" else None
    final = softmax.inputs[0] if softmax else graph.output_name
    if len(graph.shapes[final]) != 1:
        raise UnsupportedOpError(f"the model output {final!r} has shape {graph.shapes[final]}; the built-in "
                                 f"backend supports a flat (batch, classes) output")
    if softmax:
        # Softmax runs in float on the dequantized logits.
        logits = f"{final}/dequantized"
        graph.shapes[logits] = graph.shapes[final]
        qops += [QuantOp("dequantize", final, (final,), logits, exps[final]),
                 QuantOp("softmax", softmax.node, (logits,), graph.output_name, 0)]
    else:
        # The int8 result gets its own tensor; the float output placeholder is written by the dequantize.
        quantized = f"{final}/quantized"
        for op in qops:
            op.inputs = tuple(quantized if i == final else i for i in op.inputs)
            if op.output == final:
                op.output = quantized
        graph.shapes[quantized], exps[quantized] = graph.shapes[final], exps[final]
        qops.append(QuantOp("dequantize", final, (quantized,), graph.output_name, exps[final]))
    return QuantModel(graph, qops, exps)


# ---------------------------------------------------------------- int8 reference
def run_int8(qm: QuantModel, x_nchw: np.ndarray, keep_all: bool = False):
    """Bit-exact reference of the generated C. Returns the float output (logits or softmax), or with keep_all
    a dict of every int8 tensor (stored layout) plus the output."""
    outs = []
    for start in range(0, len(x_nchw), BATCH):
        # the quantize op reads the float input under the input's name and stores the int8 tensor there
        t = {qm.graph.input_name: np.asarray(x_nchw[start:start + BATCH], np.float32)}
        for op in qm.ops:
            t[op.output] = OPS[op.kind].run_int8(op, [t[i] for i in op.inputs])
        outs.append(t if keep_all else t[qm.graph.output_name])
    if keep_all:
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return np.concatenate(outs)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy; ties go to the lowest index like Glow's getOutputClass."""
    return float(np.mean(np.argmax(outputs, axis=1) == np.asarray(labels)))
