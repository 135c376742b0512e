"""The same app built by the vendors' flows when the user has them: the MCUXpresso SDK's armgcc CMake project
(MCUX_SDK_ROOT) and Zephyr's west build (ZEPHYR_BASE). Without them the steps are skipped with the reason."""
import json
import os
import shutil
from pathlib import Path

from pipeline import ROOT
from pipeline.core.atomic import write_bytes, write_text
from pipeline.core.tools import Skipped, ToolError, run_tool
from pipeline.firmware.app import MCUX_APP, _jinja
from pipeline.firmware.link import firmware_size

RESOURCES = ("zephyr_app",)  # the Zephyr application (see pipeline/core/deps.py)
ZEPHYR_APP = ROOT / RESOURCES[0]
MCUX_HINT = "see the SDK's docs/MCUXpresso SDK Getting Started (armgcc)"
# The image files each SDK target leaves in out_dir/<target>/; the .bin (a byte image from its lowest load address)
# only for targets whose image sits in flash: a RAM image spans ITCM to OCRAM, hundreds of MB as a flat binary.
IMAGE_SUFFIXES = (".elf", ".hex")


def require_mcux_sdk(board: dict, environ=None) -> None:
    environ = os.environ if environ is None else environ
    if "mcux" not in board or board["toolchain"] != "arm-none-eabi":
        raise Skipped(f"board {board['name']} has no MCUXpresso SDK armgcc flow in boards/{board['name']}.toml")
    if not environ.get("MCUX_SDK_ROOT"):
        raise Skipped("MCUX_SDK_ROOT is not set (set it to an MCUXpresso SDK for "
                      f"{board['mcux']['board_dir']}: an SDK-builder archive, or a checkout of "
                      "github.com/nxp-mcuxpresso/mcux-sdk with CMSIS_ROOT at a CMSIS_5 checkout; ARMGCC_DIR names the "
                      "Arm GNU toolchain, default /usr)")
    if shutil.which("cmake", path=environ.get("PATH")) is None:
        raise Skipped("cmake not found (apt-get install cmake) for the MCUXpresso SDK armgcc build")


def cmsis_core_include(sdk_root, environ=None) -> Path:
    """The CMSIS-Core include folder: in the SDK-builder archive it is <sdk>/CMSIS/Core/Include; the GitHub mcux-sdk
    keeps CMSIS in the separate CMSIS_5 repository (CMSIS_ROOT, or where west puts it: <sdk>/CMSIS)."""
    environ = os.environ if environ is None else environ
    roots = [Path(environ["CMSIS_ROOT"])] if environ.get("CMSIS_ROOT") else []
    roots.append(Path(sdk_root) / "CMSIS")
    candidates = [root / sub for root in roots for sub in ("Core/Include", "CMSIS/Core/Include")]
    for folder in candidates:
        if (folder / "cmsis_compiler.h").is_file():
            return folder.resolve()
    raise ToolError(f"CMSIS-Core headers (cmsis_compiler.h) not found in {', '.join(map(str, candidates))}: set "
                    "CMSIS_ROOT to a checkout of github.com/nxp-mcuxpresso/CMSIS_5 (the SDK-builder archive ships them "
                    "in <sdk>/CMSIS)")


def mcux_targets(board: dict) -> list[str]:
    """The board's SDK images (boards/<board>.toml [mcux.targets]), e.g. ram and flash."""
    return list(board["mcux"]["targets"])


def render_mcux_project(project_dir, board: dict, target: str, network: str, hardening: bool = False) -> Path:
    """Write the armgcc CMakeLists.txt (and placement.ld when the target places weights and activations) of one
    SDK target into project_dir; returns project_dir."""
    mcux, spec = board["mcux"], board["mcux"]["targets"][target]
    values = dict(board=board["name"], description=board["description"], network=network, target=target, mcux=mcux,
                  linker_script=spec["linker_script"], placement=spec.get("placement"),
                  modules=mcux["modules"] + spec.get("modules", []), defines=spec.get("defines", []),
                  cflags=board["cflags"], hardening=hardening, binary="flash" in spec)
    project_dir = Path(project_dir)
    write_text(project_dir / "CMakeLists.txt", _jinja().get_template("CMakeLists.txt.j2").render(**values))
    if values["placement"]:
        write_text(project_dir / "placement.ld", _jinja().get_template("placement.ld.j2").render(**values))
    return project_dir


def mcux_sdk_commands(sdk_root, project_dir, build_dir, source_dir, bundle_dir, cmsis_include) -> list[list[str]]:
    """cmake configure and build commands of the SDK armgcc flow (CMAKE_BUILD_TYPE=release).
    Folders are handed over absolute: CMake resolves a relative one against the generated project folder."""
    sdk_root, source_dir, bundle_dir = (Path(folder).resolve() for folder in (sdk_root, source_dir, bundle_dir))
    return [
        ["cmake", "-S", str(project_dir), "-B", str(build_dir), "-G", "Unix Makefiles",
         f"-DCMAKE_TOOLCHAIN_FILE={sdk_root / 'tools' / 'cmake_toolchain_files' / 'armgcc.cmake'}",
         "-DCMAKE_BUILD_TYPE=release", f"-DMCUX_SDK_ROOT={sdk_root}", f"-DCMSIS_CORE_INCLUDE={cmsis_include}",
         f"-DAPP_SOURCE_DIR={source_dir}", f"-DBUNDLE_DIR={bundle_dir}", f"-DMCUX_APP_DIR={MCUX_APP}"],
        ["cmake", "--build", str(build_dir)],
    ]


def mcux_sdk_targets(board: dict, out_dir) -> list[Path]:
    """What mcux_sdk_build leaves in out_dir, for doit's targets."""
    out_dir = Path(out_dir)
    files = [out_dir / "mcux_sdk.json"]
    for target in mcux_targets(board):
        binary = (".bin",) if "flash" in board["mcux"]["targets"][target] else ()
        files += [out_dir / target / f"firmware{suffix}" for suffix in IMAGE_SUFFIXES + binary]
    return files


def hex_start_address(path) -> int:
    """Lowest address an Intel HEX file writes (where its .bin twin starts)."""
    upper, starts = 0, []
    for line in Path(path).read_text().split():
        count, address, kind = int(line[1:3], 16), int(line[3:7], 16), int(line[7:9], 16)
        if kind == 4:  # extended linear address: the upper 16 bits of what follows
            upper = int(line[9:13], 16) << 16
        elif kind == 0 and count:
            starts.append(upper + address)
    if not starts:
        raise ValueError(f"{path}: an Intel HEX file with no data records")
    return min(starts)


def image_figures(board: dict, target: str, folder) -> dict:
    """arm-none-eabi-size of the target's ELF (text, data, bss; bss holds heap and stack), the RAM it uses and, for
    a flash image, its .bin (load address, bytes) against the board's flash."""
    folder = Path(folder)
    figures = {key: value for key, value in firmware_size(board, folder / "firmware.elf").items()
               if key in ("text", "data", "bss")}
    flash = board["mcux"]["targets"][target].get("flash")
    # RAM used: a flash image keeps code and constants in flash; a RAM image holds everything in RAM.
    ram = figures["data"] + figures["bss"] + (0 if flash else figures["text"])
    figures.update(ram=ram, stack=board["mcux"]["stack_size"])
    if flash:
        start, size = hex_start_address(folder / "firmware.hex"), (folder / "firmware.bin").stat().st_size
        figures.update(bin_address=start, flash_image=size, flash_capacity=flash["length"],
                       fits_flash=flash["origin"] <= start and start + size <= flash["origin"] + flash["length"])
    return figures


def mcux_sdk_build(board: dict, *, source_dir, bundle_dir, network: str, out_dir, hardening: bool = False,
                   environ=None) -> dict:
    """Build every SDK target of the board (MCUX_SDK_ROOT; ARMGCC_DIR, default /usr) from the rendered main.c and
    the bundle: out_dir/<target>/ gets the project, its build folder and firmware.elf/.hex (and .bin for flash
    images); out_dir/mcux_sdk.json their size figures and the SDK used. Skipped without MCUX_SDK_ROOT."""
    environ = os.environ if environ is None else environ
    require_mcux_sdk(board, environ)
    sdk_root = Path(environ["MCUX_SDK_ROOT"])
    mcux = board["mcux"]
    device_cmake = sdk_root / "devices" / mcux["device"] / f"all_lib_device_{mcux['device_core']}.cmake"
    if not device_cmake.is_file():
        raise ToolError(f"MCUX_SDK_ROOT={sdk_root}: {device_cmake} not found, so this is not an MCUXpresso SDK with "
                        f"the {mcux['device']} device (and its CMake modules); point MCUX_SDK_ROOT at one")
    cmsis_include = cmsis_core_include(sdk_root, environ)
    env = {**environ, "ARMGCC_DIR": environ.get("ARMGCC_DIR", "/usr")}
    out_dir, results = Path(out_dir), {}
    for target in mcux_targets(board):
        project = render_mcux_project(out_dir / target / "project", board, target, network, hardening)
        build = project / "build"
        for cmd in mcux_sdk_commands(sdk_root, project, build, source_dir, bundle_dir, cmsis_include):
            run_tool(cmd, MCUX_HINT, env=env)
        for path in mcux_sdk_targets(board, out_dir):  # built whole, then published file by file
            if path.parent.name == target:
                write_bytes(path, (build / path.name).read_bytes())
        results[target] = image_figures(board, target, out_dir / target)
    summary = {"board": board["name"], "sdk_root": str(sdk_root.resolve()), "cmsis_include": str(cmsis_include),
               "targets": results}
    write_text(out_dir / "mcux_sdk.json", json.dumps(summary, indent=2) + "\n")
    return summary


def require_zephyr(board: dict, environ=None) -> None:
    environ = os.environ if environ is None else environ
    if not environ.get("ZEPHYR_BASE"):
        raise Skipped(f"ZEPHYR_BASE is not set (set it to a Zephyr tree, with west installed, to build "
                      f"{board['zephyr']['target']})")
    if shutil.which("west", path=environ.get("PATH")) is None:
        raise Skipped("west not found on PATH (pip install west) for the Zephyr build")


def zephyr_build_command(board: dict, *, build_dir, source_dir, bundle_dir, network: str,
                         hardening: bool = False) -> tuple[list[str], dict]:
    """The `west build` command and extra environment for the board's Zephyr target and toolchain ([zephyr]:
    target, toolchain_variant, optional toolchain_path, e.g. gnuarmemb in /usr for the Arm boards). The folders
    after `--` are absolute: CMake resolves a relative one against zephyr_app/, not our working folder."""
    cmd = ["west", "build", "-p", "auto", "-b", board["zephyr"]["target"], "-d", str(build_dir), str(ZEPHYR_APP),
           "--", f"-DAPP_SOURCE_DIR={Path(source_dir).resolve()}", f"-DBUNDLE_DIR={Path(bundle_dir).resolve()}",
           f"-DNETWORK={network}",
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
