"""Run the firmware under QEMU and check its answers against the host-compiled bundle.

Instruction counts: QEMU runs with -icount shift=0, so each guest instruction advances virtual time by 1 ns and
the emulated SysTick (clocked at [emulator] cpu_clock_hz) ticks once every 1e9 / cpu_clock_hz instructions.
The firmware prints the SysTick cycles of each inference; times that factor is the instructions it executed,
exact to one tick and identical on every run.
"""
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.atomic import write_bytes, write_text
from pipeline.core.tools import Skipped, ToolError, find_tool
from pipeline.evaluations import hardening as hardening_c
from pipeline.firmware.app import read_image_inc
from pipeline.int8.bundle import generate_sources, host_outputs
from pipeline.model.evaluation import softmax
from pipeline.model.shapes import to_input

ICOUNT_SHIFT = 0


# A Glow bundle is checked against the built-in backend's bundle of the same ONNX model and profile: both
# quantize with Glow's schema from the same ranges, but Glow's kernels (and its graph lowering) round differently,
# so outputs are not bit-identical; top-1 must be equal and the confidence within this much.
GLOW_CONFIDENCE_TOLERANCE = 0.05
BUILT_IN_TOLERANCE = 1e-3  # the firmware runs the very C of the host reference: only float printing differs


QEMU_HINT = "install QEMU (Debian: apt-get install qemu-system-arm, or run make bootstrap)"


class FirmwareError(RuntimeError):
    """The firmware failed to build, hung, crashed or gave answers that differ from the host reference."""


def require_emulator(board: dict) -> None:
    if "emulator" not in board:
        raise Skipped(f"board {board['name']} has no [emulator] in boards/{board['name']}.toml (no emulator "
                      f"runs its core)")
    if find_tool("qemu-system-arm", "QEMU_BIN") is None:
        raise ToolError(f"qemu-system-arm not found on PATH (or set QEMU_BIN to its folder); {QEMU_HINT}")


@dataclass
class ImageResult:
    image: int
    output_bits: list[int]
    top1: int
    label: str
    confidence: float
    confidence_bits: int
    cycles: int
    ms: int
    layer_cycles: list[int]  # per kernel call, when the bundle was built with layer_profile

    @property
    def outputs(self) -> np.ndarray:
        return np.array(self.output_bits, dtype=np.uint32).view(np.float32)

    @property
    def confidence_value(self) -> float:
        return float(np.array([self.confidence_bits], dtype=np.uint32).view(np.float32)[0])
_IMAGE_BLOCK = re.compile(
    r"Image = (?P<image>\d+)\r?\n"
    r"Output bits =(?P<bits>(?: 0x[0-9A-F]{8})+)\r?\n"
    r"Top1 class = (?P<top1>\d+) \((?P<label>[^)\r\n]*)\)\r?\n"
    r"Confidence = (?P<confidence>\d\.\d{3})\r?\n"
    r"Confidence bits = (?P<confidence_bits>0x[0-9A-F]{8})\r?\n"
    r"Cycles = (?P<cycles>\d+)\r?\n"
    r"Inference time = (?P<ms>\d+) \(ms\)")


_LAYER_LINE = re.compile(r"^Layer (\d+) cycles = (\d+)\r?$", re.MULTILINE)


def parse_log(text: str) -> list[ImageResult]:
    """Every per-image block the firmware printed, in order, with the "Layer k cycles = n" lines that follow it."""
    blocks = list(_IMAGE_BLOCK.finditer(text))
    ends = [b.start() for b in blocks[1:]] + [len(text)]
    return [ImageResult(image=int(m["image"]), output_bits=[int(b, 16) for b in m["bits"].split()],
                        top1=int(m["top1"]), label=m["label"], confidence=float(m["confidence"]),
                        confidence_bits=int(m["confidence_bits"], 16), cycles=int(m["cycles"]), ms=int(m["ms"]),
                        layer_cycles=[int(c) for _, c in _LAYER_LINE.findall(text, m.end(), end)])
            for m, end in zip(blocks, ends)]


def instructions_per_tick(board: dict) -> float:
    """Guest instructions per emulated SysTick cycle under -icount shift=ICOUNT_SHIFT (1 ns per instruction)."""
    return 1e9 / (2 ** ICOUNT_SHIFT) / board["emulator"]["cpu_clock_hz"]


def emulator_command(board: dict, elf, images_file_name: str | None = None) -> list[str]:
    """The qemu-system-arm command that runs `elf` with a semihosting console (QEMU prints it on stderr) and,
    optionally, an extra images file named relative to the run folder."""
    qemu = find_tool("qemu-system-arm", "QEMU_BIN") or "qemu-system-arm"
    semihosting = "enable=on,target=native,arg=firmware" + (f",arg={images_file_name}" if images_file_name else "")
    return [qemu, "-M", board["emulator"]["machine"], "-nographic", "-monitor", "none", "-serial", "none",
            "-icount", f"shift={ICOUNT_SHIFT}", "-semihosting-config", semihosting, "-kernel", str(elf)]


def write_images_file(path, inputs) -> Path:
    """Extra input tensors for the firmware, one input placeholder after another: float32 little-endian, or
    int8 as they are (a model with an int8 input)."""
    inputs = np.asarray(inputs)
    write_bytes(path, np.ascontiguousarray(inputs, dtype=np.int8 if inputs.dtype == np.int8 else "<f4").tobytes())
    return Path(path)


def run_emulator(board: dict, elf, images_file=None, timeout: float = 120.0) -> tuple[str, list[ImageResult]]:
    """Run the firmware under QEMU; return its console log and per-image results.

    Raises FirmwareError when it runs longer than `timeout` seconds (a hang), exits non-zero (a fault prints
    which exception) or does not finish with "Done"."""
    require_emulator(board)
    elf = Path(elf).resolve()
    images_file = Path(images_file).resolve() if images_file else None
    cmd = emulator_command(board, elf, images_file.name if images_file else None)
    try:
        done = subprocess.run(cmd, cwd=images_file.parent if images_file else elf.parent,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        partial = (err.stdout or b"").decode("utf-8", "replace")
        raise FirmwareError(f"{elf}: still running after {timeout:g} s under {board['emulator']['machine']} (hung?); "
                            f"raise firmware.emulator_timeout if it is just slow. Output so far:\n"
                            f"{_tail(partial)}") from None
    log = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0 or not re.search(r"^Done\r?$", log, re.MULTILINE):
        raise FirmwareError(f"{elf}: failed under {board['emulator']['machine']} (exit {done.returncode}). "
                            f"Command: {' '.join(cmd)}\nOutput:\n{_tail(log)}")
    return log, parse_log(log)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


def compare_with_reference(results: list[ImageResult], reference_logits, labels, tolerance: float = 1e-3,
                           hardening: dict | None = None) -> dict:
    """Check the firmware against the host-compiled bundle on the same inputs (with `hardening`, the option
    main.c was rendered with, applied to the reference's softmax as the firmware does).

    Raises FirmwareError naming each image whose top-1 class differs or whose confidence differs by more than
    `tolerance`. Returns {"images", "top1_equal", "bit_identical": count of images whose raw outputs match the
    host's bit for bit, "max_confidence_difference"}."""
    reference_logits = np.asarray(reference_logits, dtype=np.float32)
    if len(results) != len(reference_logits):
        raise FirmwareError(f"firmware reported {len(results)} images but the host reference has "
                            f"{len(reference_logits)}; the images file and the reference must match")
    problems, bit_identical, worst = [], 0, 0.0
    probabilities = softmax(reference_logits)
    if hardening:
        probabilities = hardening_c.harden(probabilities, hardening)
    for result, logits, probs in zip(results, reference_logits, probabilities):
        expected_top1 = int(np.argmax(probs))
        difference = abs(result.confidence_value - float(probs[result.top1]))
        worst = max(worst, difference)
        if result.top1 != expected_top1:
            problems.append(f"image {result.image}: firmware top-1 is {result.top1} ({result.label}) but the host "
                            f"bundle gives {expected_top1} ({labels[expected_top1]})")
        elif difference > tolerance:
            problems.append(f"image {result.image}: firmware confidence {result.confidence_value:.6f} differs from "
                            f"the host bundle's {float(probs[expected_top1]):.6f} by more than {tolerance:g}")
        bit_identical += int(np.array_equal(result.outputs.view(np.uint32), logits.view(np.uint32)))
    if problems:
        raise FirmwareError("firmware disagrees with the host-compiled bundle:\n" + "\n".join(problems))
    return {"images": len(results), "top1_equal": len(results), "bit_identical": bit_identical,
            "max_confidence_difference": worst}


def emulate_and_check(board: dict, elf, inputs, reference_logits, labels, out_dir, timeout: float = 120.0,
                      hardening: dict | None = None, reference: str = "host-compiled bundle C",
                      tolerance: float = BUILT_IN_TOLERANCE, log_summary=None) -> dict:
    """Run the firmware under emulation on its built-in test image followed by inputs[1:] (float32 input tensors;
    inputs[0] must be the built-in image), check every answer against reference_logits (host bundle, same
    inputs; `reference` says which, `tolerance` bounds the confidence difference), and write
    out_dir/emulator.log and out_dir/emulator.json. `log_summary(log)` adds entries of its own to the summary.
    Returns the summary."""
    out_dir = Path(out_dir)
    images_file = write_images_file(out_dir / "emulator_images.bin", np.asarray(inputs)[1:]) if len(inputs) > 1 \
        else None
    log, results = run_emulator(board, elf, images_file, timeout)
    write_text(out_dir / "emulator.log", log)
    summary = {
        "machine": board["emulator"]["machine"],
        "icount_shift": ICOUNT_SHIFT,
        "instructions_per_tick": instructions_per_tick(board),
        "images": [{"image": r.image, "top1": r.top1, "label": r.label, "confidence": r.confidence_value,
                    "cycles": r.cycles, "instructions": round(r.cycles * instructions_per_tick(board)),
                    **({"layer_instructions": [round(c * instructions_per_tick(board)) for c in r.layer_cycles]}
                       if r.layer_cycles else {})}
                   for r in results],
    }
    summary["check"] = {**compare_with_reference(results, reference_logits, labels, tolerance=tolerance,
                                                 hardening=hardening),
                        "reference": reference, "confidence_tolerance": tolerance}
    summary["instructions_per_inference"] = summary["images"][0]["instructions"]
    summary.update(log_summary(log) if log_summary else {})
    write_text(out_dir / "emulator.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def reference_outputs(bundle_dir, inputs, work_dir, network: str, onnx_path=None, profile_path=None) -> tuple:
    """(logits, what they come from, confidence tolerance) for checking the firmware on `inputs`: the bundle's own
    C compiled for this machine when it has one (the built-in backend: the same code as the firmware), else (a Glow
    bundle ships an object and no C) the built-in backend's bundle of the same ONNX model and profile."""
    bundle_dir, work_dir = Path(bundle_dir), Path(work_dir)
    if (bundle_dir / f"{network}.c").is_file():
        return host_outputs(bundle_dir, inputs, work_dir, network), "host-compiled bundle C", BUILT_IN_TOLERANCE
    if onnx_path is None or profile_path is None:
        raise FirmwareError(f"{bundle_dir} has no {network}.c (a Glow bundle): checking its firmware needs the ONNX "
                            "model and the profile it was compiled with (onnx_path, profile_path)")
    built_in = work_dir / "built-in bundle"
    built_in.mkdir(parents=True, exist_ok=True)
    for name, data in generate_sources(onnx_path, profile_path, network).items():
        (built_in / name).write_bytes(data)
    source = f"built-in int8 bundle of the same model and profile ({Path(profile_path).name})"
    return host_outputs(built_in, inputs, work_dir, network), source, GLOW_CONFIDENCE_TOLERANCE


def emulate_stage(board: dict, *, data_dir, count: int, elf, bundle_dir, image_inc, out_dir, network: str,
                  timeout: float, hardening: dict | None = None, onnx_path=None, profile_path=None) -> dict:
    """emulation_stage on the built-in test image and the first `count - 1` test images (one per class first)."""
    from pipeline.model.dataset import load_classes, load_split
    from pipeline.model.evaluation import balanced_subset

    images, labels = load_split(data_dir, "test")
    keep = balanced_subset(labels, count - 1) if count > 1 else np.array([], dtype=int)
    emulation_stage(board, elf=elf, bundle_dir=bundle_dir, image_inc=image_inc, images=images[keep],
                    labels=load_classes(data_dir), out_dir=out_dir, network=network, timeout=timeout,
                    hardening=hardening, onnx_path=onnx_path, profile_path=profile_path)


def emulation_stage(board: dict, *, elf, bundle_dir, image_inc, images, labels, out_dir, network: str,
                    timeout: float = 120.0, hardening: dict | None = None, onnx_path=None, profile_path=None) -> dict:
    """Run the firmware under emulation on its built-in test image (image_inc) and then `images` (uint8 NHWC,
    e.g. the first few test images), against the host reference of reference_outputs on the same inputs.
    Writes out_dir/emulator.log and out_dir/emulator.json; raises FirmwareError on a hang, crash or a wrong
    answer, ToolError when QEMU is missing, Skipped when the board has no emulator."""
    require_emulator(board)
    inputs = np.concatenate([read_image_inc(image_inc)[None], to_input(images).reshape(len(images), -1)])
    with tempfile.TemporaryDirectory() as work:
        reference, source, tolerance = reference_outputs(bundle_dir, inputs, work, network, onnx_path, profile_path)
    return emulate_and_check(board, elf, inputs, reference, labels, out_dir, timeout=timeout, hardening=hardening,
                             reference=source, tolerance=tolerance)
