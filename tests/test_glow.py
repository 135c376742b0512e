"""Glow backend: detection and the app note's command lines (Glow itself is not installed here)."""
import stat
import tomllib
from pathlib import Path

import pytest

from pipeline.int8 import glow
from pipeline.core.tools import Skipped, ToolError

BOARDS = Path(__file__).resolve().parents[1] / "boards"


def board(name):
    return tomllib.loads((BOARDS / f"{name}.toml").read_text())


TOOLS = {"image-classifier": "/g/image-classifier", "model-tuner": "/g/model-tuner",
         "model-compiler": "/g/model-compiler"}


def test_profile_command():
    cmd = glow.profile_command(TOOLS, "m.onnx", ["calib/airplane.png", "calib/truck.png"], "profile.yml")
    assert cmd[:3] == ["/g/image-classifier", "calib/airplane.png", "calib/truck.png"]
    for flag in ["-image-mode=neg1to1", "-image-layout=NCHW", "-image-channel-order=RGB", "-model=m.onnx",
                 "-model-input-name=input", "-dump-profile=profile.yml"]:
        assert flag in cmd


def test_tune_command():
    cmd = glow.tune_command(TOOLS, "m.onnx", "profile.yml", "data/dataset-tuning", "data/dataset-tuning/Labels.csv",
                            "profile_tuned.yml", target_accuracy=0.9)
    assert cmd[0] == "/g/model-tuner"
    for flag in ["-dataset-path=data/dataset-tuning", "-dataset-file=data/dataset-tuning/Labels.csv",
                 "-load-profile=profile.yml", "-dump-tuned-profile=profile_tuned.yml",
                 "-quantization-schema=symmetric_with_power2_scale", "-quantization-precision=Int8",
                 "-target-accuracy=0.9", "-image-mode=neg1to1", "-image-layout=NCHW", "-model-input-name=input"]:
        assert flag in cmd


@pytest.mark.parametrize("name, expected", [
    ("rt1060", ["-target=arm", "-mcpu=cortex-m7", "-float-abi=hard", "-use-cmsis"]),
    ("rt685_m33", ["-target=arm", "-mcpu=cortex-m33", "-float-abi=hard", "-use-cmsis"]),
])
def test_bundle_command_uses_board_flags(name, expected):
    cmd = glow.bundle_command(TOOLS, "m.onnx", "profile_tuned.yml", board(name), "out/bundle")
    assert cmd[0] == "/g/model-compiler" and cmd[-len(expected):] == expected
    for flag in ["-model=m.onnx", "-emit-bundle=out/bundle", "-backend=CPU", "-network-name=cifar",
                 "-load-profile=profile_tuned.yml", "-quantization-schema=symmetric_with_power2_scale",
                 "-quantization-precision=Int8"]:
        assert flag in cmd


def _fake_tool(folder, name):
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_hifi4_flags_need_xtensa_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("XTENSA_SYSTEM", raising=False)
    with pytest.raises(Skipped, match="xt-clang"):
        glow.bundle_command(TOOLS, "m.onnx", "p.yml", board("rt685_hifi4"), "out")
    _fake_tool(tmp_path, "xt-clang")
    with pytest.raises(Skipped, match="XTENSA_SYSTEM"):
        glow.bundle_command(TOOLS, "m.onnx", "p.yml", board("rt685_hifi4"), "out")
    monkeypatch.setenv("XTENSA_SYSTEM", "/opt/xtensa/config")
    cmd = glow.bundle_command(TOOLS, "m.onnx", "p.yml", board("rt685_hifi4"), "out")
    assert "-use-hifi" in cmd and "-llvm-compiler=xt-clang" in cmd
    assert any("--xtensa-system=/opt/xtensa/config" in c for c in cmd)


def test_detection_and_backend_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("GLOW_BIN", str(tmp_path))
    assert glow.find_glow() is None and glow.choose_backend("auto") == "builtin"
    with pytest.raises(ToolError, match="GLOW_BIN"):
        glow.choose_backend("glow")
    with pytest.raises(Skipped, match="not found"):
        glow.make_profile("m.onnx", [], tmp_path / "profile.yml")
    assert not (tmp_path / "profile.yml").exists()
    for tool in glow.TOOLS:
        _fake_tool(tmp_path, tool)
    assert glow.find_glow() == {t: str(tmp_path / t) for t in glow.TOOLS}
    assert glow.choose_backend("auto") == "glow"
    with pytest.raises(ValueError, match="'fast'"):
        glow.choose_backend("fast")
