"""Acceptance: `doit config=configs/smoke.toml` produces every artifact of the graph, each checked for content."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import yaml
from onnx import numpy_helper

from pipeline.int8.bundle import header_macros

ARM_BOARDS = ("rt1060", "rt685_m33")


def test_foundation_artifacts(smoke_build):
    build = smoke_build / "build"
    for name in ("train_images.npy", "val_images.npy", "test_images.npy", "classes.json", "manifest.json"):
        assert (build / "data" / name).is_file()
    assert len(list((build / "data" / "images").rglob("*.png"))) == 100 * 10
    assert len((build / "data" / "dataset-tuning" / "Labels.csv").read_text().splitlines()) == 30 * 10
    metrics = json.loads((build / "model" / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1
    # the smoke model learns (chance is 10 %), so the agreement tests below compare models that tell classes apart
    assert metrics["test_accuracy"] >= 0.25
    assert (build / "model" / "training.png").read_bytes().startswith(b"\x89PNG")
    model = onnx.load(build / "model" / "cifar.onnx")
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]


def test_model_zoo_test_data_reproduces_with_onnx_runtime(smoke_build):
    folder = smoke_build / "build" / "model"
    x = numpy_helper.to_array(onnx.load_tensor(folder / "test_data_set_0" / "input_0.pb"))
    y = numpy_helper.to_array(onnx.load_tensor(folder / "test_data_set_0" / "output_0.pb"))
    got = ort.InferenceSession(str(folder / "cifar.onnx")).run(None, {"input": x})[0]
    assert np.abs(got - y).max() <= 1e-4


def test_quantization_artifacts(smoke_build):
    quant = smoke_build / "build" / "quant"
    for name in ("profile.yml", "profile_tuned.yml"):
        docs = list(yaml.safe_load_all((quant / name).read_text()))
        assert len(docs) == 3 and "GlowToolsVersion" in docs[0] and "GraphPreLowerHash" in docs[1]
        assert all(e["Min"] <= e["Max"] for e in docs[2])
    accuracy = json.loads((quant / "accuracy.json").read_text())
    assert {"float_accuracy", "int8_untuned_accuracy", "int8_tuned_accuracy"} <= set(accuracy)
    assert abs(accuracy["int8_tuned_accuracy"] - accuracy["float_accuracy"]) <= 0.05
    assert accuracy["bundle"].startswith("built-in int8 bundle")  # which bundle the figures are of
    int8_top1 = np.load(quant / "int8_val_predictions.npy")
    assert len(np.unique(int8_top1)) >= 6, "the deployed int8 model must predict many classes, not one"


def test_every_board_has_its_bundle_sources_and_main_c(smoke_build):
    for board in (*ARM_BOARDS, "rt685_hifi4"):
        root = smoke_build / "build" / board
        macros = header_macros(root / "bundle" / "cifar.h")
        weights = (root / "bundle" / "cifar.weights.bin").read_bytes()
        assert len(weights) == macros["CIFAR_CONSTANT_MEM_SIZE"]
        assert (root / "bundle" / "cifar.weights.txt").read_text().startswith(" 0X")
        assert (root / "source" / "input_image_test.inc").read_text().startswith("//")
        main_c = (root / "source" / "main.c").read_text()
        # the console lines (mcux_app/console.h, shared with the TFLM app) and the bundle's input placeholder
        assert "print_image_result(" in main_c and "CIFAR_input" in main_c


def test_arm_boards_end_with_firmware_run_under_emulation(smoke_build):
    for board in ARM_BOARDS:
        root = smoke_build / "build" / board
        assert (root / "bundle" / "cifar.o").read_bytes().startswith(b"\x7fELF")
        assert (root / "firmware.elf").read_bytes().startswith(b"\x7fELF")
        run = json.loads((root / "emulator.json").read_text())
        assert run["check"]["top1_equal"] == run["check"]["images"] == 5
        assert len({image["top1"] for image in run["images"]}) >= 3, "firmware and host agree on several classes"
        assert "Top1 class = " in (root / "emulator.log").read_text()


def test_hifi4_steps_are_skipped_with_reasons_and_leave_no_fake_artifacts(smoke_build):
    root = smoke_build / "build" / "rt685_hifi4"
    assert not (root / "bundle" / "cifar.o").exists() and not (root / "firmware.elf").exists()
    assert "no Xtensa toolchain" in (root / "skipped" / "firmware.txt").read_text()
    assert "XTENSA_TOOLS" in (root / "skipped" / "bundle_object.txt").read_text()
    report = (smoke_build / "build" / "report.md").read_text()
    assert "firmware: skipped: no Xtensa toolchain" in report


def test_report_and_evaluations(smoke_build):
    build = smoke_build / "build"
    report = (build / "report.md").read_text()
    for needle in ("157,460 B", "211,532 B", "Instructions per MAC", "Confidence hardening", "Engine parity",
                   "zephyr: skipped: ZEPHYR_BASE is not set"):
        assert needle in report
    for png in ("hardening/hardening.png", "robustness/robustness.png"):
        assert (build / "reports" / png).read_bytes().startswith(b"\x89PNG")
    parity = json.loads((build / "reports" / "parity" / "parity.json").read_text())
    assert parity
