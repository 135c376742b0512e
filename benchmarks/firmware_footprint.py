"""Footprint and speed of the firmware, against the app note: flash and SRAM of each Arm board's ELF (from
arm-none-eabi-size) beside AN13331's RT1060 figures, and the instructions one inference executes under QEMU
(-icount, exact to one SysTick tick), per MAC of the whole network; then, from a second build with the bundle's
per-layer timing (layer_profile), the instructions, MACs and instructions per MAC of every kernel call.

Uses the pipeline's model and tuned profile (build/model/cifar.onnx, build/quant/profile_tuned.yml) when they
exist, else a seeded untrained CifarNet calibrated on random images: the int8 kernels do the same work for any
weights, so footprint and instruction counts hold either way (only the answers differ).

    python benchmarks/firmware_footprint.py [--onnx FILE --profile FILE] [--boards rt1060 rt685_m33]
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.firmware import emulator, link  # noqa: E402
from pipeline.int8 import bundle, layer_profile, profile  # noqa: E402
from pipeline.core.config import load_board  # noqa: E402
from pipeline.int8.image_inc import write_image_inc  # noqa: E402
from pipeline.model.network import CifarNet  # noqa: E402
from pipeline.model.shapes import INPUT_SHAPE, count_macs  # noqa: E402
from pipeline.delivery.report import APP_NOTE  # noqa: E402

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TARGET_INSTRUCTIONS_PER_MAC = 1.10  # issue 14's goal on both Arm cores (stretch: 1.0)


def stand_in_model(work: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    onnx_path, profile_path = work / "cifar.onnx", work / "profile.yml"
    torch.onnx.export(CifarNet().eval(), torch.zeros(INPUT_SHAPE), str(onnx_path), input_names=["input"],
                      output_names=["output"], opset_version=13, dynamo=False)
    images = np.random.default_rng(0).integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    profile.make_profile(onnx_path, images, profile_path)
    return onnx_path, profile_path


def measure(board_name: str, onnx_path: Path, profile_path: Path, work: Path, layer_profile: bool = False) -> dict:
    board, out = load_board(board_name), work / board_name / ("layers" if layer_profile else "plain")
    bundle.make_bundle(onnx_path, profile_path, board, out / "bundle", layer_profile=layer_profile)
    images = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    write_image_inc(images[0], out / "source" / "input_image_test.inc", "random 0", 0, LABELS[0])
    elfs = link.firmware_stage(board, bundle_dir=out / "bundle", source_dir=out / "source", out_dir=out,
                                   network="cifar", labels=LABELS)
    summary = emulator.emulation_stage(board, elf=elfs["emulator_elf"], bundle_dir=out / "bundle",
                                       image_inc=out / "source" / "input_image_test.inc", images=images[1:],
                                       labels=LABELS, out_dir=out, network="cifar")
    return {"size": link.firmware_size(board, elfs["elf"]), "summary": summary, "board": board,
            "manifest": bundle.read_manifest(out / "bundle")}


def print_layers(result: dict) -> None:
    """The per-layer table of a layer_profile build (each layer includes one call of the timing hook)."""
    print("  per layer (layer_profile build, first image):")
    print(layer_profile.markdown_table(layer_profile.layer_rows(result["manifest"], result["summary"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=ROOT / "build" / "model" / "cifar.onnx")
    parser.add_argument("--profile", type=Path, default=ROOT / "build" / "quant" / "profile_tuned.yml")
    parser.add_argument("--boards", nargs="+", default=["rt1060", "rt685_m33"])
    args = parser.parse_args()
    macs = count_macs()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.onnx.is_file() and args.profile.is_file():
            onnx_path, profile_path, origin = args.onnx, args.profile, f"{args.onnx} + {args.profile}"
        else:
            onnx_path, profile_path = stand_in_model(work)
            origin = "seeded untrained CifarNet (no build/model/cifar.onnx + build/quant/profile_tuned.yml yet)"
        print(f"model: {origin}; {macs:,} MACs per inference")
        for name in args.boards:
            result = measure(name, onnx_path, profile_path, work)
            size, summary, board = result["size"], result["summary"], result["board"]
            note = APP_NOTE.get(name, {})
            instructions = summary["instructions_per_inference"]
            print(f"\n{board['description']} ({name}), run on {summary['machine']}")
            for key, label in (("flash", "flash (text+data)"), ("sram", "SRAM (data+bss incl. stack)")):
                verdict = (f"  AN13331: {note[key]:,} B -> {'below' if size[key] < note[key] else 'ABOVE'}"
                           if key in note else "")
                print(f"  {label:28s} {size[key]:>9,} B{verdict}")
            print(f"  {'text / data / bss':28s} {size['text']:,} / {size['data']:,} / {size['bss']:,} B")
            print(f"  {'instructions / inference':28s} {instructions:>9,}")
            per_mac = instructions / macs
            print(f"  {'instructions / MAC':28s} {per_mac:>9.3f}  (aim <= {TARGET_INSTRUCTIONS_PER_MAC}: "
                  f"{'met' if per_mac <= TARGET_INSTRUCTIONS_PER_MAC else 'NOT met'})")
            print(f"  {'bit-identical to host':28s} {summary['check']['bit_identical']}/{summary['check']['images']}")
            print_layers(measure(name, onnx_path, profile_path, work, layer_profile=True))


if __name__ == "__main__":
    main()
