"""Where every artifact lives: one object per build and per board, so dodo.py, the report and the release all
ask the same place instead of each re-deriving paths.

    build/data/        the canonical dataset (arrays, classes.json, manifest.json) and the Glow tool folders
                       images/, dataset-tuning/ (image_folders.json lists their SHA-256)
    build/model/       <name>.pth, metrics.json, training.png, <name>.onnx, export_check.json, test_data_set_0/,
                       teacher/ (the distillation teacher: teacher.pth, metrics.json, training.png, soft_targets.npy)
    build/quant/       profile.yml, profile_tuned.yml, tuning.json, accuracy.json, int8_val_predictions.npy
    build/reports/     one folder per evaluation
    build/<board>/     bundle/, source/, firmware and emulator outputs, vendor builds, skipped/<step>.txt
"""
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.dataset_files import DATASET_ARRAYS

# The vendor flows' ELF of a board, relative to build/<board>/, by step; the SDK flow's images are listed by
# pipeline/firmware/vendor.py (mcux_sdk_targets) and summed up in mcux/mcux_sdk.json.
VENDOR_ELFS = {"zephyr": "zephyr/zephyr/zephyr.elf"}
# Test accuracy per epoch against training wall-clock of the default and an13331 presets, as
# benchmarks/training_recipes.py measured them (committed: the report plots it beside this build's own result).
TRAINING_CURVES = Path("docs") / "training_curves.json"
EVALUATION_FILES = {"hardening": ("hardening.json", "hardening.md", "hardening.png"),
                    "robustness": ("robustness.json", "robustness.md", "robustness.png"),
                    "parity": ("parity.json", "parity.md"),
                    "tflite_parity": ("tflite_parity.json", "tflite_parity.md")}


def emulator_linked(board: dict) -> bool:
    """The emulator has its own memory map ([emulator.memory]), so the firmware is linked a second time for it."""
    return "memory" in board.get("emulator", {})


@dataclass(frozen=True)
class BoardLayout:
    """Files of one board under build/<board>/. `spec` is the board file's data (boards/<board>.toml)."""
    root: Path
    network: str
    backend: str
    spec: dict

    @property
    def board(self) -> str:
        return self.spec["name"]

    @property
    def board_file(self) -> Path:
        return Path("boards") / f"{self.board}.toml"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def source(self) -> Path:
        return self.root / "source"

    def bundle_file(self, suffix: str) -> Path:
        return self.bundle / f"{self.network}{suffix}"

    @property
    def header(self) -> Path:
        return self.bundle_file(".h")

    @property
    def object(self) -> Path:
        return self.bundle_file(".o")

    @property
    def bundle_files(self) -> list[Path]:
        """Header and weights, plus the generated C and the ABI manifest with the built-in backend (Glow writes
        neither)."""
        suffixes = (".h", ".weights.bin", ".weights.txt") + ((".c", ".manifest.json") if self.backend == "builtin"
                                                              else ())
        return [self.bundle_file(suffix) for suffix in suffixes]

    @property
    def image_inc(self) -> Path:
        return self.source / "input_image_test.inc"

    @property
    def main_c(self) -> Path:
        return self.source / "main.c"

    @property
    def emulator_linked(self) -> bool:
        return emulator_linked(self.spec)

    @property
    def firmware(self) -> list[Path]:
        """What the firmware build writes: the board's ELF (and linker script), and the emulator's link."""
        if self.spec["toolchain"] == "xtensa":
            return [self.root / "firmware.elf"]
        files = [self.root / "firmware.elf", self.root / "firmware.ld"]
        if self.emulator_linked:
            files += [self.root / "emulator" / "firmware.elf", self.root / "emulator" / "firmware.ld"]
        return files

    @property
    def emulator_elf(self) -> Path:
        return self.root / ("emulator" if self.emulator_linked else "") / "firmware.elf"

    @property
    def emulator_outputs(self) -> list[Path]:
        return [self.root / "emulator.log", self.root / "emulator.json"]

    @property
    def profiled(self) -> "BoardLayout":
        """The same board built with a bundle that times every kernel call (per-layer instructions)."""
        return BoardLayout(self.root / "layer_profile", self.network, self.backend, self.spec)

    @property
    def layers(self) -> Path:
        """The per-layer rows of the profiled build's test image, for the report."""
        return self.profiled.root / "layers.json"

    @property
    def tflm(self) -> "BoardLayout":
        """The TensorFlow Lite Micro firmware of the same model (pipeline/firmware/tflm.py), laid out like ours."""
        return BoardLayout(self.root / "tflm", self.network, self.backend, self.spec)

    @property
    def tflm_firmware(self) -> list[Path]:
        """What tflm_firmware writes: the generated model header, the TFLM library and the firmware."""
        return [self.tflm.source / "tflm_model.h", self.tflm.root / "libtflm.a", *self.tflm.firmware]

    @property
    def zephyr(self) -> Path:
        return self.root / "zephyr"

    @property
    def mcux(self) -> Path:
        return self.root / "mcux"

    @property
    def mcux_summary(self) -> Path:
        return self.mcux / "mcux_sdk.json"

    @property
    def flash_record(self) -> Path:
        return self.root / "flash.json"

    def skip_record(self, step: str) -> Path:
        return self.root / "skipped" / f"{step}.txt"

    def deliverables(self, skipped_steps) -> list[Path]:
        """What the report and the release read of this board: what its steps made, or their skip records."""
        files = [self.image_inc, *(self.skip_record(step) for step in skipped_steps)]
        if "bundle" in skipped_steps:  # with Glow, a bundle it cannot make here: nothing after it either
            return files
        files += [*self.bundle_files, self.main_c]
        if "mcux_sdk" not in skipped_steps:
            files.append(self.mcux_summary)
        if "bundle_object" not in skipped_steps:
            files.append(self.object)
        if "firmware" not in skipped_steps:
            files.append(self.root / "firmware.elf")
            if "emulate" not in skipped_steps:
                files += self.emulator_outputs
            if "layer_profile" not in skipped_steps:
                files.append(self.layers)
        return files


@dataclass(frozen=True)
class Layout:
    """Files of one build: `build` is the build folder, `network` the network name (project.name)."""
    build: Path
    network: str
    backend: str

    # dataset
    @property
    def data(self) -> Path:
        return self.build / "data"

    @property
    def classes(self) -> Path:
        return self.data / "classes.json"

    @property
    def manifest(self) -> Path:
        """Source, counts and the SHA-256 of every dataset file."""
        return self.data / "manifest.json"

    @property
    def image_folders(self) -> Path:
        """Lists the SHA-256 of images/ and dataset-tuning/, so it stands for them as a dependency."""
        return self.data / "image_folders.json"

    @property
    def dataset(self) -> list[Path]:
        return [*(self.data / f for f in DATASET_ARRAYS), self.classes, self.manifest]

    def split(self, name: str) -> list[Path]:
        """A split's images and labels, and the class names that label them."""
        return [self.data / f"{name}_images.npy", self.data / f"{name}_labels.npy", self.classes]

    # model
    @property
    def model(self) -> Path:
        return self.build / "model"

    @property
    def pth(self) -> Path:
        return self.model / f"{self.network}.pth"

    @property
    def metrics(self) -> Path:
        return self.model / "metrics.json"

    @property
    def training_plot(self) -> Path:
        return self.model / "training.png"

    @property
    def training(self) -> list[Path]:
        return [self.pth, self.metrics, self.training_plot]

    @property
    def teacher(self) -> Path:
        return self.model / "teacher"

    @property
    def soft_targets(self) -> Path:
        return self.teacher / "soft_targets.npy"

    @property
    def teacher_metrics(self) -> Path:
        return self.teacher / "metrics.json"

    @property
    def teacher_files(self) -> list[Path]:
        """The distillation teacher's weights, metrics and curves (as training writes them) and its soft targets."""
        return [self.teacher / "teacher.pth", self.teacher_metrics, self.teacher / "training.png", self.soft_targets]

    @property
    def onnx(self) -> Path:
        return self.model / f"{self.network}.onnx"

    @property
    def test_data(self) -> Path:
        return self.model / "test_data_set_0"

    @property
    def test_data_files(self) -> list[Path]:
        """The model-zoo style check data for onnx_test_runner: one input and the expected output."""
        return [self.test_data / "input_0.pb", self.test_data / "output_0.pb"]

    @property
    def tflite(self) -> Path:
        """The int8 graph as a TensorFlow Lite flatbuffer, with the bundle's scales."""
        return self.model / f"{self.network}_int8.tflite"

    @property
    def export(self) -> list[Path]:
        return [self.onnx, self.model / "export_check.json", *self.test_data_files]

    # quantization
    @property
    def quant(self) -> Path:
        return self.build / "quant"

    @property
    def profile(self) -> Path:
        return self.quant / "profile.yml"

    @property
    def tuned(self) -> Path:
        return self.quant / "profile_tuned.yml"

    @property
    def tuning(self) -> list[Path]:
        return [self.tuned, self.quant / "tuning.json"]

    @property
    def accuracy(self) -> Path:
        return self.quant / "accuracy.json"

    def int8_predictions(self, split: str) -> Path:
        """The deployed int8 bundle's top-1 on a split: val for engine parity, test for the confusion matrix."""
        return self.quant / f"int8_{split}_predictions.npy"

    # evaluations, report, release
    def evaluation(self, kind: str) -> Path:
        return self.build / "reports" / kind

    def evaluation_files(self, kind: str) -> list[Path]:
        return [self.evaluation(kind) / f for f in EVALUATION_FILES[kind]]

    @property
    def report(self) -> list[Path]:
        """The report in words (report.md, first), as one page (report.html), and its plots' folder."""
        return [self.build / "report.md", self.build / "report.html", self.build / "report_figures"]

    def release(self, version: str) -> Path:
        return self.build / "release" / f"{self.network}-{version}.tar.gz"

    def board(self, spec: dict) -> BoardLayout:
        return BoardLayout(self.build / spec["name"], self.network, self.backend, spec)

    def release_files(self, boards: list[BoardLayout], skips: dict[str, dict]) -> dict[str, Path]:
        """{name inside the archive: file} of every deliverable that was built (no logs, no skip records)."""
        files = [*self.training, self.onnx, *self.test_data_files, self.tflite, self.profile, self.tuned,
                 self.accuracy, *self.report[:2]]
        for board in boards:
            files += [f for f in board.deliverables(skips[board.board])
                      if f.parent.name != "skipped" and f.suffix != ".log"]
        return {str(f.relative_to(self.build)): f for f in files}
