"""The bare-metal firmware build: compile the rendered app with the board's flags, link it with the bundle object
for the board's RAM map (and again for the emulator's map when it differs), and measure it.

Everything that differs between boards is data in boards/<board>.toml (cflags, cpu_hz, [memory], [firmware]
stack and placement, [emulator] memory map). The require_* checks are cheap, so the build graph calls them when
it is declared and the runners call them again before running. Tools the user must provide (Xtensa) raise
Skipped; the Arm toolchain, which the bootstrap installs, raises ToolError with the install command.
"""
import os
from pathlib import Path

from pipeline.core.layout import emulator_linked
from pipeline.core.atomic import atomic_path, write_text
from pipeline.core.tools import Skipped, board_tool, board_toolchain, run_tool
from pipeline.firmware.app import HARDENING_SOURCE, MCUX_APP, _jinja, render_board_main_c

BARE_METAL_SOURCES = ("startup_cortexm.c", "platform_semihost.c")
FIRMWARE_CFLAGS = ("-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-ffunction-sections",
                   "-fdata-sections", "-ffp-contract=off")


def memory_map(board: dict, for_emulator: bool) -> dict:
    """The board's [memory] regions, or for the emulator its [emulator.memory] when the board's map is not there."""
    if for_emulator:
        return board.get("emulator", {}).get("memory", board["memory"])
    return board["memory"]


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


def require_toolchain(board: dict) -> str:
    """The board's C compiler: arm-none-eabi-gcc, or xt-clang (with XTENSA_SYSTEM) for Xtensa boards."""
    return board_tool(board, "cc")


def _arm_tool(board: dict, role: str) -> str:
    """A tool of the bare-metal Arm build, which applies to arm-none-eabi boards only."""
    if board["toolchain"] != "arm-none-eabi":
        raise Skipped(f"board {board['name']} uses the {board['toolchain']} toolchain; the bare-metal Arm build "
                      f"does not apply")
    return board_tool(board, role)


def _prefix_maps(named_dirs: dict) -> list[str]:
    """-ffile-prefix-map flags giving each folder a fixed name, so objects do not depend on where the build ran."""
    return [f"-ffile-prefix-map={Path(path).resolve()}={name}" for name, path in named_dirs.items()]


def compile_objects(board: dict, sources, include_dirs: dict, out_dir, defines=()) -> list[Path]:
    """Compile each C source with the board's cflags into out_dir/<stem>.o; include_dirs is {name: folder}."""
    gcc = _arm_tool(board, "cc")
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
            run_tool([gcc, *flags, "-c", source.resolve(), "-o", tmp.resolve()], board_toolchain(board).install_hint,
                     cwd=out_dir)
        objects.append(target)
    return objects


def link_firmware(board: dict, objects, linker_script, out_elf, libraries=()) -> Path:
    """Link the objects (main, startup, platform, bundle) and `libraries` (archives, searched for what the objects
    use) with newlib-nano's libc and libm into out_elf."""
    gcc = _arm_tool(board, "cc")
    out_elf = Path(out_elf)
    with atomic_path(out_elf) as tmp:
        run_tool([gcc, *board["cflags"], "-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections",
                  "-Wl,--no-warn-rwx-segments", f"-T{Path(linker_script).resolve()}",
                  *(Path(o).resolve() for o in objects),
                  *(Path(lib).resolve() for lib in libraries), "-lm", "-o", tmp.resolve()],
                 board_toolchain(board).install_hint, cwd=out_elf.parent)
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
    return link_board_and_emulator(board, objects, out_dir)


def link_board_and_emulator(board: dict, objects, out_dir, libraries=()) -> dict:
    """Link out_dir/firmware.elf for the board's memory map and, when the emulator's map differs,
    out_dir/emulator/firmware.elf for it (each with its linker script). Returns {"elf", "emulator_elf"}."""
    out_dir = Path(out_dir)
    result = {}
    for key, for_emulator, folder in (("elf", False, out_dir), ("emulator_elf", True, out_dir / "emulator")):
        if for_emulator and not emulator_linked(board):
            result[key] = result["elf"]
            continue
        script = render_linker_script(folder / "firmware.ld", board, for_emulator)
        result[key] = link_firmware(board, objects, script, folder / "firmware.elf", libraries)
    return result


def firmware_size(board: dict, elf) -> dict:
    """The board toolchain's size (Berkeley format) of the ELF: text, data, bss; flash = text + data; sram = data +
    bss, where bss includes the stack and the activations (NOLOAD sections)."""
    output = run_tool([board_tool(board, "size"), "-B", Path(elf).resolve()],
                      board_toolchain(board).install_hint).stdout
    text, data, bss = (int(v) for v in output.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "sram": data + bss,
            "stack": board.get("firmware", {}).get("stack_size")}  # the Xtensa LSP sets its own stack


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
                 board_toolchain(board).install_hint)
    return out_elf


def firmware_stage(board: dict, *, bundle_dir, source_dir, out_dir, network: str, labels,
                   hardening: dict | None = None) -> dict:
    """Render main.c and build the board's firmware into out_dir (build_firmware says what can fail)."""
    main_c = render_board_main_c(board, labels=labels, bundle_dir=bundle_dir, source_dir=source_dir,
                                 network=network, hardening=hardening)
    return build_firmware(board, main_c=main_c, bundle_dir=bundle_dir, network=network, out_dir=out_dir,
                          hardening=bool(hardening))
