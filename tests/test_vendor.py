"""The vendor flows (MCUXpresso SDK armgcc, Zephyr west): their command lines, checked by the real CMake where
it matters (folders handed over on the command line must resolve the way CMake resolves them), and their skips."""
import json
import os
import re
import shutil
import subprocess

import pytest

from pipeline.core.config import available_boards, load_board
from pipeline.core.tools import Skipped, ToolError
from pipeline.delivery import report
from pipeline.firmware import app, vendor

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("cc") is None,
                                 reason="needs cmake and a host C compiler (apt-get install cmake gcc)")

# A project that, like the generated ones, names sources through the folders given with -D: CMake's generate
# step fails with "Cannot find source file" when a folder does not resolve to the files we built.
PROBE = """cmake_minimum_required(VERSION 3.10)
project(probe C)
add_library(probe OBJECT ${APP_SOURCE_DIR}/main.c)
target_include_directories(probe PRIVATE ${BUNDLE_DIR})
"""


def _relative_build_tree(tmp_path):
    """A working folder holding build/src/main.c and build/bundle/cifar.h, plus a project folder elsewhere."""
    work, project = tmp_path / "work", tmp_path / "project"
    (work / "build" / "src").mkdir(parents=True)
    (work / "build" / "bundle").mkdir(parents=True)
    (work / "build" / "src" / "main.c").write_text('#include "cifar.h"\nint probe = CIFAR;\n')
    (work / "build" / "bundle" / "cifar.h").write_text("#define CIFAR 1\n")
    project.mkdir()
    (project / "CMakeLists.txt").write_text(PROBE)
    return work, project


def _configure_probe(project, defines, cwd):
    return subprocess.run(["cmake", "-S", str(project), "-B", str(project / "build"), *defines], cwd=cwd,
                          capture_output=True, text=True)


@needs_cmake
def test_mcux_sdk_folders_resolve_from_the_working_folder(tmp_path, monkeypatch):
    work, project = _relative_build_tree(tmp_path)
    monkeypatch.chdir(work)
    configure, _ = vendor.mcux_sdk_commands("sdk", project, project / "build", "build/src", "build/bundle",
                                            "/cmsis/Core/Include")
    defines = [arg for arg in configure if arg.startswith(("-DAPP_SOURCE_DIR=", "-DBUNDLE_DIR="))]
    assert len(defines) == 2
    result = _configure_probe(project, defines, work)
    assert result.returncode == 0, result.stderr
    assert f"-DMCUX_SDK_ROOT={work / 'sdk'}" in configure


@needs_cmake
def test_zephyr_folders_resolve_from_the_working_folder(tmp_path, monkeypatch):
    work, project = _relative_build_tree(tmp_path)
    monkeypatch.chdir(work)
    cmd, _ = vendor.zephyr_build_command(load_board("rt1060"), build_dir="build/z", source_dir="build/src",
                                         bundle_dir="build/bundle", network="cifar")
    defines = [arg for arg in cmd[cmd.index("--") + 1:] if arg.startswith(("-DAPP_SOURCE_DIR=", "-DBUNDLE_DIR="))]
    assert len(defines) == 2
    result = _configure_probe(project, defines, work)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("board_name,target,variant", [
    ("rt1060", "mimxrt1060_evk/mimxrt1062/qspi", "gnuarmemb"),
    ("rt685_m33", "mimxrt685_evk/mimxrt685s/cm33", "gnuarmemb"),
    ("rt685_hifi4", "mimxrt685_evk/mimxrt685s/hifi4", "zephyr"),
])
def test_zephyr_command_and_skip(board_name, target, variant, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    board = load_board(board_name)
    cmd, env = vendor.zephyr_build_command(board, build_dir="build/z", source_dir="build/src",
                                           bundle_dir="build/bundle", network="cifar", hardening=True)
    assert cmd[:7] == ["west", "build", "-p", "auto", "-b", target, "-d"]
    assert cmd[8] == str(vendor.ZEPHYR_APP)
    assert cmd[9:] == ["--", f"-DAPP_SOURCE_DIR={tmp_path / 'build/src'}",
                       f"-DBUNDLE_DIR={tmp_path / 'build/bundle'}", "-DNETWORK=cifar", "-DHARDENING=ON"]
    assert env["ZEPHYR_TOOLCHAIN_VARIANT"] == variant
    assert env.get("GNUARMEMB_TOOLCHAIN_PATH") == ("/usr" if variant == "gnuarmemb" else None)
    with pytest.raises(Skipped, match="skipped: ZEPHYR_BASE is not set"):
        vendor.zephyr_build(board, build_dir=tmp_path, source_dir=tmp_path, bundle_dir=tmp_path,
                            network="cifar", environ={"PATH": "/usr/bin"})


# ---------------------------------------------------------------------------------------- MCUXpresso SDK armgcc
SDK_BOARDS = [name for name in available_boards() if "targets" in load_board(name).get("mcux", {})]


@needs_cmake
def test_mcux_sdk_skips_without_sdk_and_leaves_nothing(tmp_path):
    board = load_board("rt1060")
    with pytest.raises(Skipped, match="skipped: MCUX_SDK_ROOT is not set .*CMSIS_ROOT"):
        vendor.mcux_sdk_build(board, source_dir=tmp_path, bundle_dir=tmp_path, network="cifar",
                              out_dir=tmp_path / "sdk", environ={})
    assert not (tmp_path / "sdk").exists()
    with pytest.raises(ToolError, match=r"MCUX_SDK_ROOT=.*all_lib_device_MIMXRT1062.cmake not found, so this is not "
                                        r"an MCUXpresso SDK with the MIMXRT1062 device"):
        vendor.mcux_sdk_build(board, source_dir=tmp_path, bundle_dir=tmp_path, network="cifar",
                              out_dir=tmp_path / "sdk", environ={**os.environ, "MCUX_SDK_ROOT": str(tmp_path)})
    assert not (tmp_path / "sdk").exists()
    with pytest.raises(Skipped, match="no MCUXpresso SDK armgcc flow"):
        vendor.require_mcux_sdk(load_board("rt685_hifi4"), {"MCUX_SDK_ROOT": str(tmp_path)})


def test_every_arm_board_has_the_sdk_flow():
    assert SDK_BOARDS == [name for name in available_boards() if load_board(name)["toolchain"] == "arm-none-eabi"]
    assert SDK_BOARDS  # rt1060 and rt685_m33


@pytest.mark.parametrize("board_name", SDK_BOARDS)
def test_generated_sdk_projects_use_the_sdks_modules(board_name, tmp_path):
    board = load_board(board_name)
    mcux = board["mcux"]
    assert vendor.mcux_targets(board) == ["ram", "flash"]
    for target in vendor.mcux_targets(board):
        spec = mcux["targets"][target]
        project = vendor.render_mcux_project(tmp_path / target, board, target, "cifar", hardening=True)
        cmake = (project / "CMakeLists.txt").read_text()
        assert f"include(${{MCUX_SDK_ROOT}}/devices/{mcux['device']}/all_lib_device_{mcux['device_core']}.cmake)" \
            in cmake
        included = re.findall(r"^include\((\w+)\)$", cmake, re.M)
        assert included == mcux["modules"] + spec.get("modules", [])
        assert f"-Wl,--defsym=__stack_size__={mcux['stack_size']:#X}".replace("0X", "0x") in cmake
        assert all(define in cmake for define in spec.get("defines", []))
        assert "${MCUX_APP_DIR}/hardening.c" in cmake and "${BUNDLE_DIR}/cifar.o" in cmake
        assert str(tmp_path) not in cmake and "/work" not in cmake  # folders come from the command line
        assert ("firmware.bin" in cmake) == ("flash" in spec)
        placement = project / "placement.ld"
        assert placement.exists() == ("placement" in spec)
        if placement.exists():
            script = placement.read_text()
            assert f"INCLUDE {spec['linker_script']}" in script
            assert "-T${CMAKE_CURRENT_SOURCE_DIR}/placement.ld" in cmake
            assert f"> {spec['placement']['weights']}" in script and "NN_PLACEMENT_SECTIONS" in cmake
        else:
            assert f"-T{spec['linker_script']}" in cmake and "NN_PLACEMENT_SECTIONS" not in cmake


def test_cmsis_is_found_in_either_layout(tmp_path):
    archive, cmsis5 = tmp_path / "archive", tmp_path / "CMSIS_5"
    for include in (archive / "CMSIS" / "Core" / "Include", cmsis5 / "CMSIS" / "Core" / "Include"):
        include.mkdir(parents=True)
        (include / "cmsis_compiler.h").write_text("")
    assert vendor.cmsis_core_include(archive, {}) == archive / "CMSIS" / "Core" / "Include"
    github = tmp_path / "mcux-sdk"
    github.mkdir()
    assert vendor.cmsis_core_include(github, {"CMSIS_ROOT": str(cmsis5)}) == cmsis5 / "CMSIS" / "Core" / "Include"
    with pytest.raises(ToolError, match="set CMSIS_ROOT to a checkout of github.com/nxp-mcuxpresso/CMSIS_5"):
        vendor.cmsis_core_include(github, {})


def test_hex_start_address(tmp_path):
    hex_file = tmp_path / "image.hex"
    hex_file.write_text(":020000040800F2\n:10040000FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC\n:0400000508001131AD\n"
                        ":00000001FF\n")
    assert vendor.hex_start_address(hex_file) == 0x08000400


SDK_ROOT = os.environ.get("MCUX_SDK_ROOT")


@pytest.fixture(scope="module")
def sdk_builds(tmp_path_factory):
    """Both Arm boards' SDK images built from a full-size CifarNet bundle (124 KB of weights)."""
    if not SDK_ROOT:
        pytest.skip("MCUX_SDK_ROOT is not set: set it to an MCUXpresso SDK (an SDK-builder archive, or a checkout of "
                    "github.com/nxp-mcuxpresso/mcux-sdk with CMSIS_ROOT at github.com/nxp-mcuxpresso/CMSIS_5)")
    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("cmake") is None:
        pytest.skip("needs arm-none-eabi-gcc and cmake (apt-get install gcc-arm-none-eabi cmake)")
    from pipeline.int8 import bundle, profile
    from pipeline.int8.image_inc import write_image_inc
    from tiny_model import export_onnx, synthetic_images, train_tiny_model

    work = tmp_path_factory.mktemp("sdk")
    images, labels = synthetic_images(64, seed=5)
    export_onnx(train_tiny_model(images, labels, steps=2, channels=(32, 32, 64, 128)), work / "cifar.onnx")
    profile.make_profile(work / "cifar.onnx", images[:10], work / "profile.yml")
    builds = {}
    for name in SDK_BOARDS:
        board, out = load_board(name), work / name
        bundle.make_bundle(work / "cifar.onnx", work / "profile.yml", board, out / "bundle")
        write_image_inc(images[0], out / "source" / "input_image_test.inc", "synthetic 0", 0, "airplane")
        app.render_board_main_c(board, labels=[f"class{i}" for i in range(10)], bundle_dir=out / "bundle",
                                source_dir=out / "source", network="cifar")
        summary = vendor.mcux_sdk_build(board, source_dir=out / "source", bundle_dir=out / "bundle", network="cifar",
                                        out_dir=out / "mcux")
        builds[name] = board, out / "mcux", summary
    return builds


def _symbols(elf) -> dict:
    text = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (line.split() for line in text.splitlines()) if len(parts) == 3}


@pytest.mark.parametrize("board_name", SDK_BOARDS)
def test_sdk_builds_ram_and_flash_images(sdk_builds, board_name):
    board, out, summary = sdk_builds[board_name]
    assert json.loads((out / "mcux_sdk.json").read_text()) == summary
    for target, spec in board["mcux"]["targets"].items():
        for path in vendor.mcux_sdk_targets(board, out):
            assert path.is_file() and path.stat().st_size > 0, path
        symbols = _symbols(out / target / "firmware.elf")
        # The SDK's debug console on the board's UART, not semihosting.
        assert "DbgConsole_Init" in symbols and "semihost_call" not in symbols
        assert ("LPUART_Init" if board_name == "rt1060" else "USART_Init") in symbols
        assert symbols["__StackTop"] - symbols["__StackLimit"] == board["mcux"]["stack_size"]
        weights = symbols["constantWeight"]
        figures = summary["targets"][target]
        if "flash" in spec:  # XIP: the weights are read from flash, and the image fits the EVK's flash
            flash = spec["flash"]
            assert flash["origin"] <= weights < flash["origin"] + flash["length"]
            assert figures["fits_flash"] and figures["bin_address"] >= flash["origin"]
            assert figures["flash_image"] == (out / target / "firmware.bin").stat().st_size
        elif board_name == "rt1060":  # RAM image: the weights left ITCM for OCRAM
            ocram = board["memory"]["ocram"]
            assert ocram["origin"] <= weights < ocram["origin"] + ocram["length"]
    table = "\n".join(report.sdk_images_table(summary))
    assert re.search(r"^\| flash \| .* fits ", table, re.M) and "| ram |" in table
