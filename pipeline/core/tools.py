"""Running external tools: one place that finds them, runs them and explains failures."""
import os
import shutil
import subprocess
from pathlib import Path


class Skipped(Exception):
    """A step that cannot run on this machine (a tool is missing); str() is "skipped: <reason>"."""

    def __init__(self, reason: str):
        super().__init__(f"skipped: {reason}")
        self.reason = reason


class ToolError(RuntimeError):
    """A tool ran and failed."""


def find_tool(name: str, env_var: str | None = None) -> str | None:
    """Path of `name`: from the folder in $env_var if set (or the file it names), else from PATH."""
    if env_var and os.environ.get(env_var):
        configured = Path(os.environ[env_var])
        for candidate in (configured / name, configured):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which(name)


def run_tool(cmd, install_hint: str, cwd=None, tail_lines: int = 30, env=None) -> subprocess.CompletedProcess:
    """Run `cmd` (a list); on failure raise ToolError showing the command, its stderr tail and `install_hint`."""
    cmd = [str(c) for c in cmd]
    try:
        result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise ToolError(f"cannot run {cmd[0]!r}: {err}. {install_hint}") from err
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-tail_lines:])
        raise ToolError(
            f"command failed (exit {result.returncode}): {' '.join(cmd)}\n{tail}\n{install_hint}"
        )
    return result


ARM_INSTALL_HINT = ("Install the Arm GNU toolchain (Debian: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi, "
                    "or run make bootstrap).")
XTENSA_INSTALL_HINT = ("Install the Cadence Xtensa tools (xt-clang) with the RT685 HiFi4 core as in NXP's RT685 HiFi4 "
                       "readme, or build with Zephyr.")


def arm_tool(tool: str) -> str:
    """arm-none-eabi-<tool>: the bootstrap installs it, so its absence is an error with the install command."""
    name = f"arm-none-eabi-{tool}"
    path = find_tool(name, "ARM_TOOLCHAIN_BIN")
    if path is None:
        raise ToolError(f"{name} not found on PATH (or set ARM_TOOLCHAIN_BIN to its folder). {ARM_INSTALL_HINT}")
    return path


def xtensa_tool(board: dict, tool: str = "xt-clang") -> str:
    """An Xtensa tool for the board (XTENSA_TOOLS or PATH, with XTENSA_SYSTEM set); Skipped when the user has
    not provided them: the one check every Xtensa step uses."""
    path = find_tool(tool, "XTENSA_TOOLS")
    if path is None or not os.environ.get("XTENSA_SYSTEM"):
        raise Skipped(f"no Xtensa toolchain for {board['name']} (set XTENSA_TOOLS to the folder of xt-clang and "
                      f"XTENSA_SYSTEM to the core registry holding {board['xtensa']['core']})")
    return path
