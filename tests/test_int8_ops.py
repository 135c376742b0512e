"""The operator definitions (pipeline/int8/ops.py): the kernel files and parameter structs are the ones the
registry names, and conv2d_s8, called as the bundle emits it with exactly the scratch the Python rule sizes, equals
the NumPy int8 reference and writes nothing past that scratch (portable and DSP paths, on the host)."""
import re
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.int8 import bundle
from pipeline.int8.graph import QuantOp
from pipeline.int8.ops import OPS, Operator

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
GUARD = 64  # bytes after the scratch that the kernel must leave alone


def test_every_kernel_file_belongs_to_one_operator_with_a_params_struct():
    header = (bundle.KERNELS_DIR / "nn_kernels.h").read_text()
    functions = [op.function for op in OPS.values() if op.function]
    assert sorted(f"{f}.c" for f in functions) == sorted(
        p.name for p in bundle.KERNELS_DIR.glob("*.c") if p.name != "host_runner.c")
    for function in functions:  # every kernel takes its parameters as a struct, first
        assert re.search(rf"\b{function}_params\b[^;]*;", header), function
        assert re.search(rf"void {function}\(const {function}_params \*p,", header), function
    assert all(type(op).emit is not Operator.emit for op in OPS.values() if op.function)


class _HarnessEmitter:
    """The bundle emitter's interface, naming the harness's arrays instead of bundle memory."""

    def __init__(self, shapes):
        self.shapes, self.constants = shapes, bundle.kernel_constants()

    def buf(self, key, ctype="int8_t", offset=0):
        if isinstance(key, tuple):  # ("scratch", op index)
            return f"({ctype} *)(scratch + {offset})"
        return {"x": "input", "y": "output"}[key]

    def const(self, i, part, ctype):
        return f"(const {ctype} *){part}"


CASES = {  # in (h, w, c), out_c, kernel, stride, pads (top, left, bottom, right), pool, shift, act_min
    "3ch_pad_partial_tile_odd_out": ((6, 7, 3), 5, (3, 3), (1, 1), (1, 1, 1, 1), 1, 7, 0),
    "8ch_fused_pool": ((6, 6, 8), 4, (3, 3), (1, 1), (1, 1, 1, 1), 2, 6, -128),
    "5ch_2x3_stride2_left_shift": ((7, 9, 5), 3, (2, 3), (2, 2), (0, 1, 1, 1), 1, -1, -128),
    "16ch_1x1": ((3, 5, 16), 6, (1, 1), (1, 1), (0, 0, 0, 0), 1, 9, 0),
}


def _conv_case(case, rng):
    (h, w, c), out_c, kernel, stride, pads, pool, shift, act_min = case
    oh = (h + pads[0] + pads[2] - kernel[0]) // stride[0] + 1
    ow = (w + pads[1] + pads[3] - kernel[1]) // stride[1] + 1
    k = kernel[0] * kernel[1] * c
    op = QuantOp("conv", "conv", ("x",), "y", 0, shift=shift, act_min=act_min,
                 weight=rng.integers(-128, 128, (out_c, k), dtype=np.int8),
                 bias=rng.integers(-2000, 2000, out_c).astype(np.int32), kernel=kernel, stride=stride, pads=pads,
                 pool=pool)
    shapes = {"x": (h, w, c), "y": (oh // pool, ow // pool, out_c)}
    return op, shapes, rng.integers(-128, 128, (1, h, w, c), dtype=np.int8)


def _c_array(ctype, name, values, align=8):
    return f"static const {ctype} {name}[] __attribute__((aligned({align}))) = {{{', '.join(map(str, values))}}};"


@needs_gcc
@pytest.mark.parametrize("dsp_shim", [False, True], ids=["portable", "dsp"])
@pytest.mark.parametrize("name", CASES)
def test_conv_as_emitted_with_the_planned_scratch_is_exact_and_stays_inside(name, dsp_shim, tmp_path):
    conv = OPS["conv"]
    op, shapes, x = _conv_case(CASES[name], np.random.default_rng(len(name)))
    scratch = conv.scratch_bytes(op, shapes, bundle.kernel_constants())
    params, call = conv.emit(_HarnessEmitter(shapes), 0, op)
    out_bytes = int(np.prod(shapes["y"]))
    source = "\n".join([
        '#include <stdio.h>', '#include "nn_kernels.h"', params,
        _c_array("int8_t", "input", x.reshape(-1).tolist()),
        _c_array("int8_t", "weight", np.frombuffer(conv.weight_bytes(op, shapes), np.int8).tolist()),
        _c_array("int32_t", "bias", op.bias.tolist()),
        f"static int8_t output[{out_bytes}];",
        f"static uint8_t scratch[{scratch + GUARD}] __attribute__((aligned(64)));",
        "int main(void)", "{",
        f"    memset(scratch, 0xA5, sizeof scratch);", f"    {call}",
        f"    fwrite(output, 1, {out_bytes}, stdout);", f"    fwrite(scratch + {scratch}, 1, {GUARD}, stdout);",
        "    return 0;", "}", ""])
    (tmp_path / "harness.c").write_text(source)
    exe = tmp_path / "harness"
    subprocess.run(["gcc", "-std=gnu99", "-O2", "-Wall", *(["-DNN_ACLE_SHIM"] if dsp_shim else []),
                    f"-I{bundle.KERNELS_DIR}", tmp_path / "harness.c", bundle.KERNELS_DIR / "conv2d_s8.c",
                    "-o", exe], check=True)
    result = subprocess.run([exe], check=True, capture_output=True).stdout
    expected = conv.run_int8(op, [x]).reshape(-1)
    assert np.frombuffer(result[:out_bytes], np.int8).tolist() == expected.tolist()
    assert result[out_bytes:] == b"\xa5" * GUARD
