"""One definition per operator kind of the built-in backend: shape inference, the float reference, the int8 NumPy
reference (bit-exact with the C), its import from ONNX, MACs, the weight layout and scratch rule of its C kernel, and the C it emits (the
params struct and the call). Adding an operator is adding a class here (and its kernels/<function>.c).

`op` below is a graph.FloatOp (shape inference, float reference) or a graph.QuantOp (the rest); `shapes` maps a
tensor to its per-image shape as stored ((H, W, C) or (K,)); `e` is bundle's emitter of buffer expressions.

Scratch: Python owns the rule. The plan must size every buffer before anything is compiled, so each kernel gets
its scratch as pointers the bundle planned (conv2d_s8: the im2col columns and the byte stage), and the C holds no
size formula of its own; the one C fact the rule needs, the conv tile width, is read from nn_kernels.h
(`constants`, supplied by bundle.py, which declares the kernels folder as its resource)."""
import numpy as np

from pipeline.model.evaluation import softmax

INT8_MIN, INT8_MAX = -128, 127
GROUP = 4  # values per weight/column group (nn_kernels.h NN_ROW_LENGTH): rows are zero-padded to a multiple


class UnsupportedOpError(ValueError):
    """The model uses an operator (or attribute) the built-in backend does not compile."""


# ---------------------------------------------------------------- shared array helpers
def im2col(x: np.ndarray, kernel, stride, pads, pad_value) -> np.ndarray:
    """NHWC -> (N, OH, OW, kh*kw*C) patches in (kh, kw, C) order, the order of the weights."""
    kh, kw = kernel
    x = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)), constant_values=pad_value)
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride[0], ::stride[1]]
    n, oh, ow = win.shape[:3]
    return win.transpose(0, 1, 2, 4, 5, 3).reshape(n, oh, ow, -1)


def max_pool(x, kernel, stride, pads, pad_value):
    patches = im2col(x, kernel, stride, pads, pad_value)
    n, oh, ow, _ = patches.shape
    return patches.reshape(n, oh, ow, kernel[0] * kernel[1], x.shape[3]).max(axis=3)


def flatten_logical(x):
    """NHWC -> ONNX Flatten order (C, H, W)."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1) if x.ndim == 4 else x


def quantize_array(x: np.ndarray, exp: int, qmin=INT8_MIN, qmax=INT8_MAX, dtype=np.int8) -> np.ndarray:
    """Glow quantize: round-half-even(x / scale), saturated; exact in float32 because the scale is 2**exp."""
    scaled = np.asarray(x, np.float32) * np.float32(2.0 ** -exp)
    return np.clip(np.rint(scaled), qmin, qmax).astype(dtype)


def requantize(acc: np.ndarray, shift: int, act_min: int) -> np.ndarray:
    """Accumulator -> int8 at the output scale: Glow's libjit_scale_i32i8 for a power-of-2 ratio
    (add 2**(shift-1), arithmetic shift right; a negative shift multiplies), then saturate."""
    acc = acc.astype(np.int64)
    if shift > 0:
        acc = (acc + (1 << (shift - 1))) >> shift
    else:
        acc = acc << -shift
    return np.clip(acc, act_min, INT8_MAX).astype(np.int8)


def requantize_wide(q: np.ndarray, shift: int) -> np.ndarray:
    """int8 -> int64 at another power-of-2 scale (rounding right shift, or left shift), not saturated."""
    q = q.astype(np.int64)
    # Shifts clamped like the C kernel (to stay defined in int32); results after saturation are unchanged.
    return (q + (1 << (min(shift, 31) - 1))) >> min(shift, 31) if shift > 0 else q << min(-shift, 15)


def _padded(n: int) -> int:
    return (n + GROUP - 1) // GROUP * GROUP


def kernel_weight_layout(weight: np.ndarray) -> np.ndarray:
    """int8 weight rows (N, K) as the kernels read them (nn_kernels.h): rows zero-padded to a multiple of 4 and to
    an even count (an odd last row gets a zero partner), then in pairs with the two rows' groups of 4 interleaved.
    Returns the flat byte order."""
    rows = np.zeros(((weight.shape[0] + 1) // 2 * 2, _padded(weight.shape[1])), np.int8)
    rows[:weight.shape[0], :weight.shape[1]] = weight
    return rows.reshape(rows.shape[0] // 2, 2, -1, GROUP).transpose(0, 2, 1, 3).reshape(-1)


def _hex_float(value: float) -> str:
    return float(value).hex() + "f"


def _params(struct: str, i: int, *fields) -> str:
    return f"static const {struct} op{i}_params = {{{', '.join(str(f) for f in fields)}}};"


# ---------------------------------------------------------------- operators
class Operator:
    """The defaults: an element-wise op (output shape = input shape), no MACs, no weights, no scratch."""
    kind = ""
    function = None  # its C kernel, kernels/<function>.c; None: no call (the output aliases its input)
    onnx_types = ()  # the ONNX operators it is imported from

    def from_onnx(self, node, attrs, consts, producers, fail, make):
        """The graph.FloatOp of ONNX `node` (one of onnx_types), or None when the node folds into an earlier op.
        `fail(what)` is the UnsupportedOpError naming the node; `make(inputs, output, **fields)` builds the FloatOp
        of this kind; `producers` maps a tensor to the FloatOp that writes it."""
        return make((node.input[0],), node.output[0])

    def output_shape(self, op, shapes, onnx_path) -> tuple:
        return shapes[op.inputs[0]]

    def run_float(self, op, xs):
        raise NotImplementedError(f"{self.kind} has no float form")

    def run_int8(self, op, xs):
        raise NotImplementedError(f"{self.kind} has no int8 form")

    def macs(self, op, shapes) -> int:
        return 0

    def weight_bytes(self, op, shapes) -> bytes | None:
        """The weights in the kernel's layout (None: the op has no constants)."""
        return None

    def scratch_bytes(self, op, shapes, constants) -> int:
        return 0

    def emit(self, e, i, op) -> tuple:
        """(static params line, call) of op i."""
        raise NotImplementedError


class Quantize(Operator):
    kind, function = "quantize", "quantize_f32_s8"

    def run_int8(self, op, xs):
        return quantize_array(xs[0], op.out_exp).transpose(0, 2, 3, 1)

    def emit(self, e, i, op):
        _, c, h, w = e.qm.graph.input_shape
        return (_params("quantize_f32_s8_params", i, c, h, w, _hex_float(2.0 ** -op.out_exp)),
                f"quantize_f32_s8(&op{i}_params, {e.placeholder(e.qm.graph.input_name, 'const float')}, "
                f"{e.buf(op.output)});")


class _WithWeights(Operator):
    """Conv and FC: int8 weight rows, int32 bias, accumulate then requantize."""

    def k_order(self, op, shapes) -> np.ndarray:
        """Column j of the kernel's weight rows is column k_order[j] of op.weight."""
        return np.arange(op.weight.shape[1])

    def weight_bytes(self, op, shapes):
        return kernel_weight_layout(op.weight[:, self.k_order(op, shapes)]).tobytes()


class Conv(_WithWeights):
    kind, function, onnx_types = "conv", "conv2d_s8", ("Conv",)

    def from_onnx(self, node, attrs, consts, producers, fail, make):
        if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])) or \
                attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise fail("grouped, dilated or auto-padded Conv")
        w = consts[node.input[1]]
        bias = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32)
        return make((node.input[0],), node.output[0], weight=w.transpose(0, 2, 3, 1).copy(), bias=bias,
                    kernel=tuple(w.shape[2:]), stride=tuple(attrs.get("strides", [1, 1])),
                    pads=tuple(attrs.get("pads", [0, 0, 0, 0])[:4]))

    def output_shape(self, op, shapes, onnx_path):
        s = shapes[op.inputs[0]]
        if op.weight.shape[3] != s[2]:
            raise ValueError(f"{onnx_path}: node {op.node!r} expects {op.weight.shape[3]} channels, gets {s[2]}")
        return (*_window_output(s, op), op.weight.shape[0])

    def run_float(self, op, xs):
        cols = im2col(xs[0], op.kernel, op.stride, op.pads, 0.0)
        return cols @ op.weight.reshape(op.weight.shape[0], -1).T + op.bias

    def run_int8(self, op, xs):
        cols = im2col(xs[0], op.kernel, op.stride, op.pads, 0)
        acc = np.rint(cols.astype(np.float64) @ op.weight.T.astype(np.float64)).astype(np.int64)
        y = requantize(acc + op.bias, op.shift, op.act_min)
        # a fused pool pools the requantized tensor, as the unfused graph does
        return max_pool(y, (2, 2), (2, 2), (0, 0, 0, 0), INT8_MIN) if op.pool == 2 else y

    def macs(self, op, shapes):
        oh, ow, out_c = shapes[op.output]  # every conv output pixel, also those a fused pool reduces
        return oh * op.pool * ow * op.pool * out_c * op.weight.shape[1]

    @staticmethod
    def _patch_row(op, shapes) -> tuple[int, int]:
        """(values in one patch row, those of them in whole groups): conv2d_s8.c reads each patch row's whole
        groups straight from the input, and gathers every row's remainder into trailing groups."""
        row = op.kernel[1] * shapes[op.inputs[0]][2]
        return row, row // GROUP * GROUP

    def k_order(self, op, shapes):
        row, whole = self._patch_row(op, shapes)
        rows = np.arange(op.kernel[0] * row).reshape(op.kernel[0], row)
        return np.concatenate([rows[:, :whole].reshape(-1), rows[:, whole:].reshape(-1)])

    @staticmethod
    def _column_bytes(op, constants) -> int:
        """The int16 im2col columns of one tile, at the start of the scratch."""
        return constants["NN_CONV_TILE_PIXELS"] * _padded(op.weight.shape[1]) * 2

    def scratch_bytes(self, op, shapes, constants):
        # the columns, then the byte stage: one patch row (a row crossing the padding is assembled there) and the
        # rows' remainders
        row, whole = self._patch_row(op, shapes)
        return self._column_bytes(op, constants) + row + _padded(op.kernel[0] * (row - whole))

    def emit(self, e, i, op):
        (ih, iw, ic), (oh, ow, oc) = e.shapes[op.inputs[0]], e.shapes[op.output]
        columns = self._column_bytes(op, e.constants)
        return (_params("conv2d_s8_params", i, ih, iw, ic, oh, ow, oc, *op.kernel, *op.stride, op.pads[0],
                        op.pads[1], op.shift, op.act_min, op.pool),
                f"conv2d_s8(&op{i}_params, {e.buf(op.inputs[0])}, {e.const(i, 'weight', 'int8_t')}, "
                f"{e.const(i, 'bias', 'int32_t')}, {e.buf(op.output)}, {e.buf(('scratch', i), 'int16_t')}, "
                f"{e.buf(('scratch', i), 'int8_t', columns)});")


class FullyConnected(_WithWeights):
    kind, function, onnx_types = "fc", "fully_connected_s8", ("Gemm", "MatMul")

    def from_onnx(self, node, attrs, consts, producers, fail, make):
        if node.op_type == "MatMul":
            if node.input[1] not in consts:
                raise fail("MatMul of two activations")
            w = consts[node.input[1]].T
            return make((node.input[0],), node.output[0], weight=np.ascontiguousarray(w),
                        bias=np.zeros(w.shape[0], np.float32))
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise fail("transA, alpha or beta other than the defaults")
        b = consts[node.input[1]]
        w = b if attrs.get("transB", 0) else b.T
        bias = consts[node.input[2]].reshape(-1) if len(node.input) > 2 and node.input[2] else \
            np.zeros(w.shape[0], np.float32)
        return make((node.input[0],), node.output[0], weight=np.ascontiguousarray(w), bias=bias)

    def output_shape(self, op, shapes, onnx_path):
        s = shapes[op.inputs[0]]
        if len(s) != 1 or op.weight.shape[1] != s[0]:
            raise ValueError(f"{onnx_path}: node {op.node!r} expects {op.weight.shape[1]} features, gets {s}")
        return (op.weight.shape[0],)

    def run_float(self, op, xs):
        return flatten_logical(xs[0]) @ op.weight.T + op.bias

    def run_int8(self, op, xs):
        acc = np.rint(xs[0].astype(np.float64) @ op.weight.T.astype(np.float64)).astype(np.int64)
        return requantize(acc + op.bias, op.shift, op.act_min)

    def macs(self, op, shapes):
        return int(op.weight.size)

    def scratch_bytes(self, op, shapes, constants):
        return 2 * _padded(op.weight.shape[1])  # the input widened to int16

    def emit(self, e, i, op):
        return (_params("fully_connected_s8_params", i, op.weight.shape[1], op.weight.shape[0], op.shift, op.act_min),
                f"fully_connected_s8(&op{i}_params, {e.buf(op.inputs[0])}, {e.const(i, 'weight', 'int8_t')}, "
                f"{e.const(i, 'bias', 'int32_t')}, {e.buf(op.output)}, {e.buf(('scratch', i), 'int16_t')});")


def _window_output(s, op) -> tuple[int, int]:
    return ((s[0] + op.pads[0] + op.pads[2] - op.kernel[0]) // op.stride[0] + 1,
            (s[1] + op.pads[1] + op.pads[3] - op.kernel[1]) // op.stride[1] + 1)


class MaxPool(Operator):
    kind, function, onnx_types = "maxpool", "max_pool_s8", ("MaxPool",)

    def from_onnx(self, node, attrs, consts, producers, fail, make):
        if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])) or len(node.output) > 1:
            raise fail("ceil_mode, dilation or indices output of MaxPool")
        return make((node.input[0],), node.output[0], kernel=tuple(attrs["kernel_shape"]),
                    stride=tuple(attrs.get("strides", [1, 1])), pads=tuple(attrs.get("pads", [0, 0, 0, 0])[:4]))

    def output_shape(self, op, shapes, onnx_path):
        s = shapes[op.inputs[0]]
        return (*_window_output(s, op), s[2])

    def run_float(self, op, xs):
        return max_pool(xs[0], op.kernel, op.stride, op.pads, -np.inf)

    def run_int8(self, op, xs):
        return max_pool(xs[0], op.kernel, op.stride, op.pads, INT8_MIN)

    def emit(self, e, i, op):
        (ih, iw, ic), (oh, ow, _) = e.shapes[op.inputs[0]], e.shapes[op.output]
        return (_params("max_pool_s8_params", i, ih, iw, ic, oh, ow, *op.kernel, *op.stride, op.pads[0], op.pads[1]),
                f"max_pool_s8(&op{i}_params, {e.buf(op.inputs[0])}, {e.buf(op.output)});")


class Relu(Operator):
    kind, function, onnx_types = "relu", "relu_s8", ("Relu",)

    def run_float(self, op, xs):
        return np.maximum(xs[0], 0)

    run_int8 = run_float

    def emit(self, e, i, op):
        return (_params("relu_s8_params", i, e.size(op.output)),
                f"relu_s8(&op{i}_params, {e.buf(op.inputs[0])}, {e.buf(op.output)});")


class Flatten(Operator):
    kind, onnx_types = "flatten", ("Flatten", "Reshape")

    def from_onnx(self, node, attrs, consts, producers, fail, make):
        if node.op_type == "Flatten" and attrs.get("axis", 1) != 1:
            raise fail("Flatten with axis other than 1")
        shape = consts.get(node.input[1]) if node.op_type == "Reshape" else None
        if node.op_type == "Reshape" and (shape is None or len(shape) != 2 or shape[0] not in (0, 1, -1)):
            raise fail("Reshape other than flattening to (batch, features)")
        return make((node.input[0],), node.output[0])

    def output_shape(self, op, shapes, onnx_path):
        return (int(np.prod(shapes[op.inputs[0]])),)

    def run_float(self, op, xs):
        return flatten_logical(xs[0])

    def run_int8(self, op, xs):
        return xs[0].reshape(len(xs[0]), -1)  # stored order; quantize_graph permutes the next FC's weights


class Add(Operator):
    kind, function, onnx_types = "add", "add_s8", ("Add",)

    def from_onnx(self, node, attrs, consts, producers, fail, make):
        const = [i for i in node.input if i in consts]
        if not const:
            return make(tuple(node.input), node.output[0])
        # MatMul + Add(bias) as exported for Linear layers: fold the constant into the matmul's bias.
        prev = producers.get([i for i in node.input if i not in consts][0])
        if prev is None or prev.kind != "fc" or not np.all(prev.bias == 0):
            raise fail("Add of a constant (other than a MatMul bias)")
        prev.bias = prev.bias + consts[const[0]].reshape(-1)
        prev.output, prev.node = node.output[0], node.name or node.output[0]
        producers[node.output[0]] = prev
        return None

    def output_shape(self, op, shapes, onnx_path):
        a, b = (shapes[t] for t in op.inputs)
        if a != b:
            raise UnsupportedOpError(f"{onnx_path}: Add node {op.node!r} broadcasts {a} with {b}; only same-shape "
                                     f"Add is supported")
        return a

    def run_float(self, op, xs):
        return xs[0] + xs[1]

    def run_int8(self, op, xs):
        terms = [requantize_wide(x, s) for x, s in zip(xs, op.input_shifts)]
        return np.clip(terms[0] + terms[1], op.act_min, INT8_MAX).astype(np.int8)

    def emit(self, e, i, op):
        return (_params("add_s8_params", i, e.size(op.output), *op.input_shifts, op.act_min),
                f"add_s8(&op{i}_params, {e.buf(op.inputs[0])}, {e.buf(op.inputs[1])}, {e.buf(op.output)});")


class Dequantize(Operator):
    kind, function = "dequantize", "dequantize_s8_f32"

    def run_int8(self, op, xs):
        return xs[0].astype(np.float32) * np.float32(2.0 ** op.out_exp)

    def emit(self, e, i, op):
        return (_params("dequantize_s8_f32_params", i, e.size(op.inputs[0]), _hex_float(2.0 ** op.out_exp)),
                f"dequantize_s8_f32(&op{i}_params, {e.buf(op.inputs[0])}, {e.buf(op.output, 'float')});")


class Softmax(Operator):
    kind, function, onnx_types = "softmax", "softmax_f32", ("Softmax",)

    def from_onnx(self, node, attrs, consts, producers, fail, make):
        if attrs.get("axis", -1) not in (-1, 1):
            raise fail("Softmax over an axis other than the last")
        return make((node.input[0],), node.output[0])

    def run_float(self, op, xs):
        return softmax(xs[0])

    run_int8 = run_float  # in float, on the dequantized logits

    def emit(self, e, i, op):
        return (_params("softmax_f32_params", i, e.size(op.output)),
                f"softmax_f32(&op{i}_params, {e.buf(op.inputs[0], 'float')}, {e.buf(op.output, 'float')});")


OPS = {cls.kind: cls() for cls in (Quantize, Conv, FullyConnected, MaxPool, Relu, Flatten, Add, Dequantize, Softmax)}
