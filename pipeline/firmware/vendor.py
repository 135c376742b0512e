"""The same app built by the vendors' flows when the user has them: the MCUXpresso SDK's armgcc CMake project
(MCUX_SDK_ROOT) and Zephyr's west build (ZEPHYR_BASE). Without them the steps are skipped with the reason."""
import os
import shutil
from pathlib import Path

from pipeline.core.atomic import write_text
from pipeline.core.tools import Skipped, run_tool
from pipeline.firmware.app import MCUX_APP, ZEPHYR_APP, _jinja


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


def render_mcux_cmake(out_path, board: dict, network: str, hardening: bool = False) -> Path:
    """Write the MCUXpresso SDK armgcc CMakeLists.txt for the board's RAM target (boards/<board>.toml [mcux])."""
    text = _jinja().get_template("CMakeLists.txt.j2").render(
        board=board["name"], description=board["description"], network=network, mcux=board["mcux"],
        cflags=board["cflags"], hardening=hardening)
    write_text(out_path, text)
    return Path(out_path)


def mcux_sdk_commands(sdk_root, project_dir, build_dir, source_dir, bundle_dir) -> list[list[str]]:
    """cmake configure and build commands of the SDK armgcc flow (RAM target: CMAKE_BUILD_TYPE=release).
    Folders are handed over absolute: CMake resolves a relative one against the generated project folder."""
    sdk_root, source_dir, bundle_dir = (Path(folder).resolve() for folder in (sdk_root, source_dir, bundle_dir))
    return [
        ["cmake", "-S", str(project_dir), "-B", str(build_dir), "-G", "Unix Makefiles",
         f"-DCMAKE_TOOLCHAIN_FILE={sdk_root / 'tools' / 'cmake_toolchain_files' / 'armgcc.cmake'}",
         "-DCMAKE_BUILD_TYPE=release", f"-DMCUX_SDK_ROOT={sdk_root}", f"-DAPP_SOURCE_DIR={source_dir}",
         f"-DBUNDLE_DIR={bundle_dir}", f"-DMCUX_APP_DIR={MCUX_APP}"],
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
