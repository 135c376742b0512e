"""TensorFlow Lite Micro firmware for the Arm boards: tflm_app/main.cc running build/model/<name>_int8.tflite with
the user's TFLite Micro tree and CMSIS-NN kernels, built and linked like our firmware (the board's flags, linker
script and semihosting platform), run under QEMU and checked against TFLite Micro's host interpreter.

The tree (TFLM_ROOT) is what TFLite Micro's own project generator exports, the standard way to take TFLM into
a project (TREE_HINT says how to make one); nothing of it is kept in this repository. Its library is compiled
here with the board's flags and TFLM's defines, the sources a program of these ops needs only (library_sources).
"""
import json
import os
import re
from pathlib import Path

import numpy as np

from pipeline import ROOT
from pipeline.core.atomic import atomic_path, write_text
from pipeline.core.tools import Skipped, board_tool, board_toolchain, run_tool
from pipeline.firmware.app import MCUX_APP, read_image_inc
from pipeline.firmware.emulator import (BUILT_IN_TOLERANCE, FirmwareError, emulate_and_check, require_emulator,
                                       run_emulator)
from pipeline.firmware.link import BARE_METAL_SOURCES, compile_objects, link_board_and_emulator
from pipeline.int8.tflite import schema
from pipeline.model.dataset import load_classes, load_split
from pipeline.model.evaluation import balanced_subset
from pipeline.model.shapes import INPUT_SHAPE, to_input

RESOURCES = ("tflm_app",)
TFLM_APP = ROOT / RESOURCES[0]
TREE_VARIABLE = "TFLM_ROOT"
TREE_HINT = (
    f"set {TREE_VARIABLE} to a TFLite Micro tree exported for Cortex-M with CMSIS-NN kernels: in a tflite-micro "
    "checkout run python3 tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py "
    "--makefile_options=\"TARGET=cortex_m_generic OPTIMIZED_KERNEL_DIR=cmsis_nn TARGET_ARCH=project_generation\" "
    "<folder> (it downloads flatbuffers, gemmlowp, ruy, CMSIS and CMSIS-NN), then "
    f"export {TREE_VARIABLE}=<folder> (docs/firmware.md, \"TensorFlow Lite Micro firmware\")")
# What such a tree holds: the interpreter, TFLM's CMSIS-NN kernels, CMSIS-NN itself, flatbuffers.
TREE_FILES = ("tensorflow/lite/micro/micro_interpreter.h", "tensorflow/lite/micro/kernels/cmsis_nn/conv.cc",
              "tensorflow/lite/micro/cortex_m_generic/debug_log.cc", "third_party/cmsis_nn/Include/arm_nnfunctions.h",
              "third_party/flatbuffers/include/flatbuffers/flatbuffers.h",
              "third_party/cmsis/CMSIS/Core/Include/cmsis_compiler.h")
TREE_INCLUDES = (".", "third_party/gemmlowp", "third_party/flatbuffers/include", "third_party/ruy",
                 "third_party/cmsis_nn", "third_party/cmsis_nn/Include", "third_party/cmsis/CMSIS/Core/Include")
# The defines and flags of TFLM's cortex_m_generic build with OPTIMIZED_KERNEL_DIR=cmsis_nn (its Makefile and
# the generated tree's project Makefile); PROJECT_GENERATION leaves the cycle counter to the application.
TFLM_DEFINES = ("TF_LITE_STATIC_MEMORY", "TF_LITE_MCU_DEBUG_LOG", "PROJECT_GENERATION", "CMSIS_NN",
                "KERNELS_OPTIMIZED_FOR_SPEED", "ARM_NN_ENABLE_F16=0", "ARM_NN_ENABLE_F32=0")
COMMON_FLAGS = ("-O2", "-ffunction-sections", "-fdata-sections", "-fno-unwind-tables",
                "-fno-asynchronous-unwind-tables", "-funsigned-char")
CXX_FLAGS = ("-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics")
RESOLVER_HEADER = "tensorflow/lite/micro/micro_mutable_op_resolver.h"
MAIN = "main.cc"


def tree_root() -> Path:
    """The TFLite Micro tree TFLM_ROOT names; Skipped (with how to make one) when unset or incomplete."""
    value = os.environ.get(TREE_VARIABLE)
    if not value:
        raise Skipped(f"{TREE_VARIABLE} is not set; {TREE_HINT}")
    root = Path(value)
    missing = [name for name in TREE_FILES if not (root / name).is_file()]
    if missing:
        raise Skipped(f"{TREE_VARIABLE}={value} is not an exported TFLite Micro tree with CMSIS-NN: it has no "
                      f"{missing[0]}; {TREE_HINT}")
    return root


def require_tflm(board: dict) -> Path:
    """The tree, when this board can run the TFLM firmware here (an Arm board, TFLM_ROOT set)."""
    if board["toolchain"] != "arm-none-eabi":
        raise Skipped(f"board {board['name']} uses the {board['toolchain']} toolchain; TFLite Micro's CMSIS-NN "
                      f"kernels are for Arm Cortex-M")
    return tree_root()


def model_ops(tflite_bytes: bytes) -> list[str]:
    """The builtin operators the model uses (its operator codes), e.g. CONV_2D."""
    fb = schema()
    names = {value: name for name, value in vars(fb.BuiltinOperator).items() if not name.startswith("_")}
    model = fb.Model.GetRootAs(tflite_bytes, 0)
    return [names[model.OperatorCodes(i).BuiltinCode()] for i in range(model.OperatorCodesLength())]


def resolver_methods(ops, tree: Path) -> list[str]:
    """MicroMutableOpResolver's Add method for each op (CONV_2D -> AddConv2D), checked against the tree's
    resolver header so an op this TFLM lacks stops the build naming it."""
    available = set(re.findall(r"TfLiteStatus (Add\w+)\(", (tree / RESOLVER_HEADER).read_text()))
    methods = []
    for op in ops:
        method = "Add" + "".join(word.capitalize() if word.isalpha() else word for word in op.split("_"))
        if method not in available:
            raise ValueError(f"the model uses {op}, but {tree / RESOLVER_HEADER} has no {method}(); use a TFLite "
                             f"Micro tree that supports it")
        methods.append(method)
    return methods


def c_bytes(data: bytes, per_line: int = 16) -> str:
    return "\n".join("    " + " ".join(f"0x{b:02X}," for b in data[i:i + per_line])
                     for i in range(0, len(data), per_line))


def write_model_header(out_path, *, tflite_bytes: bytes, methods, arena_bytes: int, test_input: bytes, labels,
                       title: str) -> Path:
    """tflm_model.h for tflm_app/main.cc (see its comment)."""
    text = "\n".join([
        "/* Generated by pipeline/firmware/tflm.py from the .tflite: do not edit. */",
        f"#define TFLM_TITLE {json.dumps(title)}",
        f"#define TFLM_ARENA_BYTES {arena_bytes}u",
        f"#define TFLM_OP_COUNT {len(methods)}",
        "#define TFLM_MODEL_OPS(X) " + " ".join(f"X({method})" for method in methods),
        f"#define NUM_CLASSES {len(labels)}",
        "static const char *const labels[NUM_CLASSES] = {" + ", ".join(json.dumps(l) for l in labels) + "};",
        "alignas(16) NN_WEIGHTS_SECTION static const unsigned char tflm_model[] = {", c_bytes(tflite_bytes), "};",
        "alignas(16) static const unsigned char test_input[] = {", c_bytes(test_input), "};", ""])
    write_text(out_path, text)
    return Path(out_path)


def as_model_input(tflite_bytes: bytes, inputs_flat: np.ndarray) -> np.ndarray:
    """Our float inputs (flat NCHW, as input_image_test.inc and the images file hold them) as the .tflite takes
    them: NHWC, quantized when its input is int8."""
    from pipeline.evaluations.tflite_parity import model_inputs  # here: dodo.py imports this module

    return model_inputs(tflite_bytes, np.asarray(inputs_flat, np.float32).reshape(-1, *INPUT_SHAPE[1:]))


def library_sources(tree: Path, ops) -> list[Path]:
    """The tree's sources this program needs: the interpreter and its support (every .cc/.c of
    tensorflow/lite outside kernels/, and cortex_m_generic's debug log), the shared kernel code (kernel_util, the
    *_common.cc of each op's kernel) and, per op, the file defining its Register_ function, TFLM's CMSIS-NN one
    when there is one; and every CMSIS-NN source (plain C, each function in its own file)."""
    micro = tree / "tensorflow/lite/micro"
    kernels = micro / "kernels"
    framework = [p for p in sorted((tree / "tensorflow").rglob("*.c*"))
                 if p.suffix in (".c", ".cc") and kernels not in p.parents and micro / "cortex_m_generic" not in
                 p.parents and not p.name.startswith(("test_", "fake_", "mock_", "recording_"))
                 and "testing" not in p.parts and "tools" not in p.parts and "python" not in p.parts]
    framework.append(micro / "cortex_m_generic/debug_log.cc")
    chosen = {kernels / "kernel_util.cc"}
    for op in ops:
        register = re.compile(rf"\bRegister_{op}\(\)\s*\{{")
        defining = [p for p in (*sorted((kernels / "cmsis_nn").glob("*.cc")), *sorted(kernels.glob("*.cc")))
                    if register.search(p.read_text(errors="replace"))]
        if not defining:
            raise ValueError(f"no source of {tree} defines Register_{op}(); is {tree} a complete TFLM tree?")
        chosen.add(defining[0])
        chosen.update(kernels.glob(f"{defining[0].stem}_common.cc"))
    cmsis_nn = sorted((tree / "third_party/cmsis_nn/Source").rglob("*.c"))
    return framework + sorted(chosen) + cmsis_nn


def compile_tflm(board: dict, tree: Path, sources, include_dirs, out_dir) -> list[Path]:
    """Compile C++ and C sources of the tree (or the app) with the board's flags and TFLM's build settings into
    out_dir, one object per source (named by its path in the tree, so equal stems do not collide)."""
    gcc = board_tool(board, "cc")
    gxx = gcc[:-len("gcc")] + "g++"  # the toolchain's C++ driver, beside its gcc
    out_dir = Path(out_dir)
    flags = [*board["cflags"], *COMMON_FLAGS, f"-DBOARD_CPU_HZ={board['cpu_hz']}u",
             *(f"-D{define}" for define in TFLM_DEFINES), *(f"-I{Path(d).resolve()}" for d in include_dirs),
             f"-ffile-prefix-map={tree.resolve()}=tflm", f"-ffile-prefix-map={ROOT}=."]
    objects = []
    for source in sources:
        source = Path(source).resolve()
        name = source.relative_to(tree.resolve()) if tree.resolve() in source.parents else source.name
        target = out_dir / (str(name).replace("/", "__") + ".o")
        target.parent.mkdir(parents=True, exist_ok=True)
        compiler, language = (gxx, CXX_FLAGS) if source.suffix == ".cc" else (gcc, ("-std=c17",))
        with atomic_path(target) as tmp:
            run_tool([compiler, *language, *flags, "-c", source, "-o", tmp.resolve()],
                     board_toolchain(board).install_hint)
        objects.append(target)
    return objects


# The sizing build's arena against the host interpreter's minimum: the target's need was within 0.2 % of the
# host's here (70,432 vs 70,352 B); a quarter more covers that and still fits the RT1060's 128 KB DTCM.
ARENA_SIZING_FACTOR = 1.25
ARENA_ALIGNMENT = 16  # MicroArenaBufferAlignment() of tensorflow/lite/micro/micro_arena_constants.h
ARENA_USED = re.compile(r"^Arena used = (\d+)\r?$", re.MULTILINE)


def arena_used(log: str) -> dict:
    """The arena TFLM allocated on the target, as the firmware printed it."""
    found = ARENA_USED.search(log)
    if found is None:
        raise FirmwareError("the TFLM firmware did not print 'Arena used = <bytes>'")
    return {"arena_used_bytes": int(found[1])}


def build_tflm_firmware(board: dict, *, tflite_path, image_inc, classes_file, out_dir, network: str,
                        timeout: float = 120.0) -> dict:
    """Build out_dir/firmware.elf (and out_dir/emulator/firmware.elf when the emulator's memory map differs):
    tflm_app/main.cc with the generated tflm_model.h, the tree's library for these ops, our startup and
    semihosting platform, linked with the board's linker script. Skipped when TFLM_ROOT is not a usable tree.

    The arena is sized by TFLM on the target: a first build with ARENA_SIZING_FACTOR times what TFLM's host
    interpreter needs (a 64-bit host's minimum is not the target's) runs once under the emulator and prints
    arena_used_bytes(); the firmware is then built with that rounded up to TFLM's 16-byte buffer alignment (TFLM
    aligns the arena's end down to it, so an unrounded size loses up to 15 bytes at the tail)."""
    from pipeline.evaluations.tflite_parity import tflm_arena_size

    tree = require_tflm(board)
    require_emulator(board)
    out_dir = Path(out_dir)
    tflite_bytes = Path(tflite_path).read_bytes()
    test_input = as_model_input(tflite_bytes, read_image_inc(image_inc))
    ops = model_ops(tflite_bytes)
    includes = [tree / d for d in TREE_INCLUDES]
    library = compile_tflm(board, tree, library_sources(tree, ops), includes, out_dir / "tflm_obj")
    archive = out_dir / "libtflm.a"  # out_dir and these names: pipeline/core/layout.py BoardLayout.tflm_firmware
    with atomic_path(archive) as tmp:
        tmp.unlink()  # ar adds to an existing archive; the placeholder is empty, not one
        run_tool([board_tool(board, "ar"), "rcs", tmp.resolve(), *(o.resolve() for o in library)],
                 board_toolchain(board).install_hint)
    platform = compile_objects(board, [MCUX_APP / name for name in BARE_METAL_SOURCES], {"mcux_app": MCUX_APP},
                               out_dir / "obj")
    header = out_dir / "source" / "tflm_model.h"
    model = {"tflite_bytes": tflite_bytes, "methods": resolver_methods(ops, tree), "test_input": test_input.tobytes(),
             "labels": json.loads(Path(classes_file).read_text()),
             "title": f"{network} (TFLite Micro, CMSIS-NN) on {board['description']}"}

    def build(arena_bytes: int) -> dict:
        write_model_header(header, arena_bytes=arena_bytes, **model)
        app = compile_tflm(board, tree, [TFLM_APP / MAIN], [*includes, header.parent, MCUX_APP], out_dir / "obj")
        return link_board_and_emulator(board, [*app, *platform], out_dir, libraries=[archive])

    first = build(int(ARENA_SIZING_FACTOR * tflm_arena_size(tflite_bytes, test_input)))
    log, _ = run_emulator(board, first["emulator_elf"], timeout=timeout)
    used = arena_used(log)["arena_used_bytes"]
    return build(-(-used // ARENA_ALIGNMENT) * ARENA_ALIGNMENT)


def tflm_emulation(board: dict, *, elf, tflite_path, image_inc, images, labels, out_dir,
                   timeout: float = 120.0) -> dict:
    """Run the TFLM firmware under QEMU on its built-in test image (image_inc) and then `images` (uint8 NHWC), and
    check every output against TFLite Micro's host interpreter on the same input tensors: out_dir/emulator.log
    and emulator.json (instructions per inference, the arena TFLM used on the target)."""
    from pipeline.evaluations.tflite_parity import tflm_arena_size, tflm_outputs

    require_tflm(board)
    tflite_bytes = Path(tflite_path).read_bytes()
    inputs = as_model_input(tflite_bytes, np.concatenate([read_image_inc(image_inc)[None],
                                                          to_input(images).reshape(len(images), -1)]))
    reference = tflm_outputs(tflite_bytes, inputs, tflm_arena_size(tflite_bytes, inputs[:1]))
    return emulate_and_check(board, elf, inputs, reference, labels, out_dir, timeout=timeout,
                             reference="TFLite Micro host interpreter (tflite-micro)",
                             tolerance=BUILT_IN_TOLERANCE, log_summary=arena_used)


def tflm_emulate_stage(board: dict, *, elf, tflite_path, image_inc, data_dir, count: int, out_dir,
                       timeout: float = 120.0) -> dict:
    """tflm_emulation on the images emulate:<board> uses: the built-in test image and the first `count - 1` test
    images (one per class first)."""
    images, labels = load_split(data_dir, "test")
    keep = balanced_subset(labels, count - 1) if count > 1 else np.array([], dtype=int)
    return tflm_emulation(board, elf=elf, tflite_path=tflite_path, image_inc=image_inc, images=images[keep],
                          labels=load_classes(data_dir), out_dir=out_dir, timeout=timeout)
