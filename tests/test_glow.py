"""Glow backend: detection and the app note's command lines, run through stand-ins of Glow's tools
(tests/glow_standin) that parse options as Glow's LLVM option parser does, over the option names of Glow's
sources, and check the input type the loader would build against the ONNX model (Glow is not installed here)."""
import json
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from conftest import executed, run_doit
from pipeline.core.tools import Skipped, ToolError, run_tool
from pipeline.int8 import glow

BOARDS = Path(__file__).resolve().parents[1] / "boards"
STANDIN = Path(__file__).resolve().parent / "glow_standin"


def board(name):
    return tomllib.loads((BOARDS / f"{name}.toml").read_text())


def install_standins(folder: Path) -> dict:
    """Glow's three tools as executables named like them, in `folder`: {tool: path}."""
    tools = {}
    for tool in glow.TOOLS:
        path = folder / tool
        path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(STANDIN)!r})\n"
                        "import glow_standin\nglow_standin.main(sys.argv)\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        tools[tool] = str(path)
    return tools


@pytest.fixture
def standins(tmp_path, monkeypatch):
    """Stand-ins in tmp_path/bin logging to tmp_path/glow.log, a model with Glow's input `input` [1,3,32,32]."""
    (tmp_path / "bin").mkdir()
    log = tmp_path / "glow.log"
    monkeypatch.setenv("GLOW_STANDIN_LOG", str(log))
    monkeypatch.setenv("GLOW_STANDIN_CHECK_ONLY", "1")
    monkeypatch.delenv("GLOW_STANDIN_EIQ", raising=False)
    glow.listed_options.cache_clear()
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "cifar",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 32, 32])])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), model)
    yield install_standins(tmp_path / "bin"), model, log
    glow.listed_options.cache_clear()


def run_logged(cmd, log: Path) -> dict:
    """Run a command line through its stand-in and return what the tool took: its effective options."""
    run_tool(cmd, glow.INSTALL_HINT)
    return json.loads(log.read_text().splitlines()[-1])


def rejected(cmd) -> str:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert result.returncode != 0, f"accepted: {cmd}"
    return result.stderr


def test_profile_command_is_accepted(standins):
    tools, model, log = standins
    taken = run_logged(glow.profile_command(tools, model, ["calib/airplane.png", "calib/truck.png"], "p.yml"), log)
    assert taken["positional"] == ["calib/airplane.png", "calib/truck.png"]
    assert taken["options"]["image-mode"] == ["neg1to1"] and taken["options"]["image-layout"] == ["NCHW"]
    assert taken["options"]["dump-profile"] == "p.yml"


def test_tune_command_loads_the_real_input_type_on_the_cpu_backend(standins):
    tools, model, log = standins
    cmd = glow.tune_command(tools, model, "profile.yml", "data/dataset-tuning", "data/dataset-tuning/Labels.csv",
                            "profile_tuned.yml", target_accuracy=0.9)
    options = run_logged(cmd, log)["options"]
    assert options["backend"] == "CPU" and options["model-input"] == ["input,float,[1,3,32,32]"]
    assert options["dump-tuned-profile"] == "profile_tuned.yml" and options["target-accuracy"] == "0.9"
    # The old command line, with the bare input name, loads the input as float [1]: the stand-in says so.
    old = [c for c in cmd if not c.startswith(("-model-input=", "-backend="))] + ["-model-input-name=input"]
    assert "loaded as float [1]" in rejected(old)


@pytest.mark.parametrize("name, flags", [
    ("rt1060", ["-target=arm", "-mcpu=cortex-m7", "-float-abi=hard"]),
    ("rt685_m33", ["-target=arm", "-mcpu=cortex-m33", "-float-abi=hard"]),
])
def test_bundle_command_as_the_note_writes_it(standins, monkeypatch, name, flags):
    tools, model, log = standins
    cmd = glow.bundle_command(tools, model, "profile_tuned.yml", board(name), "out/bundle")
    assert cmd[-len(flags):] == flags  # upstream Glow: no eIQ-only option
    options = run_logged(cmd, log)["options"]
    assert options["backend"] == "CPU" and options["quantization-precision-bias"] == "Int8"
    assert options["quantization-schema"] == "symmetric_with_power2_scale"
    assert options["model-input"] == ["input,float,[1,3,32,32]"] and options["emit-bundle"] == "out/bundle"
    assert "Unknown command line argument '-use-cmsis'" in rejected(cmd + ["-use-cmsis"])
    monkeypatch.setenv("GLOW_STANDIN_EIQ", "1")  # NXP's eIQ Glow lists -use-cmsis: it is passed
    glow.listed_options.cache_clear()
    cmd = glow.bundle_command(tools, model, "profile_tuned.yml", board(name), "out/bundle")
    assert cmd[-1] == "-use-cmsis" and run_logged(cmd, log)["options"]["use-cmsis"] == "true"


def test_help_is_read_in_both_llvm_styles():
    text = ("OPTIONS:\n\nGeneral options:\n\n  -backend=<string>    - Backend to use\n"
            "  --use-cmsis          - Use CMSIS-NN kernels\n  -m=<string>          - Alias for -model\n")
    assert glow.help_option_names(text) == {"backend", "use-cmsis", "m"}


def test_standin_rejects_malformed_values(standins):
    tools, model, _ = standins
    compiler = [tools["model-compiler"], f"-model={model}"]
    assert "Cannot find option named 'int8'" in rejected(compiler + ["-quantization-precision-bias=int8"])
    assert "requires a value" in rejected(compiler + ["-emit-bundle"])
    assert "shape invalid" in rejected(compiler + ["-model-input=input,float,1x3x32x32"])
    assert "may only occur zero or one times" in rejected(compiler + ["-backend=CPU", "-backend=CPU"])
    assert "Too many positional arguments" in rejected(compiler + ["image.png"])


def test_hifi4_flags_need_xtensa_tools(standins, tmp_path, monkeypatch):
    tools, model, _ = standins
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("XTENSA_SYSTEM", raising=False)
    with pytest.raises(Skipped, match="xt-clang"):
        glow.bundle_command(tools, model, "p.yml", board("rt685_hifi4"), "out")
    with pytest.raises(Skipped, match="xt-clang not found for rt685_hifi4"):
        glow.require_bundle_tools(board("rt685_hifi4"))
    glow.require_bundle_tools(board("rt1060"))  # nothing missing for the Arm boards
    _fake_tool(tmp_path / "bin", "xt-clang")
    with pytest.raises(Skipped, match="XTENSA_SYSTEM"):
        glow.bundle_command(tools, model, "p.yml", board("rt685_hifi4"), "out")
    monkeypatch.setenv("XTENSA_SYSTEM", "/opt/xtensa/config")
    monkeypatch.setenv("GLOW_STANDIN_EIQ", "1")
    glow.listed_options.cache_clear()
    cmd = glow.bundle_command(tools, model, "p.yml", board("rt685_hifi4"), "out")
    assert "-use-hifi" in cmd and "-llvm-compiler=xt-clang" in cmd
    assert any("--xtensa-system=/opt/xtensa/config" in c for c in cmd)


def _fake_tool(folder, name):
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


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


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc (the bundle object)")
def test_runners_leave_glows_files_through_the_standins(tmp_path, monkeypatch):
    """The three runners as the graph calls them, with the stand-ins doing the work: every command line passes
    the option checks and the bundle folder holds what Glow writes (no .c)."""
    from PIL import Image

    from tiny_model import export_onnx, synthetic_images, train_tiny_model

    (tmp_path / "bin").mkdir()
    install_standins(tmp_path / "bin")
    monkeypatch.setenv("GLOW_BIN", str(tmp_path / "bin"))
    monkeypatch.setenv("GLOW_STANDIN_LOG", str(tmp_path / "glow.log"))
    monkeypatch.delenv("GLOW_STANDIN_CHECK_ONLY", raising=False)
    images, labels = synthetic_images(64, seed=2)
    export_onnx(train_tiny_model(images, labels, steps=5), tmp_path / "cifar.onnx")
    tuning = tmp_path / "tuning"
    tuning.mkdir()
    for i, image in enumerate(images[:20]):
        Image.fromarray(image).save(tuning / f"{i:02d}.png")
    (tuning / "Labels.csv").write_text("".join(f"{i:02d}.png,{labels[i]}\n" for i in range(20)))
    glow.make_profile(tmp_path / "cifar.onnx", sorted(tuning.glob("*.png"))[:10], tmp_path / "profile.yml")
    glow.tune_profile(tmp_path / "cifar.onnx", tmp_path / "profile.yml", tuning, tuning / "Labels.csv",
                      tmp_path / "profile_tuned.yml")
    glow.make_bundle(tmp_path / "cifar.onnx", tmp_path / "profile_tuned.yml", board("rt1060"), tmp_path / "bundle")
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == \
        ["cifar.h", "cifar.o", "cifar.weights.bin", "cifar.weights.txt"]
    runs = [json.loads(line) for line in (tmp_path / "glow.log").read_text().splitlines()]
    assert [run["tool"] for run in runs] == ["image-classifier", "model-tuner", "model-compiler"]
    assert [run["options"]["backend"] for run in runs[1:]] == ["CPU", "CPU"]


def test_a_glow_made_profile_is_read_by_tensor_names(tmp_path):
    """The direction that works (docs/int8-backend.md): a profile carrying Glow's own GraphPreLowerHash, which the
    built-in backend cannot compute, is read by its tensor names: the bundle is the one the same ranges give."""
    from pipeline.int8 import bundle, profile
    from tiny_model import export_onnx, synthetic_images, train_tiny_model

    images, labels = synthetic_images(64, seed=4)
    export_onnx(train_tiny_model(images, labels, steps=3), tmp_path / "cifar.onnx")
    ours = tmp_path / "profile.yml"
    profile.make_profile(tmp_path / "cifar.onnx", images[:10], ours)
    text = ours.read_text()
    own_hash = f"0x{profile.model_hash(tmp_path / 'cifar.onnx'):016X}"
    assert own_hash in text
    glow_made = tmp_path / "glow_profile.yml"
    glow_made.write_text(text.replace(own_hash, "0x5BD1E9955BD1E995"))  # another graph hash, same ranges
    assert profile.read_profile(glow_made).graph_hash == 0x5BD1E9955BD1E995
    assert bundle.generate_sources(tmp_path / "cifar.onnx", glow_made) == \
        bundle.generate_sources(tmp_path / "cifar.onnx", ours)


def test_the_default_graph_finishes_with_glows_tools(smoke_copy, smoke_build_cache, tmp_path):
    """With Glow's tools found (stand-ins on GLOW_BIN, which accept only Glow's own options), the graph ends in
    firmware for both Arm boards, each checked under QEMU against the built-in bundle of the same profile; the
    HiFi4, whose bundle Glow cannot make without the Xtensa tools, is skipped with the reason after it."""
    tree, env = smoke_copy
    shutil.copytree(smoke_build_cache, env["PIPELINE_CACHE_DIR"])
    (tmp_path / "glow").mkdir()
    install_standins(tmp_path / "glow")
    env = {**env, "GLOW_BIN": str(tmp_path / "glow"), "GLOW_STANDIN_LOG": str(tmp_path / "glow.log")}
    run_doit(tree, "config=configs/smoke.toml", env=env)
    tools = {json.loads(line)["tool"] for line in (tmp_path / "glow.log").read_text().splitlines()}
    assert tools == set(glow.TOOLS), "every Glow tool ran"
    for name in ("rt1060", "rt685_m33"):
        root = tree / "build" / name
        assert not (root / "bundle" / "cifar.c").exists(), "Glow keeps no bundle C"
        emulated = json.loads((root / "emulator.json").read_text())
        assert emulated["check"]["top1_equal"] == emulated["check"]["images"] == 5
        assert "built-in" in emulated["check"]["reference"]
    hifi4 = tree / "build" / "rt685_hifi4" / "skipped"
    assert "xt-clang" in (hifi4 / "bundle.txt").read_text()
    assert (hifi4 / "firmware.txt").read_text().startswith("bundle:rt685_hifi4")
    assert executed(run_doit(tree, "config=configs/smoke.toml", env=env)) == set()
