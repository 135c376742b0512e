"""Firmware stage: render the app's main.c, generate startup/linker for the board's RAM build, compile and link
it with the bundle object, run it under QEMU and check its answers against the host-compiled bundle.

Everything that differs between boards is data in boards/<board>.toml (cflags, cpu_hz, [memory],
[firmware] stack and placement, [emulator] machine, clock and memory map, [zephyr], [mcux]).

Instruction counts: QEMU runs with -icount shift=0, so each guest instruction advances virtual time by 1 ns and
the emulated SysTick (clocked at [emulator] cpu_clock_hz) ticks once every 1e9 / cpu_clock_hz instructions.
The firmware prints the SysTick cycles of each inference; times that factor is the instructions it executed,
exact to one tick and identical on every run.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from pipeline.atomic import atomic_path, write_bytes, write_text
from pipeline import hardening as hardening_c
from pipeline.bundle import header_macros, host_outputs
from pipeline.config import ROOT
from pipeline.evaluation import softmax
from pipeline.shapes import INPUT_SHAPE, to_input
from pipeline.tools import ARM_INSTALL_HINT, Skipped, ToolError, arm_tool, find_tool, run_tool, xtensa_tool

MCUX_APP = ROOT / "mcux_app"
ZEPHYR_APP = ROOT / "zephyr_app"
# Sources of the bare-metal semihosting build, beside the rendered main.c.
BARE_METAL_SOURCES = ("startup_cortexm.c", "platform_semihost.c")
HARDENING_SOURCE = "hardening.c"
# -ffp-contract=off: no fused multiply-add, so softmax and hardening round like the host's numpy.
FIRMWARE_CFLAGS = ("-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-ffunction-sections",
                   "-fdata-sections", "-ffp-contract=off")
ICOUNT_SHIFT = 0
QEMU_HINT = "install QEMU (Debian: apt-get install qemu-system-arm, or run make bootstrap)"
REQUIRED_MACROS = ("CONSTANT_MEM_SIZE", "MUTABLE_MEM_SIZE", "ACTIVATIONS_MEM_SIZE", "MEM_ALIGN")


class FirmwareError(RuntimeError):
    """The firmware failed to build, hung, crashed or gave answers that differ from the host reference."""


def _jinja() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader([str(MCUX_APP), str(ZEPHYR_APP)]),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


# ---------------------------------------------------------------------------------------------------- sources
def check_bundle_header(header_path, network: str, input_name: str = "input", output_name: str = "output") -> dict:
    """Macros of the bundle header, after checking it has Glow's bundle ABI for `network`."""
    macros = header_macros(header_path)
    prefix = network.upper()
    needed = [f"{prefix}_{name}" for name in (input_name, output_name, *REQUIRED_MACROS)]
    missing = [name for name in needed if name not in macros]
    if missing:
        raise ValueError(f"{header_path}: missing {', '.join(missing)}; the bundle must have Glow's ABI for network "
                         f"{network!r} with placeholders {input_name!r}/{output_name!r} (rebuild the bundle, or set "
                         f"project.name to the network name the bundle was built with)")
    return macros


def read_image_inc_bytes(inc_path) -> bytes:
    """The bytes an input_image_test.inc holds (` 0XNN,` items; `//` lines are comments)."""
    text = "\n".join(l for l in Path(inc_path).read_text(encoding="ascii").splitlines() if not l.startswith("//"))
    return bytes(int(byte, 16) for byte in re.findall(r"0X([0-9A-F]{2})\s*,", text))


def read_image_inc(inc_path) -> np.ndarray:
    """The float32 input tensor stored in an input_image_test.inc (float32 little-endian bytes), flat."""
    return np.frombuffer(read_image_inc_bytes(inc_path), dtype="<f4").astype(np.float32)


def render_main_c(out_path, *, network: str, labels, description: str, header_path, image_inc_path,
                  input_bytes: int, input_name: str = "input", output_name: str = "output",
                  hardening: dict | None = None) -> Path:
    """Write main.c for `network` from mcux_app/main.c.j2. `hardening` is a confidence-hardening option of
    pipeline.hardening (e.g. {"method": "round", "step": 0.05}) or None; with one, main.c calls
    harden_confidences (mcux_app/hardening.c) after softmax."""
    check_bundle_header(header_path, network, input_name, output_name)
    found = len(read_image_inc_bytes(image_inc_path))
    if found != input_bytes:
        raise ValueError(f"{image_inc_path}: holds {found} bytes but the network input takes {input_bytes} "
                         f"(float32 {input_bytes // 4} values); regenerate it for this model's input shape")
    if not labels or any('"' in str(label) or "\\" in str(label) for label in labels):
        raise ValueError(f"class labels {labels!r}: need at least one label, without quotes or backslashes")
    text = _jinja().get_template("main.c.j2").render(
        network=network, NET=network.upper(), description=description, labels=[str(l) for l in labels],
        input_name=input_name, output_name=output_name, input_bytes=input_bytes,
        hardening=hardening and {"initializer": hardening_c.c_config_initializer(hardening),
                                 "label": hardening_c.option_label(hardening)})
    write_text(out_path, text)
    return Path(out_path)


def memory_map(board: dict, for_emulator: bool) -> dict:
    """The board's [memory] regions, or for the emulator its [emulator.memory] when the board's map is not there."""
    if for_emulator:
        return board.get("emulator", {}).get("memory", board["memory"])
    return board["memory"]


def needs_emulator_link(board: dict) -> bool:
    """True when the emulator has its own memory map, so the objects are linked a second time for it."""
    return "memory" in board.get("emulator", {})


def render_linker_script(out_path, board: dict, for_emulator: bool = False) -> Path:
    """Write the RAM-build linker script of `board` (or of its emulator map) from mcux_app/linker.ld.j2."""
    regions = memory_map(board, for_emulator)
    placement = board["firmware"]["placement"]
    unknown = sorted({region for region in placement.values() if region not in regions})
    if unknown:
        raise ValueError(f"boards/{board['name']}.toml: [firmware.placement] names region {unknown[0]!r}, which is "
                         f"not in the memory map ({', '.join(regions)}); use one of those")
    text = _jinja().get_template("linker.ld.j2").render(
        board=board["name"], description=board["description"],
        map_name=f"{board['emulator']['machine']} emulator" if for_emulator else "board",
        regions=regions, placement=placement, stack_size=board["firmware"]["stack_size"])
    write_text(out_path, text)
    return Path(out_path)


# ------------------------------------------------------------------------------------------------ compile, link
# The require_* checks are cheap, so the build graph calls them when it is declared and the runners call them
# again before running. Tools the user must provide (Xtensa, Zephyr, MCUXpresso SDK) raise Skipped with the
# variable to set; the Arm toolchain and QEMU, which the bootstrap installs, raise ToolError with the install
# command when missing.
def require_toolchain(board: dict) -> str:
    """The board's C compiler: arm-none-eabi-gcc, or xt-clang (with XTENSA_SYSTEM) for Xtensa boards."""
    return xtensa_tool(board) if board["toolchain"] == "xtensa" else _arm_tool(board, "gcc")


def require_emulator(board: dict) -> None:
    if "emulator" not in board:
        raise Skipped(f"board {board['name']} has no [emulator] in boards/{board['name']}.toml (no emulator "
                      f"runs its core)")
    if find_tool("qemu-system-arm", "QEMU_BIN") is None:
        raise ToolError(f"qemu-system-arm not found on PATH (or set QEMU_BIN to its folder); {QEMU_HINT}")


def require_mcux_sdk(board: dict, environ=None) -> None:
    environ = os.environ if environ is None else environ
    if "mcux" not in board or board["toolchain"] != "arm-none-eabi":
        raise Skipped(f"board {board['name']} has no MCUXpresso SDK armgcc flow in boards/{board['name']}.toml")
    if not environ.get("MCUX_SDK_ROOT"):
        raise Skipped("MCUX_SDK_ROOT is not set (set it to an unpacked MCUXpresso SDK for "
                      f"{board['mcux']['board_dir']}, and ARMGCC_DIR to the Arm GNU toolchain, e.g. /usr)")
    if shutil.which("cmake") is None:
        raise Skipped("cmake not found (apt-get install cmake) for the MCUXpresso SDK armgcc build")


def require_zephyr(board: dict, environ=None) -> None:
    environ = os.environ if environ is None else environ
    if not environ.get("ZEPHYR_BASE"):
        raise Skipped(f"ZEPHYR_BASE is not set (set it to a Zephyr tree, with west installed, to build "
                      f"{board['zephyr']['target']})")
    if shutil.which("west", path=environ.get("PATH")) is None:
        raise Skipped("west not found on PATH (pip install west) for the Zephyr build")


def _arm_tool(board: dict, tool: str) -> str:
    if board["toolchain"] != "arm-none-eabi":
        raise Skipped(f"board {board['name']} uses the {board['toolchain']} toolchain; the bare-metal Arm build "
                      f"does not apply")
    return arm_tool(tool)


def _prefix_maps(named_dirs: dict) -> list[str]:
    """-ffile-prefix-map flags giving each folder a fixed name, so objects do not depend on where the build ran."""
    return [f"-ffile-prefix-map={Path(path).resolve()}={name}" for name, path in named_dirs.items()]


def compile_objects(board: dict, sources, include_dirs: dict, out_dir, defines=()) -> list[Path]:
    """Compile each C source with the board's cflags into out_dir/<stem>.o; include_dirs is {name: folder}."""
    gcc = _arm_tool(board, "gcc")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = [*board["cflags"], *FIRMWARE_CFLAGS, f"-DBOARD_CPU_HZ={board['cpu_hz']}u",
             *(f"-D{d}" for d in defines), *(f"-I{Path(d).resolve()}" for d in include_dirs.values()),
             *_prefix_maps({**include_dirs, ".": out_dir})]
    objects = []
    for source in sources:
        source = Path(source)
        target = out_dir / f"{source.stem}.o"
        with atomic_path(target) as tmp:
            run_tool([gcc, *flags, "-c", source.resolve(), "-o", tmp.resolve()], ARM_INSTALL_HINT, cwd=out_dir)
        objects.append(target)
    return objects


def link_firmware(board: dict, objects, linker_script, out_elf) -> Path:
    """Link the objects (main, startup, platform, bundle) with newlib-nano's libc and libm into out_elf."""
    gcc = _arm_tool(board, "gcc")
    out_elf = Path(out_elf)
    with atomic_path(out_elf) as tmp:
        run_tool([gcc, *board["cflags"], "-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections",
                  "-Wl,--no-warn-rwx-segments", f"-T{Path(linker_script).resolve()}",
                  *(Path(o).resolve() for o in objects), "-lm", "-o", tmp.resolve()],
                 ARM_INSTALL_HINT, cwd=out_elf.parent)
    return out_elf


def _bundle_object(bundle_dir, network: str) -> Path:
    bundle_object = Path(bundle_dir) / f"{network}.o"
    if not bundle_object.is_file():
        raise FileNotFoundError(f"bundle object {bundle_object} does not exist; build the bundle first (doit bundle)")
    return bundle_object


def build_firmware(board: dict, *, main_c, bundle_dir, network: str, out_dir, hardening: bool = False) -> dict:
    """Build the board's firmware from the rendered main.c (whose folder holds input_image_test.inc) and
    <bundle_dir>/<network>.o. Returns {"elf": path, "emulator_elf": path or None}.

    Arm boards: bare-metal RAM build, linked for the board's map (out_dir/firmware.elf) and, when the emulator's
    map differs, again for it (out_dir/emulator/firmware.elf). Xtensa boards: see build_xtensa_firmware."""
    if board["toolchain"] == "xtensa":
        return {"elf": build_xtensa_firmware(board, main_c=main_c, bundle_dir=bundle_dir, network=network,
                                             out_dir=out_dir, hardening=hardening), "emulator_elf": None}
    out_dir = Path(out_dir)
    main_c = Path(main_c)
    bundle_object = _bundle_object(bundle_dir, network)
    sources = [main_c, *(MCUX_APP / name for name in BARE_METAL_SOURCES)]
    if hardening:
        sources.append(MCUX_APP / HARDENING_SOURCE)
    include_dirs = {"source": main_c.parent, "bundle": Path(bundle_dir), "mcux_app": MCUX_APP}
    objects = compile_objects(board, sources, include_dirs, out_dir / "obj", defines=["NN_PLACEMENT_SECTIONS"])
    objects.append(bundle_object)
    result = {}
    for key, for_emulator, folder in (("elf", False, out_dir), ("emulator_elf", True, out_dir / "emulator")):
        if for_emulator and not needs_emulator_link(board):
            result[key] = result["elf"]
            continue
        script = render_linker_script(folder / "firmware.ld", board, for_emulator)
        result[key] = link_firmware(board, objects, script, folder / "firmware.elf")
    return result


def firmware_size(board: dict, elf) -> dict:
    """arm-none-eabi-size (Berkeley) of the ELF: text, data, bss; flash = text + data; sram = data + bss, where
    bss includes the stack and the activations (NOLOAD sections)."""
    output = run_tool([_arm_tool(board, "size"), "-B", Path(elf).resolve()], ARM_INSTALL_HINT).stdout
    text, data, bss = (int(v) for v in output.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "sram": data + bss,
            "stack": board["firmware"]["stack_size"]}


# --------------------------------------------------------------------------------------------------- emulation
@dataclass
class ImageResult:
    image: int
    output_bits: list[int]
    top1: int
    label: str
    confidence: float
    confidence_bits: int
    cycles: int
    ms: int

    @property
    def outputs(self) -> np.ndarray:
        return np.array(self.output_bits, dtype=np.uint32).view(np.float32)

    @property
    def confidence_value(self) -> float:
        return float(np.array([self.confidence_bits], dtype=np.uint32).view(np.float32)[0])


_IMAGE_BLOCK = re.compile(
    r"Image = (?P<image>\d+)\r?\n"
    r"Output bits =(?P<bits>(?: 0x[0-9A-F]{8})+)\r?\n"
    r"Top1 class = (?P<top1>\d+) \((?P<label>[^)\r\n]*)\)\r?\n"
    r"Confidence = (?P<confidence>\d\.\d{3})\r?\n"
    r"Confidence bits = (?P<confidence_bits>0x[0-9A-F]{8})\r?\n"
    r"Cycles = (?P<cycles>\d+)\r?\n"
    r"Inference time = (?P<ms>\d+) \(ms\)")


def parse_log(text: str) -> list[ImageResult]:
    """Every per-image block the firmware printed, in order."""
    return [ImageResult(image=int(m["image"]), output_bits=[int(b, 16) for b in m["bits"].split()],
                        top1=int(m["top1"]), label=m["label"], confidence=float(m["confidence"]),
                        confidence_bits=int(m["confidence_bits"], 16), cycles=int(m["cycles"]), ms=int(m["ms"]))
            for m in _IMAGE_BLOCK.finditer(text)]


def instructions_per_tick(board: dict) -> float:
    """Guest instructions per emulated SysTick cycle under -icount shift=ICOUNT_SHIFT (1 ns per instruction)."""
    return 1e9 / (2 ** ICOUNT_SHIFT) / board["emulator"]["cpu_clock_hz"]


def emulator_command(board: dict, elf, images_file_name: str | None = None) -> list[str]:
    """The qemu-system-arm command that runs `elf` with a semihosting console (QEMU prints it on stderr) and,
    optionally, an extra images file named relative to the run folder."""
    qemu = find_tool("qemu-system-arm", "QEMU_BIN") or "qemu-system-arm"
    semihosting = "enable=on,target=native,arg=firmware" + (f",arg={images_file_name}" if images_file_name else "")
    return [qemu, "-M", board["emulator"]["machine"], "-nographic", "-monitor", "none", "-serial", "none",
            "-icount", f"shift={ICOUNT_SHIFT}", "-semihosting-config", semihosting, "-kernel", str(elf)]


def write_images_file(path, inputs) -> Path:
    """Extra input tensors for the firmware: float32 little-endian, one input placeholder after another."""
    write_bytes(path, np.ascontiguousarray(inputs, dtype="<f4").tobytes())
    return Path(path)


def run_emulator(board: dict, elf, images_file=None, timeout: float = 120.0) -> tuple[str, list[ImageResult]]:
    """Run the firmware under QEMU; return its console log and per-image results.

    Raises FirmwareError when it runs longer than `timeout` seconds (a hang), exits non-zero (a fault prints
    which exception) or does not finish with "Done"."""
    require_emulator(board)
    elf = Path(elf).resolve()
    images_file = Path(images_file).resolve() if images_file else None
    cmd = emulator_command(board, elf, images_file.name if images_file else None)
    try:
        done = subprocess.run(cmd, cwd=images_file.parent if images_file else elf.parent,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        partial = (err.stdout or b"").decode("utf-8", "replace")
        raise FirmwareError(f"{elf}: still running after {timeout:g} s under {board['emulator']['machine']} (hung?); "
                            f"raise firmware.emulator_timeout if it is just slow. Output so far:\n"
                            f"{_tail(partial)}") from None
    log = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0 or not re.search(r"^Done\r?$", log, re.MULTILINE):
        raise FirmwareError(f"{elf}: failed under {board['emulator']['machine']} (exit {done.returncode}). "
                            f"Command: {' '.join(cmd)}\nOutput:\n{_tail(log)}")
    return log, parse_log(log)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


def compare_with_reference(results: list[ImageResult], reference_logits, labels, tolerance: float = 1e-3,
                           hardening: dict | None = None) -> dict:
    """Check the firmware against the host-compiled bundle on the same inputs (with `hardening`, the option
    main.c was rendered with, applied to the reference's softmax as the firmware does).

    Raises FirmwareError naming each image whose top-1 class differs or whose confidence differs by more than
    `tolerance`. Returns {"images", "top1_equal", "bit_identical": count of images whose raw outputs match the
    host's bit for bit, "max_confidence_difference"}."""
    reference_logits = np.asarray(reference_logits, dtype=np.float32)
    if len(results) != len(reference_logits):
        raise FirmwareError(f"firmware reported {len(results)} images but the host reference has "
                            f"{len(reference_logits)}; the images file and the reference must match")
    problems, bit_identical, worst = [], 0, 0.0
    probabilities = softmax(reference_logits)
    if hardening:
        probabilities = hardening_c.harden(probabilities, hardening)
    for result, logits, probs in zip(results, reference_logits, probabilities):
        expected_top1 = int(np.argmax(probs))
        difference = abs(result.confidence_value - float(probs[result.top1]))
        worst = max(worst, difference)
        if result.top1 != expected_top1:
            problems.append(f"image {result.image}: firmware top-1 is {result.top1} ({result.label}) but the host "
                            f"bundle gives {expected_top1} ({labels[expected_top1]})")
        elif difference > tolerance:
            problems.append(f"image {result.image}: firmware confidence {result.confidence_value:.6f} differs from "
                            f"the host bundle's {float(probs[expected_top1]):.6f} by more than {tolerance:g}")
        bit_identical += int(np.array_equal(result.outputs.view(np.uint32), logits.view(np.uint32)))
    if problems:
        raise FirmwareError("firmware disagrees with the host-compiled bundle:\n" + "\n".join(problems))
    return {"images": len(results), "top1_equal": len(results), "bit_identical": bit_identical,
            "max_confidence_difference": worst}


def emulate_and_check(board: dict, elf, inputs, reference_logits, labels, out_dir, timeout: float = 120.0,
                      hardening: dict | None = None) -> dict:
    """Run the firmware under emulation on its built-in test image followed by inputs[1:] (float32 input tensors;
    inputs[0] must be the built-in image), check every answer against reference_logits (host bundle, same
    inputs), and write out_dir/emulator.log and out_dir/emulator.json. Returns the summary."""
    out_dir = Path(out_dir)
    images_file = write_images_file(out_dir / "emulator_images.bin", np.asarray(inputs)[1:]) if len(inputs) > 1 \
        else None
    log, results = run_emulator(board, elf, images_file, timeout)
    write_text(out_dir / "emulator.log", log)
    summary = {
        "machine": board["emulator"]["machine"],
        "icount_shift": ICOUNT_SHIFT,
        "instructions_per_tick": instructions_per_tick(board),
        "images": [{"image": r.image, "top1": r.top1, "label": r.label, "confidence": r.confidence_value,
                    "cycles": r.cycles, "instructions": round(r.cycles * instructions_per_tick(board))}
                   for r in results],
    }
    summary["check"] = compare_with_reference(results, reference_logits, labels, hardening=hardening)
    summary["instructions_per_inference"] = summary["images"][0]["instructions"]
    write_text(out_dir / "emulator.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


# ------------------------------------------------------------------------------------- HiFi4, SDK and Zephyr
def xtensa_build_command(board: dict, *, xt_clang: str, xtensa_system: str, main_c, bundle_dir, network: str, out_elf,
                         hardening: bool = False) -> list[str]:
    """The xt-clang command that builds the HiFi4 firmware (core and LSP from boards/<board>.toml [xtensa])."""
    xtensa = board["xtensa"]
    main_c = Path(main_c)
    sources = [main_c, MCUX_APP / "platform_xtensa.c", *([MCUX_APP / HARDENING_SOURCE] if hardening else [])]
    return [xt_clang, f"--xtensa-core={xtensa['core']}", f"--xtensa-system={xtensa_system}", *board["cflags"],
            f"-mlsp={xtensa['lsp']}", "-ffp-contract=off", f"-DBOARD_CPU_HZ={board['cpu_hz']}u",
            *_prefix_maps({"source": main_c.parent, "bundle": bundle_dir, "mcux_app": MCUX_APP}),
            *(f"-I{d}" for d in (main_c.parent, Path(bundle_dir), MCUX_APP)),
            *(str(s) for s in sources), str(Path(bundle_dir) / f"{network}.o"), "-lm", "-o", str(out_elf)]


def build_xtensa_firmware(board: dict, *, main_c, bundle_dir, network: str, out_dir, hardening: bool = False) -> Path:
    """Build out_dir/firmware.elf with xt-clang; Skipped (no file written) unless XTENSA_SYSTEM is set and xt-clang
    is found in XTENSA_TOOLS or on PATH."""
    xt_clang = require_toolchain(board)
    out_elf = Path(out_dir) / "firmware.elf"
    with atomic_path(out_elf) as tmp:
        run_tool(xtensa_build_command(board, xt_clang=xt_clang, xtensa_system=os.environ["XTENSA_SYSTEM"],
                                      main_c=main_c, bundle_dir=bundle_dir,
                                      network=network, out_elf=tmp, hardening=hardening),
                 "install Cadence Xtensa tools (xt-clang) with the nxp_rt600 core, or build with Zephyr")
    return out_elf


def render_mcux_cmake(out_path, board: dict, network: str, hardening: bool = False) -> Path:
    """Write the MCUXpresso SDK armgcc CMakeLists.txt for the board's RAM target (boards/<board>.toml [mcux])."""
    text = _jinja().get_template("CMakeLists.txt.j2").render(
        board=board["name"], description=board["description"], network=network, mcux=board["mcux"],
        cflags=board["cflags"], hardening=hardening)
    write_text(out_path, text)
    return Path(out_path)


def mcux_sdk_commands(sdk_root, project_dir, build_dir, source_dir, bundle_dir) -> list[list[str]]:
    """cmake configure and build commands of the SDK armgcc flow (RAM target: CMAKE_BUILD_TYPE=release)."""
    sdk_root = Path(sdk_root)
    return [
        ["cmake", "-S", str(project_dir), "-B", str(build_dir), "-G", "Unix Makefiles",
         f"-DCMAKE_TOOLCHAIN_FILE={sdk_root / 'tools' / 'cmake_toolchain_files' / 'armgcc.cmake'}",
         "-DCMAKE_BUILD_TYPE=release", f"-DMCUX_SDK_ROOT={sdk_root}", f"-DAPP_SOURCE_DIR={Path(source_dir)}",
         f"-DBUNDLE_DIR={Path(bundle_dir)}", f"-DMCUX_APP_DIR={MCUX_APP}"],
        ["cmake", "--build", str(build_dir)],
    ]


def mcux_sdk_build(board: dict, *, source_dir, bundle_dir, network: str, out_dir, hardening: bool = False,
                   environ=None) -> Path:
    """Build through the MCUXpresso SDK (MCUX_SDK_ROOT; ARMGCC_DIR, default /usr): writes
    out_dir/CMakeLists.txt, builds in out_dir/build and returns the ELF. Skipped without MCUX_SDK_ROOT."""
    environ = os.environ if environ is None else environ
    require_mcux_sdk(board, environ)
    out_dir = Path(out_dir)
    render_mcux_cmake(out_dir / "CMakeLists.txt", board, network, hardening)
    env = {**environ, "ARMGCC_DIR": environ.get("ARMGCC_DIR", "/usr")}
    for cmd in mcux_sdk_commands(environ["MCUX_SDK_ROOT"], out_dir, out_dir / "build", source_dir, bundle_dir):
        run_tool(cmd, "see the SDK's docs/MCUXpresso SDK Getting Started (armgcc)", env=env)
    return out_dir / "build" / "firmware.elf"


def zephyr_build_command(board: dict, *, build_dir, source_dir, bundle_dir, network: str,
                         hardening: bool = False) -> tuple[list[str], dict]:
    """The `west build` command and extra environment for the board's Zephyr target and toolchain ([zephyr]:
    target, toolchain_variant, optional toolchain_path, e.g. gnuarmemb in /usr for the Arm boards)."""
    cmd = ["west", "build", "-p", "auto", "-b", board["zephyr"]["target"], "-d", str(build_dir), str(ZEPHYR_APP),
           "--", f"-DAPP_SOURCE_DIR={Path(source_dir)}", f"-DBUNDLE_DIR={Path(bundle_dir)}", f"-DNETWORK={network}",
           *(["-DHARDENING=ON"] if hardening else [])]
    zephyr = board["zephyr"]
    env = {"ZEPHYR_TOOLCHAIN_VARIANT": zephyr["toolchain_variant"]}
    if "toolchain_path" in zephyr:
        env[f"{zephyr['toolchain_variant'].upper()}_TOOLCHAIN_PATH"] = zephyr["toolchain_path"]
    return cmd, env


def zephyr_build(board: dict, *, build_dir, source_dir, bundle_dir, network: str, hardening: bool = False,
                 environ=None) -> Path:
    """Run west build for the board (returns build_dir/zephyr/zephyr.elf); Skipped without ZEPHYR_BASE or west."""
    environ = os.environ if environ is None else environ
    require_zephyr(board, environ)
    cmd, extra = zephyr_build_command(board, build_dir=build_dir, source_dir=source_dir, bundle_dir=bundle_dir,
                                      network=network, hardening=hardening)
    run_tool(cmd, "see https://docs.zephyrproject.org/latest/develop/getting_started/", env={**environ, **extra})
    return Path(build_dir) / "zephyr" / "zephyr.elf"


# ------------------------------------------------------------------------------------------ stages for doit
def render_board_main_c(board: dict, *, labels, bundle_dir, source_dir, network: str,
                        hardening: dict | None = None) -> Path:
    """<source_dir>/main.c for the board, beside its input_image_test.inc."""
    return render_main_c(Path(source_dir) / "main.c", network=network, labels=labels,
                         description=board["description"], header_path=Path(bundle_dir) / f"{network}.h",
                         image_inc_path=Path(source_dir) / "input_image_test.inc",
                         input_bytes=4 * int(np.prod(INPUT_SHAPE)), hardening=hardening)


def firmware_stage(board: dict, *, bundle_dir, source_dir, out_dir, network: str, labels,
                   hardening: dict | None = None) -> dict:
    """Render main.c and build the board's firmware into out_dir (build_firmware says what can fail)."""
    main_c = render_board_main_c(board, labels=labels, bundle_dir=bundle_dir, source_dir=source_dir,
                                 network=network, hardening=hardening)
    return build_firmware(board, main_c=main_c, bundle_dir=bundle_dir, network=network, out_dir=out_dir,
                          hardening=bool(hardening))


def main_c_stage(board: dict, *, data_dir, bundle_dir, source_dir, network: str, hardening: dict | None = None):
    """The doit stage: main.c with the dataset's class names as labels."""
    from pipeline.dataset import load_classes

    render_board_main_c(board, labels=load_classes(data_dir), bundle_dir=bundle_dir, source_dir=source_dir,
                        network=network, hardening=hardening)


def firmware_targets(board: dict, out_dir) -> list[Path]:
    """The files firmware_stage writes under out_dir (besides main.c), for doit's targets."""
    out_dir = Path(out_dir)
    if board["toolchain"] == "xtensa":
        return [out_dir / "firmware.elf"]
    targets = [out_dir / "firmware.elf", out_dir / "firmware.ld"]
    if needs_emulator_link(board):
        targets += [out_dir / "emulator" / "firmware.elf", out_dir / "emulator" / "firmware.ld"]
    return targets


def emulate_stage(board: dict, *, data_dir, count: int, elf, bundle_dir, image_inc, out_dir, network: str,
                  timeout: float, hardening: dict | None = None) -> dict:
    """emulation_stage on the built-in test image and the first `count - 1` test images (one per class first)."""
    from pipeline.dataset import load_classes, load_split
    from pipeline.evaluation import balanced_subset

    images, labels = load_split(data_dir, "test")
    keep = balanced_subset(labels, count - 1) if count > 1 else np.array([], dtype=int)
    emulation_stage(board, elf=elf, bundle_dir=bundle_dir, image_inc=image_inc, images=images[keep],
                    labels=load_classes(data_dir), out_dir=out_dir, network=network, timeout=timeout,
                    hardening=hardening)


def emulation_stage(board: dict, *, elf, bundle_dir, image_inc, images, labels, out_dir, network: str,
                    timeout: float = 120.0, hardening: dict | None = None) -> dict:
    """Run the firmware under emulation on its built-in test image (image_inc) and then `images` (uint8 NHWC,
    e.g. the first few test images), with the host-compiled bundle on the same inputs as the reference.
    Writes out_dir/emulator.log and out_dir/emulator.json; raises FirmwareError on a hang, crash or a wrong
    answer, ToolError when QEMU is missing, Skipped when the board has no emulator."""
    require_emulator(board)
    inputs = np.concatenate([read_image_inc(image_inc)[None], to_input(images).reshape(len(images), -1)])
    with tempfile.TemporaryDirectory() as work:
        reference = host_outputs(bundle_dir, inputs, work, network)
    return emulate_and_check(board, elf, inputs, reference, labels, out_dir, timeout=timeout, hardening=hardening)
