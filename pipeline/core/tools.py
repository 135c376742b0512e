"""Running external tools: one place that finds them, runs them and explains failures."""
import os
import shutil
import subprocess
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Toolchain:
    """A cross toolchain as data: how its tools are named, where they are looked for, what else it needs, and
    what a user without it is told. Boards name theirs in boards/<board>.toml (`toolchain`)."""

    name: str
    label: str  # how messages name it
    prefix: str  # of every tool's name: <prefix>ld, <prefix>ar (archiver), <prefix>size, <prefix>objcopy
    compiler: str  # the C compiler's name after the prefix (role "cc")
    folder_variable: str  # environment variable naming the folder of the tools (else PATH)
    install_hint: str
    required_variables: tuple = ()  # environment the tools need besides themselves
    installed_by_bootstrap: bool = False  # then absence is an error (make bootstrap); else a step skipped

    def tool(self, role: str, board_name: str) -> str:
        """Path of the tool with that role: ToolError or Skipped (installed_by_bootstrap or not) when absent."""
        if role not in ROLES:
            raise ValueError(f"unknown tool role {role!r}; roles: {', '.join(ROLES)}")
        name = self.prefix + (self.compiler if role == "cc" else role)
        path = find_tool(name, self.folder_variable)
        missing = [v for v in self.required_variables if not os.environ.get(v)]
        if path is not None and not missing:
            return path
        absent = f"{name} not found (on PATH, or in ${self.folder_variable})" if path is None else \
            f"{' and '.join(missing)} not set"
        if self.installed_by_bootstrap:
            raise ToolError(f"{absent} for {board_name}. {self.install_hint}")
        raise Skipped(f"no {self.label} toolchain for {board_name}: {absent}. {self.install_hint}")


ROLES = ("cc", "ld", "ar", "size", "objcopy")
TOOLCHAINS = {toolchain.name: toolchain for toolchain in (
    Toolchain("arm-none-eabi", "Arm GNU", prefix="arm-none-eabi-", compiler="gcc", folder_variable="ARM_TOOLCHAIN_BIN",
              installed_by_bootstrap=True,
              install_hint="Install the Arm GNU toolchain (Debian: apt-get install gcc-arm-none-eabi "
                           "libnewlib-arm-none-eabi, or run make bootstrap)."),
    Toolchain("xtensa", "Xtensa", prefix="xt-", compiler="clang", folder_variable="XTENSA_TOOLS",
              required_variables=("XTENSA_SYSTEM",),
              install_hint="Install the Cadence Xtensa tools (xt-clang) with the RT685 HiFi4 core as in NXP's RT685 "
                           "HiFi4 readme: set XTENSA_TOOLS to their bin folder and XTENSA_SYSTEM to the core "
                           "registry; or build with Zephyr."),
)}


def board_toolchain(board: dict) -> Toolchain:
    """The Toolchain boards/<board>.toml names; a clear error for an unknown one."""
    try:
        return TOOLCHAINS[board["toolchain"]]
    except KeyError:
        raise ValueError(f"boards/{board.get('name')}.toml: unknown toolchain {board['toolchain']!r}; use one of "
                         f"{', '.join(TOOLCHAINS)}") from None


def board_tool(board: dict, role: str) -> str:
    """The board's toolchain tool with that role (one of ROLES): see Toolchain.tool."""
    return board_toolchain(board).tool(role, board["name"])
