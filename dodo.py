"""The build graph: dataset -> model -> ONNX -> profiles -> bundles -> firmware -> report, per board.

Run `doit` (or `doit config=configs/smoke.toml`). Each task names its stage function in pipeline/, the files it
reads and writes (all from the layout) and the parameters it passes; `step` derives the rest: the code it
depends on, its config dependency (exactly those parameters), the step cache and skip records.
"""
import os
import sys
from pathlib import Path

from doit import get_var

from pipeline.delivery.run_summary import RunSummaryReporter  # first: its clock includes loading the graph
from pipeline.core import config as configuration
from pipeline.core.layout import EVALUATION_FILES, TRAINING_CURVES, VENDOR_ELFS, Layout
from pipeline.core.tasks import hold_build_lock, skip_reason, stage, step, stop_cleanly_on_interrupt
from pipeline.core.tools import ToolError
from pipeline.firmware.emulator import require_emulator
from pipeline.firmware.link import require_toolchain
from pipeline.firmware.tflm import require_tflm
from pipeline.firmware.vendor import mcux_sdk_targets, require_mcux_sdk, require_zephyr
from pipeline.int8 import glow
from pipeline.int8.bundle import require_compiler
from pipeline.model import dataset, numerics
from pipeline.model.shapes import count_macs

try:
    CONFIG = configuration.load(get_var("config", "pipeline.toml"))
    SOURCE = dataset.resolve_source(CONFIG["dataset"]["source"], configuration.ROOT)
    BACKEND = glow.choose_backend(CONFIG["quantization"]["backend"])
except (configuration.ConfigError, dataset.DatasetError, ToolError) as err:
    sys.exit(f"error: {err}")

LAYOUT = Layout(Path(CONFIG["project"]["build_dir"]), CONFIG["project"]["name"], BACKEND)
NAME, CHANNELS = LAYOUT.network, CONFIG["model"]["channels"]
QUANT, FIRMWARE, EVALUATION = CONFIG["quantization"], CONFIG["firmware"], CONFIG["evaluation"]
BOARDS = [LAYOUT.board(configuration.load_board(board)) for board in FIRMWARE["boards"]]
# Why a step cannot run on this machine, per board (absent: it runs), decided once when the graph is declared.
CHECKS = {**({"bundle": glow.require_bundle_tools} if BACKEND == "glow" else {}),
          "bundle_object": require_compiler, "firmware": require_toolchain, "emulate": require_emulator,
          "zephyr": require_zephyr, "mcux_sdk": require_mcux_sdk, "tflm_firmware": require_tflm}
SKIPS = {board.board: {step_name: reason for step_name, check in CHECKS.items()
                       if (reason := skip_reason(check, board.spec))} for board in BOARDS}
for board_name, skips in SKIPS.items():  # a bundle Glow cannot make here skips every step built on it
    if "bundle" in skips:
        skips.update({step_name: f"bundle:{board_name} {skips['bundle']}"
                      for step_name in ("main_c", "firmware", "emulate", "zephyr", "mcux_sdk")})
    profiling = skips.get("emulate") or skips.get("firmware") or (
        None if BACKEND == "builtin" else "per-layer profiling times the built-in backend's kernels; Glow's bundle "
                                          "has no timing hooks")
    if profiling:
        skips["layer_profile"] = profiling
    if tflm := skips.get("tflm_firmware") or skips.get("firmware") or skips.get("emulate"):
        skips.update(tflm_firmware=tflm, tflm_emulate=tflm)  # the TFLM firmware is sized by running it

hold_build_lock(LAYOUT.build)
stop_cleanly_on_interrupt()
DOIT_CONFIG = {
    "dep_file": str(LAYOUT.build / ".doit.db"),
    "backend": "sqlite3",
    "verbosity": 2,
    "reporter": RunSummaryReporter,
    "default_tasks": ["dataset", "image_folders", "train", "export", "profile", "tune", "accuracy", "bundle",
                      "image_inc", "main_c", "firmware", "emulate", "layer_profile", "zephyr", "mcux_sdk",
                      "int8_predictions", "tflite", *EVALUATION_FILES, "tflm_firmware", "tflm_emulate", "report"],
}


IMAGE_FOLDER_SETTINGS = ("images_per_class", "tuning_per_class")  # of [dataset]: only the image folders read them


def task_dataset():
    """Canonical dataset: train / held-out validation / test arrays (cached)."""
    source_is_file = Path(SOURCE).is_file()
    return step("model.dataset:build_dataset", cached=True, inputs=[SOURCE] if source_is_file else [],
                outputs=LAYOUT.dataset,
                state={"fingerprint": "" if source_is_file else dataset.source_fingerprint(SOURCE)},
                source=SOURCE, out_dir=LAYOUT.data, root=Path("."),
                **{key: value for key, value in CONFIG["dataset"].items()
                   if key not in ("source", *IMAGE_FOLDER_SETTINGS)})


def task_image_folders():
    """The Glow tools' image folders (images/, dataset-tuning/), written from the held-out split."""
    return step("model.dataset:write_image_folders", inputs=LAYOUT.split("val"), outputs=[LAYOUT.image_folders],
                data_dir=LAYOUT.data, listing=LAYOUT.image_folders,
                **{key: CONFIG["dataset"][key] for key in IMAGE_FOLDER_SETTINGS})


def task_teacher():
    """Train the distillation teacher and write its soft targets (cached; run when training.distillation > 0)."""
    teacher, threads = CONFIG["teacher"], CONFIG["training"]["threads"]
    return step("model.distill:teacher", cached=True, inputs=LAYOUT.dataset, outputs=LAYOUT.teacher_files,
                state={"precision_used": numerics.precision_used(teacher["precision"])},
                data_dir=LAYOUT.data, teacher_dir=LAYOUT.teacher, threads=threads,
                **{key: teacher[key] for key in (*configuration.RECIPE_KEYS, "channels", "seed")})


def task_train():
    """Train CifarNet: the .pth state_dict, per-epoch metrics and the training curves (cached)."""
    training = CONFIG["training"]
    init_from = [training["init_from"]] if training["init_from"] else []
    soft_targets = [LAYOUT.soft_targets] if training["distillation"] else []
    return step("model.train:train", cached=True, inputs=LAYOUT.dataset + init_from + soft_targets,
                outputs=LAYOUT.training, state={"precision_used": numerics.precision_used(training["precision"])},
                data_dir=LAYOUT.data, pth=LAYOUT.pth, channels=CHANNELS, soft_targets=(soft_targets or [""])[0],
                **{key: training[key] for key in (*configuration.RECIPE_KEYS, "seed", "threads", "init_from",
                                                  "preset")})


def task_export():
    """Export to ONNX, verified by ONNX Runtime against PyTorch, with model-zoo test data."""
    return step("model.export:export", cached=True, inputs=[LAYOUT.pth, *LAYOUT.split("val")], outputs=LAYOUT.export,
                pth=LAYOUT.pth, out_onnx=LAYOUT.onnx, data_dir=LAYOUT.data, channels=CHANNELS,
                test_data_dir=LAYOUT.test_data, **configuration.stage_settings(CONFIG, "export"))


def task_profile():
    """profile.yml: float ranges of every tensor over the calibration images (Glow's format)."""
    return step("int8.quantize:profile_stage", cached=True, inputs=[LAYOUT.onnx, LAYOUT.classes, LAYOUT.image_folders],
                outputs=[LAYOUT.profile], backend=BACKEND, onnx_path=LAYOUT.onnx, data_dir=LAYOUT.data,
                out_path=LAYOUT.profile, **configuration.stage_settings(CONFIG, "profile"))


def task_tune():
    """profile_tuned.yml: Glow's model-tuner algorithm on the 300 tuning images, checked on held-out images
    (cached)."""
    return step("int8.quantize:tune_stage", cached=True,
                inputs=[LAYOUT.onnx, LAYOUT.profile, LAYOUT.classes, LAYOUT.image_folders], outputs=LAYOUT.tuning,
                backend=BACKEND, onnx_path=LAYOUT.onnx, profile_path=LAYOUT.profile, data_dir=LAYOUT.data,
                out_path=LAYOUT.tuned, **configuration.stage_settings(CONFIG, "tune"))


def task_accuracy():
    """accuracy.json: float vs deployed int8 (host-compiled bundle C) on the test split, untuned and tuned."""
    return step("int8.quantize:accuracy_stage", cached=True, inputs=[LAYOUT.onnx, LAYOUT.profile, LAYOUT.tuned,
                                                        *LAYOUT.split("test")],
                outputs=[LAYOUT.accuracy], onnx_path=LAYOUT.onnx,
                profiles={"untuned": LAYOUT.profile, "tuned": LAYOUT.tuned}, data_dir=LAYOUT.data,
                out_path=LAYOUT.accuracy, network=NAME, **configuration.stage_settings(CONFIG, "accuracy"))


def task_bundle():
    """The int8 bundle per board: <name>.h/.c/.weights.bin/.weights.txt and <name>.o for the board's core."""
    for board in BOARDS:
        skips = SKIPS[board.board]
        if "bundle" in skips:
            yield step("int8.quantize:bundle_stage", subtask=board.board, skip=skips["bundle"],
                       record=board.skip_record("bundle"))
            continue
        # Without the board's compiler the sources, header and weights are still built; only the object waits.
        reason = skips.get("bundle_object")
        yield step("int8.quantize:bundle_stage", subtask=board.board, skip=reason, skip_part=True,
                   record=board.skip_record("bundle_object"), inputs=[LAYOUT.onnx, LAYOUT.tuned, board.board_file],
                   outputs=board.bundle_files + ([] if reason else [board.object]), backend=BACKEND,
                   onnx_path=LAYOUT.onnx, profile_path=LAYOUT.tuned, board=board.spec, out_dir=board.bundle,
                   network=NAME)


def task_image_inc():
    """input_image_test.inc: the chosen test image as the firmware's float input bytes."""
    for board in BOARDS:
        yield step("int8.image_inc:image_inc_stage", subtask=board.board, inputs=LAYOUT.split("test"),
                   outputs=[board.image_inc], data_dir=LAYOUT.data, out_path=board.image_inc,
                   class_name=QUANT["test_image_class"], index=QUANT["test_image_index"])


def task_main_c():
    """main.c rendered from mcux_app/main.c.j2: the app note's patched SDK example, done by the graph."""
    for board in BOARDS:
        yield step("firmware.app:main_c_stage", subtask=board.board, skip=SKIPS[board.board].get("main_c"),
                   record=board.skip_record("main_c"), outputs=[board.main_c],
                   inputs=[*board.bundle_files, board.image_inc, LAYOUT.classes, board.board_file],
                   board=board.spec, data_dir=LAYOUT.data, bundle_dir=board.bundle, source_dir=board.source,
                   network=NAME, hardening=FIRMWARE["hardening"].get(board.board))


def task_firmware():
    """The firmware ELF: bare-metal RAM build with a semihosting console (Arm), or xt-clang (HiFi4)."""
    for board in BOARDS:
        yield step("firmware.link:build_firmware", subtask=board.board,
                   skip=SKIPS[board.board].get("firmware"), record=board.skip_record("firmware"),
                   inputs=[board.main_c, board.image_inc, board.object, board.board_file, *board.bundle_files],
                   outputs=board.firmware, board=board.spec, main_c=board.main_c, bundle_dir=board.bundle,
                   network=NAME, out_dir=board.root, hardening=bool(FIRMWARE["hardening"].get(board.board)))


def task_emulate():
    """Run the firmware under QEMU (-icount): instructions per inference, checked against the host bundle (for a
    Glow bundle, which has no C: against the built-in bundle of the same model and profile)."""
    glow_reference = {"onnx_path": LAYOUT.onnx, "profile_path": LAYOUT.tuned} if BACKEND == "glow" else {}
    for board in BOARDS:
        skips = SKIPS[board.board]
        yield step("firmware.emulator:emulate_stage", subtask=board.board,
                   skip=skips.get("emulate") or skips.get("firmware"), record=board.skip_record("emulate"),
                   inputs=[board.emulator_elf, board.image_inc, board.object, *board.bundle_files,
                           *LAYOUT.split("test"), *glow_reference.values()],
                   outputs=board.emulator_outputs, board=board.spec, data_dir=LAYOUT.data,
                   count=FIRMWARE["emulator_images"], elf=board.emulator_elf, bundle_dir=board.bundle,
                   image_inc=board.image_inc, out_dir=board.root, network=NAME, timeout=FIRMWARE["emulator_timeout"],
                   hardening=FIRMWARE["hardening"].get(board.board), **glow_reference)


def task_layer_profile():
    """Instructions per layer: the firmware rebuilt with a bundle that times every kernel call, run under QEMU."""
    for board in BOARDS:
        profiled = board.profiled
        yield step("int8.layer_profile:layer_profile_stage", subtask=board.board,
                   skip=SKIPS[board.board].get("layer_profile"), record=board.skip_record("layer_profile"),
                   inputs=[LAYOUT.onnx, LAYOUT.tuned, board.image_inc, board.board_file, *LAYOUT.split("test")],
                   outputs=[*profiled.bundle_files, profiled.object, profiled.image_inc, profiled.main_c,
                            *profiled.firmware, *profiled.emulator_outputs, board.layers],
                   board=board.spec, onnx_path=LAYOUT.onnx, profile_path=LAYOUT.tuned, data_dir=LAYOUT.data,
                   image_inc=board.image_inc, out_dir=profiled.root, network=NAME,
                   timeout=FIRMWARE["emulator_timeout"])


def vendor_step(function: str, board, outputs: list, **params) -> dict:
    """zephyr:<board> or mcux_sdk:<board>: the same app built by a vendor flow when the user has its tree."""
    step_name = "zephyr" if function == "zephyr_build" else "mcux_sdk"
    return step(f"firmware.vendor:{function}", subtask=board.board, skip=SKIPS[board.board].get(step_name),
                record=board.skip_record(step_name), outputs=outputs,
                inputs=[board.main_c, board.image_inc, board.object, board.board_file, *board.bundle_files],
                state={"trees": [os.environ.get(v) for v in ("ZEPHYR_BASE", "MCUX_SDK_ROOT", "CMSIS_ROOT")]},
                board=board.spec, source_dir=board.source, bundle_dir=board.bundle, network=NAME,
                hardening=bool(FIRMWARE["hardening"].get(board.board)), **params)


def task_zephyr():
    """West build of zephyr_app/ for the board's Zephyr target (needs ZEPHYR_BASE)."""
    for board in BOARDS:
        yield vendor_step("zephyr_build", board, [board.root / VENDOR_ELFS["zephyr"]], build_dir=board.zephyr)


def task_mcux_sdk():
    """MCUXpresso SDK armgcc builds of the same app, RAM and flash (XIP) images (needs MCUX_SDK_ROOT)."""
    for board in BOARDS:
        images = [] if "mcux_sdk" in SKIPS[board.board] else mcux_sdk_targets(board.spec, board.mcux)
        yield vendor_step("mcux_sdk_build", board, images, out_dir=board.mcux)


def task_flash():
    """Program the board's SDK flash image into the EVK through a debug probe (pyOCD or LinkServer); skipped with
    the reason when there is none. Not a default task: it acts on hardware, so it runs whenever asked."""
    for board in BOARDS:
        reason = SKIPS[board.board].get("mcux_sdk")
        yield {**step("firmware.flashing:flash_stage", subtask=board.board, record=board.skip_record("flash"),
                      skip=reason and f"mcux_sdk:{board.board} {reason}", outputs=[board.flash_record],
                      inputs=[] if reason else mcux_sdk_targets(board.spec, board.mcux), board=board.spec,
                      mcux_dir=board.mcux, out_path=board.flash_record), "uptodate": [False]}


def task_int8_predictions():
    """The int8 bundle's top-1 on the validation images of engine parity (val) and on the test images of
    accuracy.json (test, for the report's confusion matrix)."""
    for split, count in (("val", EVALUATION["parity_images"]), ("test", QUANT["eval_images"])):
        yield step("int8.quantize:int8_predictions_stage", cached=True, subtask=split,
                   inputs=[LAYOUT.onnx, LAYOUT.tuned, *LAYOUT.split(split)], outputs=[LAYOUT.int8_predictions(split)],
                   onnx_path=LAYOUT.onnx, profile_path=LAYOUT.tuned, data_dir=LAYOUT.data, split=split,
                   max_images=count, out_path=LAYOUT.int8_predictions(split), network=NAME)


def task_hardening():
    """Confidence hardening (round / noise / pseudo_noise_sin) evaluated on the test split, with a plot."""
    return step("evaluations.hardening:run_stage", cached=True, inputs=[LAYOUT.pth, *LAYOUT.split("test")],
                outputs=LAYOUT.evaluation_files("hardening"), pth_path=LAYOUT.pth, channels=CHANNELS,
                data_dir=LAYOUT.data, out_dir=LAYOUT.evaluation("hardening"), options=EVALUATION["hardening_options"])


def task_robustness():
    """Input-transformation voting, clean and under FGSM, with a plot."""
    return step("evaluations.robustness:run_stage", cached=True, inputs=[LAYOUT.pth, *LAYOUT.split("test")],
                outputs=LAYOUT.evaluation_files("robustness"), pth_path=LAYOUT.pth, channels=CHANNELS,
                data_dir=LAYOUT.data, out_dir=LAYOUT.evaluation("robustness"),
                transforms=EVALUATION["robustness_transforms"], epsilons=EVALUATION["fgsm_epsilons"],
                max_images=EVALUATION["robustness_images"])


def task_parity():
    """PyTorch vs ONNX Runtime vs OpenCV DNN on the validation images, and the int8 bundle against each."""
    return step("evaluations.parity:run_stage", cached=True,
                inputs=[LAYOUT.pth, LAYOUT.onnx, LAYOUT.int8_predictions("val"), *LAYOUT.split("val")],
                outputs=LAYOUT.evaluation_files("parity"), pth_path=LAYOUT.pth, channels=CHANNELS,
                onnx_path=LAYOUT.onnx, data_dir=LAYOUT.data, out_dir=LAYOUT.evaluation("parity"),
                max_images=EVALUATION["parity_images"], int8_predictions_path=LAYOUT.int8_predictions("val"))


def task_tflite():
    """build/model/<name>_int8.tflite: the deployed int8 graph (tuned profile) with the bundle's power-of-two
    scales, int8 weights and int32 biases, as a TensorFlow Lite flatbuffer."""
    return step("int8.tflite:tflite_stage", inputs=[LAYOUT.onnx, LAYOUT.tuned], outputs=[LAYOUT.tflite],
                onnx_path=LAYOUT.onnx, profile_path=LAYOUT.tuned, out_path=LAYOUT.tflite,
                io_type=CONFIG["tflite"]["io_type"])


def task_tflite_parity():
    """The .tflite in LiteRT and TFLite Micro against the NumPy int8 reference and the host bundle on the test
    split, TFLite Micro's arena, and why the runtimes differ (requantization rounding)."""
    return step("evaluations.tflite_parity:run_stage", cached=True,
                inputs=[LAYOUT.onnx, LAYOUT.tuned, LAYOUT.tflite, *LAYOUT.split("test")],
                outputs=LAYOUT.evaluation_files("tflite_parity"), onnx_path=LAYOUT.onnx, profile_path=LAYOUT.tuned,
                tflite_path=LAYOUT.tflite, data_dir=LAYOUT.data, out_dir=LAYOUT.evaluation("tflite_parity"),
                network=NAME, max_images=CONFIG["tflite"]["parity_images"])


def task_tflm_firmware():
    """The same .tflite run by TensorFlow Lite Micro with CMSIS-NN kernels, built like our firmware (needs
    TFLM_ROOT: a TFLM tree)."""
    for board in BOARDS:
        yield step("firmware.tflm:build_tflm_firmware", subtask=board.board,
                   skip=SKIPS[board.board].get("tflm_firmware"), record=board.skip_record("tflm_firmware"),
                   inputs=[LAYOUT.tflite, board.image_inc, LAYOUT.classes, board.board_file],
                   outputs=board.tflm_firmware, state={"tree": os.environ.get("TFLM_ROOT")}, board=board.spec,
                   tflite_path=LAYOUT.tflite, image_inc=board.image_inc, classes_file=LAYOUT.classes,
                   out_dir=board.tflm.root, network=NAME, timeout=FIRMWARE["emulator_timeout"])


def task_tflm_emulate():
    """The TFLite Micro firmware under QEMU: instructions per inference beside ours, outputs checked against TFLite
    Micro's host interpreter."""
    for board in BOARDS:
        yield step("firmware.tflm:tflm_emulate_stage", subtask=board.board,
                   skip=SKIPS[board.board].get("tflm_emulate"), record=board.skip_record("tflm_emulate"),
                   inputs=[board.tflm.emulator_elf, LAYOUT.tflite, board.image_inc, *LAYOUT.split("test")],
                   outputs=board.tflm.emulator_outputs, board=board.spec, elf=board.tflm.emulator_elf,
                   tflite_path=LAYOUT.tflite, image_inc=board.image_inc, data_dir=LAYOUT.data,
                   count=FIRMWARE["emulator_images"], out_dir=board.tflm.root, timeout=FIRMWARE["emulator_timeout"])


def task_report():
    """build/report.html and report.md: summary, model, per board (app note's table, memory map, instructions),
    evaluations, provenance."""
    evaluations = {kind: dict(zip(("summary", "markdown", "figure"), LAYOUT.evaluation_files(kind)))
                   for kind in EVALUATION_FILES}
    vendor_files = [board.root / elf for board in BOARDS for step_name, elf in VENDOR_ELFS.items()
                    if step_name not in SKIPS[board.board]]
    tflm_files = [f for board in BOARDS if "tflm_emulate" not in SKIPS[board.board]
                  for f in (board.tflm.firmware[0], board.tflm.emulator_outputs[1])]
    named = {"accuracy_file": LAYOUT.accuracy, "metrics_file": LAYOUT.metrics, "training_figure": LAYOUT.training_plot,
             "test_labels": LAYOUT.split("test")[1], "classes_file": LAYOUT.classes,
             "int8_test_predictions": LAYOUT.int8_predictions("test"), "training_curves_file": TRAINING_CURVES,
             **({"teacher_metrics_file": LAYOUT.teacher_metrics} if CONFIG["training"]["distillation"] else {})}
    board_files = [f for board in BOARDS for f in board.deliverables(SKIPS[board.board])]
    return step("delivery.report:report_stage",
                inputs=[*board_files, *vendor_files, *tflm_files, *named.values(),
                        *(f for files in evaluations.values() for f in files.values())],
                outputs=LAYOUT.report, layout=LAYOUT, boards=[board.spec for board in BOARDS],
                macs=count_macs(tuple(CHANNELS)), eval_images=QUANT["eval_images"], evaluations=evaluations,
                config=CONFIG, repo_dir=Path("."),
                skipped={board: sorted(skips) for board, skips in SKIPS.items()}, **named)


def task_release():
    """build/release/<name>-<version>.tar.gz: every deliverable plus MANIFEST.json (digests, config, tools)."""
    files = LAYOUT.release_files(BOARDS, SKIPS)
    archive = LAYOUT.release(CONFIG["project"]["version"])
    return step("delivery.release:make_release", inputs=sorted(files.values()), outputs=[archive], files=files,
                out_path=archive, name=NAME, version=CONFIG["project"]["version"], config=CONFIG, repo_dir=Path("."),
                skipped={f"{step_name}:{board}": reason for board, steps in SKIPS.items()
                         for step_name, reason in steps.items()})


def task_verify_release():
    """Re-hash the release archive against its MANIFEST.json; fails naming any file that differs."""
    archive = LAYOUT.release(CONFIG["project"]["version"])
    return {"actions": [stage("delivery.release:verify_release_stage", path=archive)], "file_dep": [str(archive)],
            "uptodate": [False]}


def task_cache_key():
    """Print the keys this tree and config give the cached steps (once their inputs are built) and the entries
    in the step cache (PIPELINE_CACHE_DIR), for keying a CI cache."""
    return {"actions": [stage("core.cache:print_keys", actions=task_train()["actions"] + task_tune()["actions"])],
            "uptodate": [False], "verbosity": 2}
