"""Per-layer profile build option: the bundle compiled with layer_profile calls the firmware's timing hook after
each kernel; under QEMU the per-layer counts must cover the whole inference measured by the same SysTick, and the
profiled firmware must still answer bit for bit like the host bundle."""
import json
import shutil

import numpy as np
import pytest

from pipeline.core.config import load_board
from pipeline.firmware import emulator, link
from pipeline.int8 import bundle, layer_profile, profile
from pipeline.int8.image_inc import write_image_inc
from tiny_model import export_onnx, synthetic_images, train_tiny_model

pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="needs arm-none-eabi-gcc and qemu-system-arm (apt-get install "
                                       "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
LABELS = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    work = tmp_path_factory.mktemp("model")
    images, labels = synthetic_images(100, seed=5)
    export_onnx(train_tiny_model(images, labels, steps=10), work / "cifar.onnx")
    profile.make_profile(work / "cifar.onnx", images[:10], work / "profile.yml")
    write_image_inc(images[50], work / "input_image_test.inc", "synthetic 50", 0, LABELS[0])
    return work, images


@pytest.mark.parametrize("board_name", ["rt1060", "rt685_m33"])
def test_layer_counts_cover_the_inference_and_answers_stay_bit_exact(model, tmp_path, board_name):
    work, images = model
    board = load_board(board_name)
    bundle.make_bundle(work / "cifar.onnx", work / "profile.yml", board, tmp_path / "bundle", layer_profile=True)
    write_image_inc(images[50], tmp_path / "source" / "input_image_test.inc", "synthetic 50", 0, LABELS[0])
    elfs = link.firmware_stage(board, bundle_dir=tmp_path / "bundle", source_dir=tmp_path / "source",
                               out_dir=tmp_path, network="cifar", labels=LABELS)
    summary = emulator.emulation_stage(board, elf=elfs["emulator_elf"], bundle_dir=tmp_path / "bundle",
                                       image_inc=tmp_path / "source" / "input_image_test.inc", images=images[51:53],
                                       labels=LABELS, out_dir=tmp_path, network="cifar")
    assert summary["check"]["bit_identical"] == 3
    layers = bundle.read_manifest(tmp_path / "bundle")["layers"]
    for image in summary["images"]:
        counts = image["layer_instructions"]
        assert len(counts) == len(layers) and all(c >= 0 for c in counts)
        # the hooks partition the inference: what they miss is the entry hook and the call and return (a few
        # ticks), never a whole layer
        missing = image["instructions"] - sum(counts)
        assert 0 <= missing <= 10 * summary["instructions_per_tick"], (image["instructions"], counts)
        conv = [c for c, layer in zip(counts, layers) if layer["kernel"] == "conv2d_s8"]
        assert min(conv) > max(c for c, layer in zip(counts, layers) if layer["macs"] == 0)


def test_report_section_has_a_table_per_board_and_a_chart(model, tmp_path):
    work, images = model
    dirs = {}
    for name in ("rt1060", "rt685_m33"):
        dirs[name] = tmp_path / name
        layer_profile.profile_stage(load_board(name), onnx_path=work / "cifar.onnx", profile_path=work / "profile.yml",
                                    image_inc=work / "input_image_test.inc", images=images[51:52], labels=LABELS,
                                    out_dir=dirs[name], network="cifar")
    layer_profile.report_stage(dirs, tmp_path / "layers.md", tmp_path / "layers.png", "cifar")
    text = (tmp_path / "layers.md").read_text()
    assert text.count("| # | Kernel |") == 2 and "### rt1060" in text and "### rt685_m33" in text
    summary = json.loads((dirs["rt1060"] / "emulator.json").read_text())
    assert f"**{sum(summary['images'][0]['layer_instructions']):,}**" in text
    assert "`conv2d_s8 + 2x2 max pool`" in text
    assert (tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a plain build has no layer counts: the table is refused with the fix
    with pytest.raises(ValueError, match="layer_profile"):
        layer_profile.layer_rows(bundle.read_manifest(dirs["rt1060"] / "bundle"), {"images": [{}]})


def test_log_layer_lines_belong_to_their_image():
    block = ("Image = {i}\r\nOutput bits = 0x00000000\r\nTop1 class = 0 (a)\r\nConfidence = 1.000\r\n"
             "Confidence bits = 0x3F800000\r\nCycles = 50\r\nInference time = 0 (ms)\r\n")
    log = block.format(i=0) + "Layer 0 cycles = 20\r\nLayer 1 cycles = 30\r\n" + block.format(i=1) + "Done\r\n"
    first, second = emulator.parse_log(log)
    assert first.layer_cycles == [20, 30] and second.layer_cycles == []
    assert np.isclose(first.cycles, sum(first.layer_cycles))
