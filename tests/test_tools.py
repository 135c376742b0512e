"""The toolchain registry (pipeline/core/tools.py): each board's tools found by role, in the toolchain's folder
variable or on PATH; a missing Arm toolchain is an error with the install command (the bootstrap installs it),
a missing Xtensa toolchain a skip with what to set; and the report reads any board's ELF with its own size tool."""
import os
import shutil
import subprocess

import pytest

from pipeline.core.config import load_board
from pipeline.core.tools import ROLES, TOOLCHAINS, Skipped, ToolError, board_tool
from pipeline.delivery import report

needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="needs arm-none-eabi-gcc (apt-get install gcc-arm-none-eabi)")


def _executable(folder, name, target=None):
    path = folder / name
    if target:
        path.symlink_to(target)
    else:
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return path


def test_every_board_names_a_registered_toolchain():
    for name in ("rt1060", "rt685_m33", "rt685_hifi4"):
        assert load_board(name)["toolchain"] in TOOLCHAINS
    with pytest.raises(ValueError, match=r"boards/x\.toml: unknown toolchain 'riscv'; use one of arm-none-eabi"):
        board_tool({"name": "x", "toolchain": "riscv"}, "cc")


def test_missing_tools_error_or_skip_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    for variable in ("ARM_TOOLCHAIN_BIN", "XTENSA_TOOLS", "XTENSA_SYSTEM"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ToolError, match=r"arm-none-eabi-size not found .*ARM_TOOLCHAIN_BIN.* for rt1060\. "
                                        r"Install the Arm GNU toolchain .*apt-get install gcc-arm-none-eabi"):
        board_tool(load_board("rt1060"), "size")
    hifi4 = load_board("rt685_hifi4")
    with pytest.raises(Skipped, match=r"no Xtensa toolchain for rt685_hifi4: xt-clang not found .*XTENSA_TOOLS"):
        board_tool(hifi4, "cc")
    tools = tmp_path / "xtensa"
    tools.mkdir()
    for role in ROLES:
        _executable(tools, TOOLCHAINS["xtensa"].prefix + (TOOLCHAINS["xtensa"].compiler if role == "cc" else role))
    monkeypatch.setenv("XTENSA_TOOLS", str(tools))
    with pytest.raises(Skipped, match="XTENSA_SYSTEM not set"):
        board_tool(hifi4, "ar")
    monkeypatch.setenv("XTENSA_SYSTEM", str(tmp_path))
    assert {role: board_tool(hifi4, role) for role in ROLES} == {
        "cc": str(tools / "xt-clang"), "ld": str(tools / "xt-ld"), "ar": str(tools / "xt-ar"),
        "size": str(tools / "xt-size"), "objcopy": str(tools / "xt-objcopy")}


@needs_arm
def test_report_sizes_an_xtensa_board_with_its_own_size_tool(tmp_path, monkeypatch):
    """The report used to run the Arm size tool for every board and crashed on the HiFi4's ELF. Here xt-size is
    a binutils size (it reads any ELF), so the HiFi4 row must show the ELF's own sections."""
    source = tmp_path / "tiny.c"
    source.write_text("int table[100] = {1};\nint zeros[50];\nint main(void) { return table[0] + zeros[1]; }\n")
    elf = tmp_path / "tiny.o"
    subprocess.run(["arm-none-eabi-gcc", "-c", str(source), "-o", str(elf)], check=True)
    tools = tmp_path / "xtensa"
    tools.mkdir()
    _executable(tools, "xt-size", shutil.which("arm-none-eabi-size"))
    monkeypatch.setenv("XTENSA_TOOLS", str(tools))
    monkeypatch.setenv("XTENSA_SYSTEM", str(tmp_path))
    monkeypatch.setenv("PATH", os.environ["PATH"])
    entry = report.board_entry(load_board("rt685_hifi4"), "cifar", elf=elf)
    assert entry["size"]["data"] == 400 and entry["size"]["bss"] == 200 and entry["size"]["stack"] is None
    section = report.board_section(entry, macs=1)
    assert "| Flash (text + data) |" in section and "|   of which stack | — |" in section
