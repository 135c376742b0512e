"""Firmware under emulation against the host-compiled bundle: a small trained CifarNet goes through the real
bundle stage, the firmware is built for each Arm board and run under QEMU on several images; its answers must
equal the host build's bit for bit. Also: hangs, faults and wrong answers fail clearly, the instruction count
is calibrated against a loop of known length, and the SDK / Zephyr / Xtensa flows skip with their reason."""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.int8 import bundle
from pipeline.firmware import app, emulator, link
from pipeline.int8 import profile
from pipeline.core.config import load_board
from pipeline.core.layout import BoardLayout, emulator_linked
from pipeline.evaluations.hardening import harden
from pipeline.int8.image_inc import write_image_inc
from pipeline.model.evaluation import softmax
from pipeline.model.shapes import INPUT_SHAPE, to_input
from pipeline.core.tools import Skipped
from tiny_model import export_onnx, synthetic_images, train_tiny_model

pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="needs arm-none-eabi-gcc and qemu-system-arm (apt-get install "
                                       "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
INPUT_BYTES = 4 * int(np.prod(INPUT_SHAPE))
ARM_BOARDS = ["rt1060", "rt685_m33"]
NOISE = {"method": "noise", "range": 0.2, "seed": 7}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    work = tmp_path_factory.mktemp("model")
    images, labels = synthetic_images(100, seed=3)
    export_onnx(train_tiny_model(images, labels, steps=30), work / "cifar.onnx")
    profile.make_profile(work / "cifar.onnx", images[:10], work / "profile.yml")
    return work, images[90:95], images[95:98]


def make_board_build(model_files, board_name, out, hardening=None):
    work, images, _ = model_files
    inputs = to_input(images)
    board = load_board(board_name)
    bundle.make_bundle(work / "cifar.onnx", work / "profile.yml", board, out / "bundle")
    write_image_inc(images[0], out / "source" / "input_image_test.inc", "synthetic 0", 0, LABELS[0])
    main_c = app.render_main_c(out / "source" / "main.c", network="cifar", labels=LABELS,
                                    description=board["description"], header_path=out / "bundle" / "cifar.h",
                                    image_inc_path=out / "source" / "input_image_test.inc",
                                    input_bytes=INPUT_BYTES, hardening=hardening)
    elfs = link.build_firmware(board, main_c=main_c, bundle_dir=out / "bundle", network="cifar", out_dir=out,
                                   hardening=bool(hardening))
    runner = bundle.build_host_runner(out / "bundle", out / "host", "cifar")
    reference = bundle.run_host_bundle(runner, out / "bundle" / "cifar.weights.bin", inputs, out / "host")
    return board, elfs, reference


@pytest.fixture(scope="module", params=ARM_BOARDS)
def board_build(request, model_files, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    board, elfs, reference = make_board_build(model_files, request.param, out)
    summary = emulator.emulate_and_check(board, elfs["emulator_elf"], to_input(model_files[1]), reference, LABELS,
                                         out, timeout=60)
    return board, elfs, reference, summary, out


def test_firmware_under_qemu_equals_host_bundle_bit_for_bit(board_build, model_files):
    board, elfs, reference, summary, out = board_build
    check = summary["check"]
    assert check["images"] == len(model_files[1]) == 5
    assert check["bit_identical"] == 5, "DSP-path kernels on Arm differ from the portable C on the host"
    results = emulator.parse_log((out / "emulator.log").read_text())
    assert [r.top1 for r in results] == list(np.argmax(reference, axis=1))
    for result, probs in zip(results, softmax(reference)):
        assert abs(result.confidence_value - probs[result.top1]) <= 1e-3
        assert result.confidence == pytest.approx(probs[result.top1], abs=5e-4)  # the printed 0.xxx


def test_a_bundle_without_c_is_checked_against_the_built_in_bundle_of_its_profile(board_build, model_files,
                                                                                 tmp_path):
    """A Glow bundle ships an object and no C: the firmware is then checked against the built-in backend's bundle
    generated from the same ONNX model and profile (here that is the firmware's own bundle, so they agree)."""
    board, elfs, reference, summary, out = board_build
    work, _, extra = model_files
    glow_like = shutil.copytree(out / "bundle", tmp_path / "bundle")
    (glow_like / "cifar.c").unlink()
    arguments = dict(elf=elfs["emulator_elf"], bundle_dir=glow_like, image_inc=out / "source" / "input_image_test.inc",
                     images=extra, labels=LABELS, network="cifar", timeout=60)
    with pytest.raises(emulator.FirmwareError, match="has no cifar.c .*onnx_path, profile_path"):
        emulator.emulation_stage(board, out_dir=tmp_path / "no_model", **arguments)
    result = emulator.emulation_stage(board, out_dir=tmp_path, onnx_path=work / "cifar.onnx",
                                      profile_path=work / "profile.yml", **arguments)
    check = result["check"]
    assert check["reference"] == "built-in int8 bundle of the same model and profile (profile.yml)"
    assert check["confidence_tolerance"] == emulator.GLOW_CONFIDENCE_TOLERANCE
    assert check["top1_equal"] == check["images"] == 1 + len(extra)


def test_console_has_the_app_notes_lines(board_build):
    log = (board_build[4] / "emulator.log").read_text()
    assert re.search(r"^Top1 class = \d \((airplane|automobile|bird|cat|deer|dog|frog|horse|ship|truck)\)\r?$",
                     log, re.MULTILINE)
    assert re.search(r"^Confidence = [01]\.\d{3}\r?$", log, re.MULTILINE)
    assert re.search(r"^Inference time = \d+ \(ms\)\r?$", log, re.MULTILINE)


def test_instruction_counts_are_deterministic_and_per_image(board_build, model_files):
    board, elfs, reference, summary, out = board_build
    again = emulator.emulate_and_check(board, elfs["emulator_elf"], to_input(model_files[1]), reference, LABELS,
                                       out / "again", timeout=60)
    assert [i["instructions"] for i in again["images"]] == [i["instructions"] for i in summary["images"]]
    assert all(image["instructions"] > 0 for image in summary["images"])


def test_rt1060_runs_its_own_elf_and_rt685_is_relinked_for_an505(board_build):
    board, elfs, *_ = board_build
    vectors = {}
    for key in ("elf", "emulator_elf"):
        sections = subprocess.run(["arm-none-eabi-size", "-A", str(elfs[key])], capture_output=True, text=True,
                                  check=True).stdout
        vectors[key] = int(re.search(r"^\.vectors\s+\d+\s+(\d+)", sections, re.MULTILINE)[1])
    code_region = board["firmware"]["placement"]["code"]
    assert vectors["elf"] == board["memory"][code_region]["origin"]
    assert vectors["emulator_elf"] == link.memory_map(board, for_emulator=True)[code_region]["origin"]
    assert (elfs["elf"] == elfs["emulator_elf"]) == (not emulator_linked(board))


def test_footprint_counts_weights_as_flash_and_activations_as_sram(board_build):
    board, elfs, *_ , out = board_build
    size = link.firmware_size(board, elfs["elf"])
    macros = bundle.header_macros(out / "bundle" / "cifar.h")
    assert size["flash"] == size["text"] + size["data"] >= macros["CIFAR_CONSTANT_MEM_SIZE"]
    assert size["sram"] >= macros["CIFAR_ACTIVATIONS_MEM_SIZE"] + macros["CIFAR_MUTABLE_MEM_SIZE"] + size["stack"]


def test_wrong_class_is_a_clear_failure(board_build):
    board, elfs, reference, summary, out = board_build
    results = emulator.parse_log((out / "emulator.log").read_text())
    wrong = reference.copy()
    wrong[2] = np.roll(wrong[2], 1)  # the host now disagrees on image 2's class
    with pytest.raises(emulator.FirmwareError, match=r"image 2: firmware top-1 is \d \(\w+\) but the host bundle "
                                                     r"gives \d \(\w+\)"):
        emulator.compare_with_reference(results, wrong, LABELS)


def test_build_is_byte_identical_in_another_folder(board_build, model_files, tmp_path):
    board, elfs, *_, out = board_build
    shutil.copytree(out / "bundle", tmp_path / "bundle")
    shutil.copytree(out / "source", tmp_path / "source")
    again = link.build_firmware(board, main_c=tmp_path / "source" / "main.c", bundle_dir=tmp_path / "bundle",
                                    network="cifar", out_dir=tmp_path / "fw")
    assert again["elf"].read_bytes() == elfs["elf"].read_bytes()


def test_stages_run_the_test_image_then_uint8_images(model_files, tmp_path):
    work, test_images, images = model_files
    board = load_board("rt685_m33")
    bundle.make_bundle(work / "cifar.onnx", work / "profile.yml", board, tmp_path / "bundle")
    write_image_inc(test_images[0], tmp_path / "source" / "input_image_test.inc", "synthetic 0", 0, LABELS[0])
    elfs = link.firmware_stage(board, bundle_dir=tmp_path / "bundle", source_dir=tmp_path / "source",
                                   out_dir=tmp_path, network="cifar", labels=LABELS)
    assert sorted(BoardLayout(tmp_path, "cifar", "builtin", board).firmware) == sorted(
        p for p in tmp_path.rglob("firmware.*") if "obj" not in p.parts)
    summary = emulator.emulation_stage(board, elf=elfs["emulator_elf"], bundle_dir=tmp_path / "bundle",
                                       image_inc=tmp_path / "source" / "input_image_test.inc", images=images,
                                       labels=LABELS, out_dir=tmp_path, network="cifar", timeout=60)
    assert summary["check"]["images"] == summary["check"]["bit_identical"] == 1 + len(images)
    assert json.loads((tmp_path / "emulator.json").read_text()) == summary
    assert (tmp_path / "emulator.log").read_text().count("Top1 class = ") == 1 + len(images)


def test_hardened_firmware_matches_python_hardening(model_files, tmp_path):
    board, elfs, reference = make_board_build(model_files, "rt1060", tmp_path, hardening=NOISE)
    assert "harden_confidences" in (tmp_path / "source" / "main.c").read_text()
    summary = emulator.emulate_and_check(board, elfs["emulator_elf"], to_input(model_files[1]), reference, LABELS,
                                         tmp_path, timeout=60, hardening=NOISE)
    expected = harden(softmax(reference), NOISE)
    got = [image["confidence"] for image in summary["images"]]
    # Not bit-exact: the firmware's softmax (newlib expf, summed in order) and numpy's (its exp, pairwise sum)
    # differ by an ulp or two before the hardening, which is exact float32 on both sides.
    assert got == pytest.approx([expected[i, image["top1"]] for i, image in enumerate(summary["images"])],
                                abs=1e-6)
    assert not np.allclose(got, softmax(reference).max(axis=1), atol=1e-3)  # the noise did change them


# ------------------------------------------------------------------------------- stand-in bundles, same ABI
def stand_in_firmware(board_build, tmp_path, body: str):
    """The board's firmware with the bundle object replaced by `body` as the entry point, same header."""
    board, _, _, _, out = board_build
    shutil.copytree(out / "bundle", tmp_path / "bundle")
    shutil.copytree(out / "source", tmp_path / "source")
    (tmp_path / "stand_in.c").write_text(
        "#include <stdint.h>\nint cifar(uint8_t *constants, uint8_t *mutables, uint8_t *activations)\n{\n"
        "    (void)constants; (void)mutables; (void)activations;\n" + body + "\n}\n")
    link.compile_objects(board, [tmp_path / "stand_in.c"], {}, tmp_path / "obj")
    shutil.copy(tmp_path / "obj" / "stand_in.o", tmp_path / "bundle" / "cifar.o")
    return board, link.build_firmware(board, main_c=tmp_path / "source" / "main.c",
                                          bundle_dir=tmp_path / "bundle", network="cifar",
                                          out_dir=tmp_path / "fw")["emulator_elf"]


def loop_instructions(board_build, tmp_path, iterations: int) -> int:
    board, elf = stand_in_firmware(board_build, tmp_path, f"""
    uint32_t left = {iterations}u;
    __asm__ volatile("1: subs %0, %0, #1\\n\\tbne 1b" : "+r"(left) : : "cc");
    return 0;""")
    _, results = emulator.run_emulator(board, elf, timeout=60)
    return round(results[0].cycles * emulator.instructions_per_tick(board))


def test_instruction_count_is_calibrated_on_a_loop_of_known_length(board_build, tmp_path):
    short = loop_instructions(board_build, tmp_path / "short", 1)
    long = loop_instructions(board_build, tmp_path / "long", 1_000_001)
    one_tick = emulator.instructions_per_tick(board_build[0])
    assert abs((long - short) - 2_000_000) <= 2 * one_tick  # two instructions per iteration, +-1 tick each end


def test_hang_times_out_with_a_clear_error(board_build, tmp_path):
    board, elf = stand_in_firmware(board_build, tmp_path, "    for (;;) {\n    }")
    with pytest.raises(emulator.FirmwareError, match=r"still running after 3 s under mps2-an50\d \(hung\?\)"):
        emulator.run_emulator(board, elf, timeout=3)


def test_crash_names_the_exception(board_build, tmp_path):
    board, elf = stand_in_firmware(board_build, tmp_path, "    __builtin_trap();\n    return 0;")
    with pytest.raises(emulator.FirmwareError, match=r"exit 2(.|\n)*Fault: exception 003"):
        emulator.run_emulator(board, elf, timeout=20)


# ----------------------------------------------------------------------------------------------- bad inputs
def test_header_without_the_bundle_abi_is_rejected(tmp_path):
    (tmp_path / "cifar.h").write_text("#define CIFAR_input 0\n#define CIFAR_CONSTANT_MEM_SIZE 64\n")
    with pytest.raises(ValueError, match=r"cifar\.h: missing CIFAR_output, CIFAR_MUTABLE_MEM_SIZE"):
        app.check_bundle_header(tmp_path / "cifar.h", "cifar")


def test_image_inc_of_the_wrong_size_is_rejected(tmp_path):
    (tmp_path / "cifar.h").write_text("".join(f"#define CIFAR_{name} 64\n" for name in
                                              ("input", "output", *app.REQUIRED_MACROS)))
    write_image_inc(np.zeros((16, 16, 3), np.uint8), tmp_path / "input_image_test.inc", "small", 0, LABELS[0])
    with pytest.raises(ValueError, match=r"input_image_test\.inc: holds 3072 bytes but the network input takes 12288"):
        app.render_main_c(tmp_path / "main.c", network="cifar", labels=LABELS, description="x",
                               header_path=tmp_path / "cifar.h", image_inc_path=tmp_path / "input_image_test.inc",
                               input_bytes=INPUT_BYTES)
    assert not (tmp_path / "main.c").exists()


def test_placement_in_an_unknown_region_is_rejected(tmp_path):
    board = load_board("rt1060")
    board["firmware"]["placement"]["weights"] = "flash"
    with pytest.raises(ValueError, match=r"rt1060\.toml: \[firmware\.placement\] names region 'flash'"):
        link.render_linker_script(tmp_path / "firmware.ld", board)


# -------------------------------------------------------------------------------- SDK, Zephyr, Xtensa flows
def test_xtensa_board_skips_without_its_toolchain_and_leaves_no_elf(tmp_path, monkeypatch):
    monkeypatch.delenv("XTENSA_SYSTEM", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    (tmp_path / "cifar.o").write_bytes(b"")
    with pytest.raises(Skipped, match=r"skipped: no Xtensa toolchain .*XTENSA_TOOLS.*XTENSA_SYSTEM"):
        link.build_firmware(load_board("rt685_hifi4"), main_c=tmp_path / "main.c", bundle_dir=tmp_path,
                                network="cifar", out_dir=tmp_path / "fw")
    assert not (tmp_path / "fw" / "firmware.elf").exists()


def test_xtensa_command_uses_the_boards_core_and_lsp():
    board = load_board("rt685_hifi4")
    cmd = link.xtensa_build_command(board, xt_clang="xt-clang", xtensa_system="/opt/xtensa/registry",
                                        main_c="/b/source/main.c", bundle_dir="/b/bundle", network="cifar",
                                        out_elf="firmware.elf")
    assert cmd[:3] == ["xt-clang", "--xtensa-core=nxp_rt600_RI23_11_newlib",
                       "--xtensa-system=/opt/xtensa/registry"]
    assert "-mlsp=sim" in cmd and "/b/bundle/cifar.o" in cmd and cmd[-2:] == ["-o", "firmware.elf"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
def test_cycle_counter_extension_counts_wraps(tmp_path):
    """platform_counter_extend (the SDK's CYCCNT and the HiFi4's CCOUNT) carries a 32-bit wrap into bit 32."""
    program = tmp_path / "counter.c"
    program.write_text('#include <inttypes.h>\n#include <stdio.h>\n#include "platform.h"\nint main(void) {\n'
                       '    platform_counter c = {0};\n'
                       '    const uint32_t reads[] = {5u, 0xFFFFFFF0u, 0x10u, 0x10u, 0x20u, 3u};\n'
                       '    for (unsigned i = 0; i < 6; i++)\n'
                       '        printf("%" PRIu64 "\\n", platform_counter_extend(&c, reads[i]));\n'
                       '    return 0;\n}\n')
    exe = tmp_path / "counter"
    subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", f"-I{app.MCUX_APP}", program, "-o", exe], check=True)
    printed = [int(line) for line in subprocess.run([exe], capture_output=True, text=True, check=True).stdout.split()]
    assert printed == [5, 0xFFFFFFF0, 2**32 + 0x10, 2**32 + 0x10, 2**32 + 0x20, 2 * 2**32 + 3]
