"""The vendor flows (MCUXpresso SDK armgcc, Zephyr west): their command lines, checked by the real CMake where
it matters (folders handed over on the command line must resolve the way CMake resolves them), and their skips."""
import shutil
import subprocess

import pytest

from pipeline.core.config import load_board
from pipeline.core.tools import Skipped
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
    configure, _ = vendor.mcux_sdk_commands("sdk", project, project / "build", "build/src", "build/bundle")
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
    assert cmd[8] == str(app.ZEPHYR_APP)
    assert cmd[9:] == ["--", f"-DAPP_SOURCE_DIR={tmp_path / 'build/src'}",
                       f"-DBUNDLE_DIR={tmp_path / 'build/bundle'}", "-DNETWORK=cifar", "-DHARDENING=ON"]
    assert env["ZEPHYR_TOOLCHAIN_VARIANT"] == variant
    assert env.get("GNUARMEMB_TOOLCHAIN_PATH") == ("/usr" if variant == "gnuarmemb" else None)
    with pytest.raises(Skipped, match="skipped: ZEPHYR_BASE is not set"):
        vendor.zephyr_build(board, build_dir=tmp_path, source_dir=tmp_path, bundle_dir=tmp_path,
                            network="cifar", environ={"PATH": "/usr/bin"})
