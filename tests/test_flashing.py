"""doit flash:<board>: programming the SDK flash image through pyOCD (or LinkServer). No probe is attached to this
machine, so what is tested is what really happens here: pyOCD's own target table and USB enumeration lead to a
skip that says why, and nothing is recorded as flashed."""
import shutil

import pytest

from pipeline.core.config import load_board
from pipeline.core.tools import Skipped
from pipeline.firmware import flashing


def _sdk_flash_image(board, mcux_dir):
    """A stand-in for mcux_sdk_build's output: the flash target's Intel HEX file (one data record)."""
    target = next(name for name, spec in board["mcux"]["targets"].items() if "flash" in spec)
    image = mcux_dir / target / "firmware.hex"
    image.parent.mkdir(parents=True)
    image.write_text(":0400000001020304F2\n:00000001FF\n")
    return image


def test_flash_needs_the_sdk_image_first(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"flash/firmware.hex does not exist; .*doit mcux_sdk:rt1060"):
        flashing.flash_image(load_board("rt1060"), tmp_path)
    with pytest.raises(Skipped, match="rt685_hifi4.toml has no"):
        flashing.flash_image(load_board("rt685_hifi4"), tmp_path)


def test_without_a_probe_flashing_is_skipped_and_nothing_is_recorded(tmp_path, monkeypatch):
    if flashing.connected_probes():
        pytest.skip("a debug probe is attached to this machine")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no LinkServer
    board = load_board("rt1060")
    assert flashing.pyocd_target_available(board["probe"]["pyocd_target"])  # built into pyOCD
    _sdk_flash_image(board, tmp_path / "mcux")
    with pytest.raises(Skipped, match="cannot flash rt1060: pyOCD found no debug probe on USB .*; LinkServer is not "
                                      "installed"):
        flashing.flash_stage(board, mcux_dir=tmp_path / "mcux", out_path=tmp_path / "flash.json")
    assert not (tmp_path / "flash.json").exists()


def test_rt685_needs_nxps_pack_for_pyocd(tmp_path, monkeypatch):
    board = load_board("rt685_m33")
    if flashing.pyocd_target_available(board["probe"]["pyocd_target"]):
        pytest.skip("NXP's RT685 pack is installed for pyOCD here")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(Skipped, match=r"pyOCD has no target mimxrt685sfvkb \(install NXP's pack: pyocd pack install "):
        flashing.flash_command(board, tmp_path / "firmware.hex")


@pytest.mark.skipif(shutil.which("LinkServer") is not None, reason="LinkServer is installed here")
def test_linkserver_is_used_when_pyocd_cannot(tmp_path, monkeypatch):
    """LinkServer finds its own probe; an executable of that name on PATH is what the command names."""
    linkserver = tmp_path / "LinkServer"
    linkserver.write_text("#!/bin/sh\nexit 0\n")
    linkserver.chmod(0o755)
    board = load_board("rt685_m33")
    if flashing.pyocd_target_available(board["probe"]["pyocd_target"]):
        pytest.skip("NXP's RT685 pack is installed for pyOCD here")
    cmd = flashing.flash_command(board, tmp_path / "firmware.hex", environ={"PATH": str(tmp_path)})
    assert cmd == [str(linkserver), "flash", "MIMXRT685S:EVK-MIMXRT685", "load", str(tmp_path / "firmware.hex")]
