"""Programming a board's MCUXpresso SDK flash image (pipeline/firmware/vendor.py) into the EVK through a debug
probe: pyOCD (PyPI) when it knows the board's target and finds a probe, else NXP's LinkServer when it is installed.
Without a probe the step is skipped with the reason; a programming run is recorded only once the tool reported
success, so nothing claims a board was flashed when it was not."""
import hashlib
import json
import os
import shutil
from pathlib import Path

from pipeline.core.atomic import write_text
from pipeline.core.tools import Skipped, run_tool

PYOCD_HINT = "pyOCD is a pinned dependency of this project (make bootstrap installs it)"
LINKSERVER_HINT = "see NXP's LinkServer user guide (LinkServer flash <device> load <image>)"


def flash_image(board: dict, mcux_dir) -> Path:
    """The board's SDK flash image (Intel HEX: it carries its addresses) from mcux_sdk_build's out_dir."""
    targets = [name for name, spec in board.get("mcux", {}).get("targets", {}).items() if "flash" in spec]
    if not targets:
        raise Skipped(f"boards/{board['name']}.toml has no [mcux.targets.<name>] with a flash memory to program")
    image = Path(mcux_dir) / targets[0] / "firmware.hex"
    if not image.is_file():
        raise FileNotFoundError(f"{image} does not exist; build it first (doit mcux_sdk:{board['name']})")
    return image


def pyocd_target_available(target: str) -> bool:
    """pyOCD knows the target: built in, or from a CMSIS pack installed with `pyocd pack install`."""
    from pyocd.core.session import Session
    from pyocd.target import TARGET
    from pyocd.target.pack.pack_target import is_pack_target_available

    return target.lower() in TARGET or is_pack_target_available(target, Session(None))


def connected_probes() -> list[str]:
    """Unique ids of the debug probes pyOCD sees on USB (CMSIS-DAP, J-Link, ST-Link)."""
    from pyocd.core.helpers import ConnectHelper

    return [probe.unique_id for probe in ConnectHelper.get_all_connected_probes(blocking=False)]


def flash_command(board: dict, image, environ=None) -> list[str]:
    """The command that programs `image` into the board: pyOCD with the first probe it finds, else LinkServer.
    Skipped (with what to do) when neither can: no probe attached, or the tool lacks the board's target."""
    environ = os.environ if environ is None else environ
    probe = board["probe"]
    reasons = []
    if not pyocd_target_available(probe["pyocd_target"]):
        reasons.append(f"pyOCD has no target {probe['pyocd_target']} (install NXP's pack: pyocd pack install "
                       f"{probe['pyocd_target']})")
    else:
        probes = connected_probes()
        if probes:
            return [shutil.which("pyocd", path=environ.get("PATH")) or "pyocd", "flash", "--target",
                    probe["pyocd_target"], "--uid", probes[0], "--format", "hex", str(image)]
        reasons.append("pyOCD found no debug probe on USB (connect the EVK's debug USB port)")
    linkserver = shutil.which("LinkServer", path=environ.get("PATH"))
    if linkserver is None:
        reasons.append("LinkServer is not installed")
        raise Skipped(f"cannot flash {board['name']}: {'; '.join(reasons)}")
    # LinkServer finds its probe itself and says so when there is none.
    return [linkserver, "flash", probe["linkserver_device"], "load", str(image)]


def flash_stage(board: dict, *, mcux_dir, out_path, environ=None) -> dict:
    """Program the board's SDK flash image and write out_path (JSON: image digest, the command that ran);
    Skipped without a probe, and then nothing is written."""
    image = flash_image(board, mcux_dir)
    cmd = flash_command(board, image, environ)
    result = run_tool(cmd, PYOCD_HINT if Path(cmd[0]).name == "pyocd" else LINKSERVER_HINT)
    record = {"board": board["name"], "image": str(image), "sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
              "command": cmd, "output": result.stdout.splitlines()[-5:] + result.stderr.splitlines()[-5:]}
    write_text(out_path, json.dumps(record, indent=2) + "\n")
    return record
