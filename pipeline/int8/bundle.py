"""Built-in backend, compile stage: quantized model -> a bundle with Glow's static API (cifar.h, cifar.c,
cifar.weights.bin/.txt, cifar.o per board), plus a host build of the same C to measure it.

Glow's memory model: `constantWeight` holds weights (cifar.weights.bin), `mutableWeight` the float input and
output placeholders at <NAME>_<placeholder> offsets, `activations` the scratch, planned by liveness."""
import functools
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.int8 import graph as int8_graph
from pipeline.int8.ops import OPS
from pipeline import ROOT
from pipeline.core.atomic import atomic_dir, write_bytes
from pipeline.int8.profile import read_profile
from pipeline.core.tools import Skipped, board_tool, board_toolchain, run_tool

MEM_ALIGN = 64
RESOURCES = ("pipeline/int8/kernels",)  # C kernels and the host runner (see pipeline/core/deps.py)
KERNELS_DIR = ROOT / RESOURCES[0]
BASE_CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-ffunction-sections", "-fdata-sections"]


@functools.cache
def kernel_constants() -> dict[str, int]:
    """The integer #defines of nn_kernels.h (the C facts the operators' scratch rules use)."""
    text = (KERNELS_DIR / "nn_kernels.h").read_text()
    return {name: int(value) for name, value in re.findall(r"^#define (NN_\w+) (\d+)\b", text, re.MULTILINE)}


def _align(n: int) -> int:
    return (n + MEM_ALIGN - 1) // MEM_ALIGN * MEM_ALIGN


def c_identifier(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


@dataclass
class Plan:
    constant: bytes
    constant_offsets: dict  # (op index, "weight"|"bias") -> offset
    activation_offsets: dict  # tensor or ("scratch", op index) -> offset
    activations_size: int
    activations_efficiency: float
    input_offset: int
    output_offset: int
    mutable_size: int
    in_place: set = field(default_factory=set)  # conv op indices whose output overwrites their own input


def _tensor_bytes(qm, tensor) -> int:
    return int(np.prod(qm.graph.shapes[tensor]))


def conv_in_place_safe(qm: int8_graph.QuantModel, op) -> bool:
    """Whether conv2d_s8 may write its output over its own input. The kernel works in steps (one pooled pixel, or a
    tile of 4 pixels): it gathers every patch of the step, then writes the step's outputs. Safe when no step writes
    input bytes that a later step still reads (the first byte a step reads is its patches' first inside pixel)."""
    (in_h, in_w, in_c), (out_h, out_w, out_c) = qm.graph.shapes[op.inputs[0]], qm.graph.shapes[op.output]
    if out_h * out_w * out_c > in_h * in_w * in_c:
        return False
    oy, ox = np.divmod(np.arange(out_h * out_w), out_w)
    if op.pool == 2:  # step j: the 2x2 window of pooled pixel j, writes pooled pixel j
        cy, cx, writes_end = 2 * oy, 2 * ox, (np.arange(out_h * out_w) + 1) * out_c
    else:  # step t: pixels 4t..4t+3 (the earliest read is the first pixel's), writes them
        cy, cx = oy[::4], ox[::4]
        writes_end = np.minimum(np.arange(len(cy)) * 4 + 4, out_h * out_w) * out_c
    first_row = np.maximum(cy * op.stride[0] - op.pads[0], 0)
    first_column = np.maximum(cx * op.stride[1] - op.pads[1], 0)
    first_read = (first_row * in_w + first_column) * in_c
    later_first_read = np.minimum.accumulate(first_read[::-1])[::-1][1:]  # min over the steps after each one
    return bool(np.all(writes_end[:-1] <= later_first_read))


def _buffer_bytes(qm: int8_graph.QuantModel, op) -> int:
    return _tensor_bytes(qm, op.output) * (4 if op.kind == "dequantize" else 1)


def plan_memory(qm: int8_graph.QuantModel) -> Plan:
    """Lay out constants, placeholders and activations (first-fit by liveness, 64-byte aligned; a conv whose input
    dies with it writes over that input when conv_in_place_safe). The plan is checked by check_plan."""
    constant, const_offsets = bytearray(), {}
    for i, op in enumerate(qm.ops):
        weights = OPS[op.kind].weight_bytes(op, qm.graph.shapes)
        if weights is not None:
            for part, data in (("weight", weights), ("bias", op.bias.astype("<i4").tobytes())):
                const_offsets[(i, part)] = len(constant)
                constant += data + bytes(_align(len(data)) - len(data))
    graph = qm.graph
    in_bytes = 4 * int(np.prod(graph.input_shape))
    out_bytes = 4 * int(np.prod(graph.shapes[graph.output_name]))
    base, last_use = _buffers(qm)
    allocated, offsets, peak_live, size, in_place = [], {}, 0, 0, set()  # allocated: [(offset, end, key, last use)]
    for i, op in enumerate(qm.ops):
        allocated = [a for a in allocated if a[3] >= i]
        wanted = []
        if OPS[op.kind].function and op.output != graph.output_name:
            wanted.append((op.output, _buffer_bytes(qm, op), last_use.get(op.output, i)))
        scratch = _scratch_bytes(qm, op)
        if scratch:
            wanted.append((("scratch", i), scratch, i))
        source = base.get(op.inputs[0], op.inputs[0])
        dying = [a for a in allocated if a[2] == source and a[3] == i]
        if op.kind == "conv" and dying and conv_in_place_safe(qm, op):
            # the input stays reserved until this op ends (its scratch must not land on it)
            start, (_, nbytes, until) = dying[0][0], wanted[0]
            allocated.append((start, start + nbytes, op.output, until))
            offsets[op.output] = start
            in_place.add(i)
            wanted = wanted[1:]
        for key, nbytes, until in wanted:
            offset = 0
            for start, end, _, _ in sorted(allocated):
                if offset + nbytes <= start:
                    break
                offset = max(offset, _align(end))
            allocated.append((offset, offset + nbytes, key, until))
            offsets[key] = offset
            size = max(size, _align(offset + nbytes))
        peak_live = max(peak_live, sum(_align(end - start) for start, end, _, _ in allocated))
    for tensor, b in base.items():
        if b in offsets:
            offsets[tensor] = offsets[b]
    plan = Plan(bytes(constant), const_offsets, offsets, size, peak_live / size if size else 1.0,
                0, _align(in_bytes), _align(_align(in_bytes) + out_bytes), in_place)
    check_plan(qm, plan)
    return plan


def _buffers(qm: int8_graph.QuantModel) -> tuple[dict, dict]:
    """(tensor -> the buffer it lives in: Flatten aliases its input; buffer -> index of the last op reading it)."""
    base = {}
    for op in qm.ops:
        base[op.output] = op.output if OPS[op.kind].function else base.get(op.inputs[0], op.inputs[0])
    last_use = {}
    for i, op in enumerate(qm.ops):
        for t in op.inputs:
            last_use[base.get(t, t)] = i
    return base, last_use


def check_plan(qm: int8_graph.QuantModel, plan: Plan) -> None:
    """The planner's invariant: two activation buffers alive during the same op never share a byte, except a conv
    output over its own dying input where plan.in_place says so and conv_in_place_safe agrees. Raises ValueError
    naming both buffers (a planner bug, not bad input)."""
    base, last_use = _buffers(qm)
    spans = []  # (first op, last op, offset, end, key)
    for i, op in enumerate(qm.ops):
        if op.output in plan.activation_offsets and base[op.output] == op.output:
            offset = plan.activation_offsets[op.output]
            spans.append((i, last_use.get(op.output, i), offset, offset + _buffer_bytes(qm, op), op.output))
        if ("scratch", i) in plan.activation_offsets:
            offset = plan.activation_offsets[("scratch", i)]
            spans.append((i, i, offset, offset + _scratch_bytes(qm, op), ("scratch", i)))
    for a, (a_first, a_last, a_start, a_end, a_key) in enumerate(spans):
        if a_end > plan.activations_size:
            raise ValueError(f"memory plan: {a_key} ends at {a_end}, past the activations size {plan.activations_size}")
        for b_first, b_last, b_start, b_end, b_key in spans[a + 1:]:
            if a_first > b_last or b_first > a_last or a_end <= b_start or b_end <= a_start:
                continue
            op = qm.ops[b_first]
            if b_first in plan.in_place and b_key == op.output and a_key == op.inputs[0] and a_last == b_first and \
                    conv_in_place_safe(qm, op):
                continue
            raise ValueError(f"memory plan: {a_key} [{a_start}, {a_end}) alive at ops {a_first}-{a_last} overlaps "
                             f"{b_key} [{b_start}, {b_end}) alive at ops {b_first}-{b_last}")


def _type_text(shape) -> str:
    return "float<" + " x ".join(str(d) for d in shape) + ">"


def render_header(name: str, qm: int8_graph.QuantModel, plan: Plan) -> str:
    """Glow's static bundle API header (LLVMBackend BundleSaver layout)."""
    upper = name.upper()
    graph = qm.graph
    out_shape = (1, *graph.shapes[graph.output_name])
    placeholders = [(graph.input_name, graph.input_shape, plan.input_offset),
                    (graph.output_name, out_shape, plan.output_offset)]
    total = len(plan.constant) + plan.mutable_size + plan.activations_size
    lines = [
        "// Bundle API auto-generated header file. Do not edit!",
        "// Glow Tools version: none (built-in int8 backend, symmetric_with_power2_scale)",
        "",
        f"#ifndef _GLOW_BUNDLE_{upper}_H",
        f"#define _GLOW_BUNDLE_{upper}_H",
        "",
        "#include <stdint.h>",
        "",
        "// ---------------------------------------------------------------",
        "//                       Common definitions",
        "// ---------------------------------------------------------------",
        "#ifndef _GLOW_BUNDLE_COMMON_DEFS",
        "#define _GLOW_BUNDLE_COMMON_DEFS",
        "",
        "// Glow bundle error code for correct execution.",
        "#define GLOW_SUCCESS 0",
        "",
        "// Memory alignment definition with given alignment size",
        "// for static allocation of memory.",
        "#define GLOW_MEM_ALIGN(size)  __attribute__((aligned(size)))",
        "",
        "// Macro function to get the absolute address of a",
        "// placeholder using the base address of the mutable",
        "// weight buffer and placeholder offset definition.",
        "#define GLOW_GET_ADDR(mutableBaseAddr, placeholderOff)  (((uint8_t*)(mutableBaseAddr)) + placeholderOff)",
        "",
        "#endif",
        "",
        "// ---------------------------------------------------------------",
        "//                          Bundle API",
        "// ---------------------------------------------------------------",
        f'// Model name: "{name}"',
        f"// Total data size: {total} (bytes)",
        f"// Activations allocation efficiency: {plan.activations_efficiency:.4f}",
        "// Placeholders:",
    ]
    for pname, shape, offset in placeholders:
        elements = int(np.prod(shape))
        lines += ["//", f'//   Name: "{pname}"', f"//   Type: {_type_text(shape)}", f"//   Size: {elements} (elements)",
                  f"//   Size: {4 * elements} (bytes)", f"//   Offset: {offset} (bytes)"]
    lines += [
        "//",
        '// NOTE: Placeholders are allocated within the "mutableWeight"',
        "// buffer and are identified using an offset relative to base.",
        "// ---------------------------------------------------------------",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        "// Placeholder address offsets within mutable buffer (bytes).",
    ]
    macros = [(f"{upper}_{c_identifier(p)}", str(off)) for p, _, off in placeholders]
    width = max(len(m) for m, _ in macros)
    lines += [f"#define {m.ljust(width)}  {v}" for m, v in macros]
    sizes = [(f"{upper}_CONSTANT_MEM_SIZE", len(plan.constant)), (f"{upper}_MUTABLE_MEM_SIZE", plan.mutable_size),
             (f"{upper}_ACTIVATIONS_MEM_SIZE", plan.activations_size)]
    width = max(len(m) for m, _ in sizes)
    lines += ["", "// Memory sizes (bytes)."] + [f"#define {m.ljust(width)}  {v}" for m, v in sizes]
    lines += ["", "// Memory alignment (bytes).", f"#define {upper}_MEM_ALIGN  {MEM_ALIGN}", "",
              "// Bundle entry point (inference function). Returns 0",
              "// for correct execution or some error code otherwise.",
              f"int {name}(uint8_t *constantWeight, uint8_t *mutableWeight, uint8_t *activations);", "",
              "#ifdef __cplusplus", "}", "#endif", "#endif", ""]
    return "\n".join(lines)


def layers(qm: int8_graph.QuantModel) -> list[dict]:
    """The bundle's kernel calls in order (layer k is the k-th call, the index NN_LAYER_MARK reports)."""
    calls = [op for op in qm.ops if OPS[op.kind].function]
    return [{"layer": k, "kernel": OPS[op.kind].function, "node": op.node, "output": op.output,
             "shape": list(qm.graph.shapes.get(op.output, ())), "macs": OPS[op.kind].macs(op, qm.graph.shapes),
             "fused_pool": op.pool == 2} for k, op in enumerate(calls)]


def render_manifest(name: str, qm: int8_graph.QuantModel, plan: Plan, layer_profile: bool = False) -> str:
    """<name>.manifest.json: the bundle's ABI (placeholders, memory sizes, alignment) and its layers, for the host
    runner, the firmware check and the report, so that none of them parses the header's comments.
    layer_profile: the object calls nn_layer_mark (main.c then defines it and prints per-layer cycles)."""
    graph = qm.graph
    out_shape = (1, *graph.shapes[graph.output_name])
    placeholders = [{"name": pname, "macro": f"{name.upper()}_{c_identifier(pname)}", "shape": list(shape),
                     "type": "float32", "offset": offset, "size": 4 * int(np.prod(shape))}
                    for pname, shape, offset in ((graph.input_name, graph.input_shape, plan.input_offset),
                                                 (graph.output_name, out_shape, plan.output_offset))]
    manifest = {"name": name, "alignment": MEM_ALIGN,
                "memory": {"constant": len(plan.constant), "mutable": plan.mutable_size,
                           "activations": plan.activations_size},
                "input": placeholders[0], "output": placeholders[1], "layers": layers(qm),
                "layer_profile": layer_profile}
    return json.dumps(manifest, indent=2) + "\n"


class _Emitter:
    """C expressions for one bundle's buffers: activations at their planned offsets, the output placeholder, the
    constants."""

    def __init__(self, name: str, qm: int8_graph.QuantModel, plan: Plan):
        self.qm, self.plan, self.upper, self.shapes = qm, plan, name.upper(), qm.graph.shapes
        self.constants = kernel_constants()

    def placeholder(self, tensor, ctype) -> str:
        return f"({ctype} *)(mutableWeight + {self.upper}_{c_identifier(tensor)})"

    def buf(self, tensor, ctype="int8_t", offset=0) -> str:
        """The buffer of `tensor` (or a ("scratch", op index) key), from `offset` bytes in."""
        if tensor == self.qm.graph.output_name:
            return self.placeholder(tensor, ctype)
        return f"({ctype} *)(activations + {self.plan.activation_offsets[tensor] + offset})"

    def const(self, i, part, ctype) -> str:
        return f"(const {ctype} *)(constantWeight + {self.plan.constant_offsets[(i, part)]})"

    def size(self, tensor) -> int:
        return _tensor_bytes(self.qm, tensor)


KERNEL_SOURCES = tuple(sorted(f"{op.function}.c" for op in OPS.values() if op.function))


def _scratch_bytes(qm, op) -> int:
    return OPS[op.kind].scratch_bytes(op, qm.graph.shapes, kernel_constants())


def render_source(name: str, qm: int8_graph.QuantModel, plan: Plan) -> str:
    """The bundle's C: one kernel call per quantized op, buffers at their planned offsets."""
    emitter, params, calls = _Emitter(name, qm, plan), [], []
    for layer, (i, op) in enumerate((i, op) for i, op in enumerate(qm.ops) if OPS[op.kind].function):
        param, call = OPS[op.kind].emit(emitter, i, op)
        params.append(param)
        calls += [f"    /* {op.kind} {op.node} -> {op.output} (scale 2^{op.out_exp}) */", f"    {call}",
                  f"    NN_LAYER_MARK({layer});"]
    return "\n".join([
        f"/* Bundle \"{name}\" generated by the built-in int8 backend (Glow symmetric_with_power2_scale). */",
        f'#include "{name}.h"', '#include "nn_kernels.h"', "", *params, "",
        f"int {name}(uint8_t *constantWeight, uint8_t *mutableWeight, uint8_t *activations)", "{",
        "    NN_LAYER_MARK(-1);", *calls, "    return GLOW_SUCCESS;", "}", ""])


def weights_text(data: bytes) -> str:
    """cifar.weights.txt: ' 0X%02X,' per byte, 20 bytes per line (Glow's text weights)."""
    return "".join("".join(f" 0X{b:02X}," for b in data[i:i + 20]) + "\n" for i in range(0, len(data), 20))


def generate_sources(onnx_path, profile_path, network_name: str = "cifar", layer_profile: bool = False) -> dict:
    """{file name: bytes} of the bundle sources, header, manifest and weights."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", network_name):
        raise ValueError(f"network name {network_name!r} is not a C identifier; use letters, digits and _")
    graph = int8_graph.load_graph(onnx_path)
    qm = int8_graph.quantize_graph(graph, read_profile(profile_path, graph).ranges(), source=str(profile_path))
    plan = plan_memory(qm)
    return {f"{network_name}.h": render_header(network_name, qm, plan).encode(),
            f"{network_name}.c": render_source(network_name, qm, plan).encode(),
            f"{network_name}.manifest.json": render_manifest(network_name, qm, plan, layer_profile).encode(),
            f"{network_name}.weights.bin": plan.constant,
            f"{network_name}.weights.txt": weights_text(plan.constant).encode()}


def require_compiler(board: dict) -> tuple:
    """(C compiler, partial linker) for the board's toolchain. A missing Arm toolchain is a ToolError (the
    bootstrap installs it); a missing Xtensa toolchain is Skipped (the user must provide it)."""
    return board_tool(board, "cc"), board_tool(board, "ld")


def used_kernels(source) -> list:
    """The kernel files whose functions the bundle source calls (so e.g. libm is needed only with Softmax)."""
    text = Path(source).read_text()
    return [k for k in KERNEL_SOURCES if re.search(rf"\b{k[:-2]}\(", text)]


def compile_object(sources_dir, board: dict, network_name: str = "cifar", target=None,
                   layer_profile: bool = False) -> Path:
    """Compile the bundle C and the kernels with the board's cflags into one relocatable `<name>.o` (ld -r), so
    firmware links only that object. Deterministic: relative file names, no debug info, fixed order.
    layer_profile: the bundle calls nn_layer_mark(k) after each kernel call (the firmware must define it)."""
    sources_dir = Path(sources_dir)
    target = Path(target) if target else sources_dir / f"{network_name}.o"
    cc, ld = require_compiler(board)
    hint = board_toolchain(board).install_hint
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kernels = used_kernels(sources_dir / f"{network_name}.c")
        for f in (*kernels, "nn_kernels.h"):
            shutil.copy(KERNELS_DIR / f, tmp / f)
        for suffix in (".c", ".h"):
            shutil.copy(sources_dir / f"{network_name}{suffix}", tmp / f"{network_name}{suffix}")
        objects = []
        for src in (f"{network_name}.c", *kernels):
            obj = src[:-2] + ".part.o"
            run_tool([cc, *BASE_CFLAGS, *board["cflags"], *(["-DNN_LAYER_PROFILE"] if layer_profile else []),
                      f"-ffile-prefix-map={tmp}=.", "-I.", "-c", src, "-o", obj], hint, cwd=tmp)
            objects.append(obj)
        run_tool([ld, "-r", "-o", "bundle.o", *objects], hint, cwd=tmp)
        write_bytes(target, (tmp / "bundle.o").read_bytes())
    return target


def check_board_memory(board: dict, memory: dict) -> None:
    """Refuse, before anything is compiled, a board whose [memory] regions cannot hold the bundle's buffers where
    [firmware.placement] puts them: weights (constant), placeholders (mutable, with the data), activations and the
    stack. `memory` is the manifest's {"constant", "mutable", "activations"}. Code and the app's own data are not
    known yet and stay the linker's to check. Raises ValueError naming the region, what needs it, what is missing."""
    firmware, regions = board.get("firmware", {}), board.get("memory", {})
    placement = firmware.get("placement")
    if not placement:
        return
    needs = {}
    for what, key, nbytes in (("weights", "weights", memory["constant"]), ("placeholders", "data", memory["mutable"]),
                              ("activations", "activations", memory["activations"]),
                              ("stack", "stack", firmware.get("stack_size", 0))):
        needs.setdefault(placement[key], []).append((what, nbytes))
    for region, items in needs.items():
        length, total = regions[region]["length"], sum(n for _, n in items)
        if total > length:
            raise ValueError(
                f"boards/{board['name']}.toml: memory region {region!r} ({length:,} B) cannot hold "
                f"{' + '.join(f'{what} {n:,} B' for what, n in items)} = {total:,} B: {total - length:,} B missing "
                f"(before code and the app's data). Place some of them in another [memory] region "
                f"([firmware.placement]), lower [firmware] stack_size, or use a smaller model.")


def make_bundle(onnx_path, profile_path, board: dict, out_dir, network_name: str = "cifar",
                layer_profile: bool = False) -> dict:
    """Write <out_dir>/{name.h, name.c, name.manifest.json, name.weights.bin, name.weights.txt, name.o} (out_dir
    replaced whole). Without the Xtensa toolchain the object is left out and the result says "skipped: ...".
    layer_profile compiles the per-layer timing hooks in (see compile_object)."""
    files = generate_sources(onnx_path, profile_path, network_name, layer_profile)
    check_board_memory(board, json.loads(files[f"{network_name}.manifest.json"])["memory"])
    with atomic_dir(out_dir) as tmp:
        for fname, data in files.items():
            (tmp / fname).write_bytes(data)
        try:
            compile_object(tmp, board, network_name, layer_profile=layer_profile)
            status = "compiled"
        except Skipped as skip:
            status = str(skip)
    return {"bundle_dir": str(out_dir), "object": status, "constant_bytes": len(files[f"{network_name}.weights.bin"])}


# ---------------------------------------------------------------- host build and evaluation
def header_macros(header_path) -> dict[str, int]:
    """The integer `#define NAME value` lines of a bundle header."""
    header_path = Path(header_path)
    if not header_path.is_file():
        raise FileNotFoundError(f"bundle header {header_path} does not exist; build the bundle first (doit bundle)")
    pattern = re.compile(r"^\s*#define\s+(\w+)\s+(\d+)\s*$", re.MULTILINE)
    return {name: int(value) for name, value in pattern.findall(header_path.read_text(encoding="utf-8"))}


def read_manifest(bundle_dir, network_name: str = "cifar") -> dict:
    """The bundle's <name>.manifest.json (render_manifest)."""
    path = Path(bundle_dir) / f"{network_name}.manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"bundle manifest {path} does not exist; rebuild the bundle (doit bundle) with the "
                                f"built-in backend, which writes it beside {network_name}.h")
    return json.loads(path.read_text(encoding="utf-8"))


def build_host_runner(bundle_dir, work_dir, network_name: str = "cifar", dsp_shim: bool = False) -> Path:
    """Compile the bundle C + kernels + host_runner.c for this machine (gcc). dsp_shim selects the DSP path
    with plain-C intrinsics (acle_shim.h) instead of the portable path."""
    bundle_dir, work_dir = Path(bundle_dir), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    upper = network_name.upper()
    manifest = read_manifest(bundle_dir, network_name)
    api = "\n".join([f'#include "{network_name}.h"',
                     f"#define NET_ENTRY {network_name}",
                     f"#define NET_MEM_ALIGN {upper}_MEM_ALIGN",
                     f"#define NET_CONSTANT_MEM_SIZE {upper}_CONSTANT_MEM_SIZE",
                     f"#define NET_MUTABLE_MEM_SIZE {upper}_MUTABLE_MEM_SIZE",
                     f"#define NET_ACTIVATIONS_MEM_SIZE {upper}_ACTIVATIONS_MEM_SIZE",
                     f"#define NET_INPUT_OFFSET {manifest['input']['macro']}",
                     f"#define NET_OUTPUT_OFFSET {manifest['output']['macro']}",
                     f"#define NET_INPUT_SIZE {manifest['input']['size']}u",
                     f"#define NET_OUTPUT_SIZE {manifest['output']['size']}u", ""])
    (work_dir / "bundle_api.h").write_text(api)
    exe = work_dir / ("host_runner_dsp" if dsp_shim else "host_runner")
    sources = [bundle_dir / f"{network_name}.c", *(KERNELS_DIR / s for s in KERNEL_SOURCES), KERNELS_DIR / "host_runner.c"]
    cmd = ["gcc", *BASE_CFLAGS, "-O3", "-std=gnu99", *(["-DNN_ACLE_SHIM"] if dsp_shim else []), f"-I{work_dir}",
           f"-I{bundle_dir}", f"-I{KERNELS_DIR}", *sources, "-lm", "-o", exe]
    run_tool(cmd, "Install a host C compiler (Debian: apt-get install gcc).")
    return exe


def run_host_bundle(runner, weights_bin, inputs: np.ndarray, work_dir) -> np.ndarray:
    """Run the host-built bundle on float inputs (input placeholder layout, e.g. NCHW); returns (N, outputs)."""
    work_dir = Path(work_dir)
    inputs = np.ascontiguousarray(inputs, dtype="<f4")
    images, outputs = work_dir / "inputs.f32", work_dir / "outputs.f32"
    images.write_bytes(inputs.tobytes())
    run_tool([runner, weights_bin, images, len(inputs), outputs], "The host bundle runner failed; see its message.")
    return np.fromfile(outputs, dtype="<f4").reshape(len(inputs), -1)


def host_outputs(bundle_dir, inputs: np.ndarray, work_dir, network_name: str = "cifar") -> np.ndarray:
    """The bundle's float outputs for float NCHW inputs, from its C compiled for this machine."""
    runner = build_host_runner(bundle_dir, work_dir, network_name)
    return run_host_bundle(runner, Path(bundle_dir) / f"{network_name}.weights.bin", inputs, work_dir)
