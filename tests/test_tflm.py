"""The TensorFlow Lite Micro firmware path: without a TFLM tree every step skips with what to set (a skip record,
no artifact); with one (TFLM_ROOT), the firmware built from a small model's .tflite runs under QEMU and its
outputs equal TFLite Micro's host interpreter's on the same images bit for bit; ops the tree lacks stop the
build naming them."""
import json
import os
import shutil

import numpy as np
import pytest

from pipeline.core.config import load_board
from pipeline.core.tools import Skipped
from pipeline.firmware import emulator, tflm
from pipeline.int8 import profile, tflite
from pipeline.int8.image_inc import write_image_inc
from tiny_model import export_onnx, synthetic_images, train_tiny_model

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_without_tflm_root_the_steps_skip_saying_how_to_make_a_tree(monkeypatch, tmp_path):
    monkeypatch.delenv("TFLM_ROOT", raising=False)
    with pytest.raises(Skipped, match="TFLM_ROOT is not set.*create_tflm_tree.py.*OPTIMIZED_KERNEL_DIR=cmsis_nn"):
        tflm.require_tflm(load_board("rt1060"))
    monkeypatch.setenv("TFLM_ROOT", str(tmp_path))
    with pytest.raises(Skipped, match=f"TFLM_ROOT={tmp_path} is not an exported TFLite Micro tree.*has no "
                                      f"tensorflow/lite/micro/micro_interpreter.h"):
        tflm.build_tflm_firmware(load_board("rt685_m33"), tflite_path=tmp_path / "none.tflite",
                                 image_inc=tmp_path / "none.inc", classes_file=tmp_path / "classes.json",
                                 out_dir=tmp_path / "out", network="cifar")
    assert not (tmp_path / "out").exists()
    with pytest.raises(Skipped, match="xtensa toolchain; TFLite Micro's CMSIS-NN kernels are for Arm Cortex-M"):
        tflm.require_tflm(load_board("rt685_hifi4"))


def test_smoke_build_without_tflm_root_records_the_skip_and_builds_nothing(request):
    if os.environ.get("TFLM_ROOT"):
        pytest.skip("TFLM_ROOT is set in this environment, so the smoke build runs the TFLM steps")
    smoke_build = request.getfixturevalue("smoke_build")
    report = (smoke_build / "build" / "report.md").read_text()
    assert "#### TensorFlow Lite Micro firmware (CMSIS-NN kernels)" in report
    for board in ("rt1060", "rt685_m33"):
        root = smoke_build / "build" / board
        for step in ("tflm_firmware", "tflm_emulate"):
            assert "TFLM_ROOT is not set" in (root / "skipped" / f"{step}.txt").read_text()
        assert not (root / "tflm").exists()
        assert f"- {board}: skipped: TFLM_ROOT is not set" in report


def test_an_op_the_tree_lacks_stops_the_build_naming_it(tmp_path):
    header = tmp_path / tflm.RESOLVER_HEADER
    header.parent.mkdir(parents=True)
    header.write_text("TfLiteStatus AddQuantize() {}\nTfLiteStatus AddFullyConnected(\n")
    assert tflm.resolver_methods(["QUANTIZE", "FULLY_CONNECTED"], tmp_path) == ["AddQuantize", "AddFullyConnected"]
    with pytest.raises(ValueError, match=f"uses CONV_2D, but {header} has no AddConv2D"):
        tflm.resolver_methods(["QUANTIZE", "CONV_2D"], tmp_path)


@pytest.fixture(scope="module")
def tflm_build(tmp_path_factory):
    """The TFLM firmware of a tiny model's .tflite for the RT1060, built against TFLM_ROOT (about 2 minutes: the
    library's sources compile once), and its emulation on 3 images besides the built-in one."""
    if not os.environ.get("TFLM_ROOT"):
        pytest.skip(f"TFLM_ROOT is not set; {tflm.TREE_HINT}")
    if shutil.which("arm-none-eabi-g++") is None or shutil.which("qemu-system-arm") is None:
        pytest.skip("needs arm-none-eabi-g++ and qemu-system-arm (apt-get install gcc-arm-none-eabi "
                    "libnewlib-arm-none-eabi qemu-system-arm)")
    pytest.importorskip("tflite_micro.python.tflite_micro.runtime", reason="TFLite Micro's host interpreter "
                                                                            "(tflite-micro) is not installed")
    work = tmp_path_factory.mktemp("tflm")
    images, labels = synthetic_images(100, seed=3)
    export_onnx(train_tiny_model(images, labels, steps=30), work / "cifar.onnx")
    profile.make_profile(work / "cifar.onnx", images[:10], work / "profile.yml")
    tflite.tflite_stage(work / "cifar.onnx", work / "profile.yml", work / "cifar_int8.tflite")
    write_image_inc(images[90], work / "input_image_test.inc", "synthetic 90", 0, LABELS[0])
    (work / "classes.json").write_text(json.dumps(LABELS))
    board = load_board("rt1060")
    out = work / "rt1060"
    elfs = tflm.build_tflm_firmware(board, tflite_path=work / "cifar_int8.tflite", image_inc=work /
                                    "input_image_test.inc", classes_file=work / "classes.json", out_dir=out,
                                    network="cifar", timeout=60)
    summary = tflm.tflm_emulation(board, elf=elfs["emulator_elf"], tflite_path=work / "cifar_int8.tflite",
                                  image_inc=work / "input_image_test.inc", images=images[91:94], labels=LABELS,
                                  out_dir=out, timeout=60)
    return work, images, out, summary


def test_tflm_firmware_outputs_equal_the_host_interpreter_bit_for_bit(tflm_build):
    from pipeline.evaluations.tflite_parity import model_inputs, tflm_arena_size, tflm_outputs
    from pipeline.model.shapes import to_input

    work, images, out, summary = tflm_build
    model = (work / "cifar_int8.tflite").read_bytes()
    inputs = model_inputs(model, to_input(images[90:94]))  # the built-in image is images[90]
    expected = tflm_outputs(model, inputs, tflm_arena_size(model, inputs[:1]))
    results = emulator.parse_log((out / "emulator.log").read_text())
    assert [r.image for r in results] == [0, 1, 2, 3]
    assert np.array_equal(np.stack([r.outputs for r in results]).view(np.uint32), expected.view(np.uint32))
    assert summary["check"]["bit_identical"] == 4 and summary["instructions_per_inference"] > 0


def test_tflm_arena_is_what_tflm_used_on_the_target(tflm_build):
    work, _, out, summary = tflm_build
    header = (out / "source" / "tflm_model.h").read_text()
    arena = int(header.split("#define TFLM_ARENA_BYTES ")[1].split("u")[0])
    # the sizing run's count rounded up to 16 bytes; what TFLM counts in the final arena may shift by one more
    # alignment unit, as its tail is aligned down from the arena's end
    assert arena % 16 == 0 and arena - 32 < summary["arena_used_bytes"] <= arena
    ops = tflm.model_ops((work / "cifar_int8.tflite").read_bytes())
    assert f"#define TFLM_OP_COUNT {len(ops)}" in header and "X(AddConv2D)" in header


def test_report_puts_the_tflm_figures_beside_ours(tflm_build):
    import subprocess

    from pipeline.delivery.report import board_entry, tflm_firmware_lines

    _, _, out, summary = tflm_build
    board = load_board("rt1060")
    entry = board_entry(board, "cifar", tflm_elf=out / "firmware.elf", tflm_emulator_json=out / "emulator.json")
    text, data, bss = (int(v) for v in subprocess.run(["arm-none-eabi-size", "-B", out / "firmware.elf"],
                                                      capture_output=True, text=True, check=True)
                       .stdout.splitlines()[1].split()[:3])
    row = next(line for line in tflm_firmware_lines([entry]) if line.startswith("| rt1060 |"))
    assert row == (f"| rt1060 | — / {summary['instructions_per_inference']:,} | — / {text + data:,} B | "
                   f"— / {data + bss:,} B | — / {summary['arena_used_bytes']:,} B | 4/4 top-1, 4/4 bit-identical |")
