"""The build graph: dataset -> model -> ONNX -> profiles -> bundles -> firmware -> report, per board.

Run `doit` (or `doit config=configs/smoke.toml`). Every stage is a function in pipeline/; this file only
declares what each task reads (file_dep, config keys, its own code) and what it writes (targets).
"""
import sys
from pathlib import Path

from doit import get_var

from pipeline.core import config as configuration
from pipeline.model import dataset
from pipeline.int8 import glow
from pipeline.int8.bundle import require_compiler
from pipeline.core.cache import cached_action
from pipeline.core.config import subset
from pipeline.firmware.emulator import require_emulator
from pipeline.firmware.link import firmware_targets, needs_emulator_link, require_toolchain
from pipeline.firmware.vendor import require_mcux_sdk, require_zephyr
from pipeline.core.tasks import (code, hold_build_lock, keys, runnable, skip_reason, skipped_task, stage,
                            stop_cleanly_on_interrupt)
from pipeline.model.shapes import count_macs
from pipeline.core.tools import ToolError
from pipeline.delivery.run_summary import RunSummaryReporter

try:
    CONFIG = configuration.load(get_var("config", "pipeline.toml"))
    SOURCE = dataset.resolve_source(CONFIG["dataset"]["source"], configuration.ROOT)
    BACKEND = glow.choose_backend(CONFIG["quantization"]["backend"])
except (configuration.ConfigError, dataset.DatasetError, ToolError) as err:
    sys.exit(f"error: {err}")

BUILD = Path(CONFIG["project"]["build_dir"])
NAME = CONFIG["project"]["name"]
QUANT, HARDENING = CONFIG["quantization"], CONFIG["firmware"]["hardening"]
BOARDS = {name: configuration.load_board(name) for name in CONFIG["firmware"]["boards"]}
DATA, MODEL, QUANT_DIR, REPORTS = BUILD / "data", BUILD / "model", BUILD / "quant", BUILD / "reports"
DATA_FILES = [str(DATA / f) for f in (*dataset.ARRAY_FILES, "classes.json", "manifest.json")]
TEST_SPLIT = [str(DATA / "test_images.npy"), str(DATA / "test_labels.npy"), str(DATA / "classes.json")]
PTH, ONNX = MODEL / f"{NAME}.pth", MODEL / f"{NAME}.onnx"
PROFILE, TUNED = QUANT_DIR / "profile.yml", QUANT_DIR / "profile_tuned.yml"
ACCURACY, INT8_VAL = QUANT_DIR / "accuracy.json", QUANT_DIR / "int8_val_predictions.npy"
INT8_TEST = QUANT_DIR / "int8_test_predictions.npy"
BUNDLE_CODE = code("int8.bundle", "int8.graph", "int8.quantize", "int8.profile", "model.shapes") + [
    str(p.relative_to(configuration.ROOT)) for p in sorted((configuration.ROOT / "pipeline" / "int8" / "kernels").iterdir())]
APP_FILES, ZEPHYR_FILES = ([str(p.relative_to(configuration.ROOT)) for p in sorted((configuration.ROOT / app).rglob("*"))
                            if p.is_file()] for app in ("mcux_app", "zephyr_app"))
EVALUATIONS = {"hardening": ["hardening.json", "hardening.md", "hardening.png"],
               "robustness": ["robustness.json", "robustness.md", "robustness.png"],
               "parity": ["parity.json", "parity.md"]}
# Vendor builds: {step: (output folder in build/<board>/, its ELF relative to that folder)}.
VENDOR_BUILDS = {"zephyr": ("zephyr", "zephyr/zephyr.elf"), "mcux_sdk": ("mcux", "build/firmware.elf")}

hold_build_lock(BUILD)
stop_cleanly_on_interrupt()
DOIT_CONFIG = {
    "dep_file": str(BUILD / ".doit.db"),
    "backend": "sqlite3",
    "verbosity": 2,
    "reporter": RunSummaryReporter,
    "default_tasks": ["dataset", "train", "export", "profile", "tune", "accuracy", "bundle", "image_inc", "main_c",
                      "firmware", "emulate", "zephyr", "mcux_sdk", "int8_predictions", *EVALUATIONS, "report"],
}


def board_paths(board: str) -> dict:
    root = BUILD / board
    return {"root": root, "bundle": root / "bundle", "source": root / "source", "skipped": root / "skipped",
            "header": root / "bundle" / f"{NAME}.h", "object": root / "bundle" / f"{NAME}.o",
            "inc": root / "source" / "input_image_test.inc", "main_c": root / "source" / "main.c"}


def bundle_files(board: str) -> list[str]:
    """The bundle's header and weights, plus the generated C source with the built-in backend (Glow keeps none)."""
    folder = board_paths(board)["bundle"]
    suffixes = (".h", ".weights.bin", ".weights.txt") + ((".c",) if BACKEND == "builtin" else ())
    return [str(folder / f"{NAME}{suffix}") for suffix in suffixes]


# Why a step cannot run on this machine (None: it runs), decided once when the graph is declared.
SKIPS = {board: {"bundle_object": skip_reason(require_compiler, spec),
                 "firmware": skip_reason(require_toolchain, spec),
                 "emulate": skip_reason(require_emulator, spec),
                 "zephyr": skip_reason(require_zephyr, spec),
                 "mcux_sdk": skip_reason(require_mcux_sdk, spec)} for board, spec in BOARDS.items()}
SKIPS = {board: {step: reason for step, reason in steps.items() if reason} for board, steps in SKIPS.items()}


def task_dataset():
    """Canonical dataset (train / held-out validation / test) plus the Glow image folders."""
    source_is_file = Path(SOURCE).is_file()
    return {
        "actions": [stage("model.dataset:build_dataset", source=SOURCE, out_dir=DATA, root=configuration.ROOT,
                          **{k: v for k, v in CONFIG["dataset"].items() if k != "source"})],
        "file_dep": code("model.dataset", "core.atomic") + ([SOURCE] if source_is_file else []),
        "targets": DATA_FILES,
        "uptodate": [keys({"dataset": CONFIG["dataset"], "resolved": SOURCE,
                           "fingerprint": "" if source_is_file else dataset.source_fingerprint(SOURCE)})],
        "clean": True,
    }


def task_train():
    """Train CifarNet: the .pth state_dict, per-epoch metrics and the training curves (cached)."""
    training = CONFIG["training"]
    recipe = {k: training[k] for k in (*configuration.RECIPE_KEYS, "seed", "threads", "init_from", "preset")}
    inputs = DATA_FILES + ([training["init_from"]] if training["init_from"] else [])
    outputs = [PTH, MODEL / "metrics.json", MODEL / "training.png"]
    train_code = code("model.train", "model.evaluation", "model.network", "model.shapes", "core.atomic", "delivery.plots")
    settings = subset(CONFIG, "training", "model.channels")
    return {
        "actions": [cached_action(
            "train", stage("model.train:train", data_dir=DATA, out_dir=MODEL, channels=CONFIG["model"]["channels"], **recipe),
            code_files=train_code, config_subset=settings, input_files=inputs, libraries=["torch", "numpy"], outputs=outputs)],
        "file_dep": inputs + train_code,
        "targets": [str(p) for p in outputs],
        "uptodate": [keys(settings)],
        "clean": True,
    }


def task_export():
    """Export to ONNX, verified by ONNX Runtime against PyTorch, with model-zoo test data."""
    return {
        "actions": [stage("model.export:export", pth=PTH, out_onnx=ONNX, data_dir=DATA, channels=CONFIG["model"]["channels"],
                          opset=CONFIG["export"]["opset"], verify_count=CONFIG["export"]["verify_images"],
                          tolerance=CONFIG["export"]["tolerance"], test_data_dir=MODEL / "test_data_set_0")],
        "file_dep": [str(PTH), str(DATA / "val_images.npy"), str(DATA / "classes.json")]
                    + code("model.export", "model.evaluation", "model.network", "model.shapes", "core.atomic"),
        "targets": [str(ONNX), str(MODEL / "export_check.json"), str(MODEL / "test_data_set_0" / "input_0.pb"),
                    str(MODEL / "test_data_set_0" / "output_0.pb")],
        "uptodate": [keys(subset(CONFIG, "export", "model.channels"))],
        "clean": True,
    }


def task_profile():
    """profile.yml: float ranges of every tensor over the calibration images (Glow's format)."""
    return {
        "actions": [stage("int8.quantize:profile_stage", backend=BACKEND, onnx_path=ONNX, data_dir=DATA, out_path=PROFILE,
                          per_class=QUANT["calibration_per_class"])],
        "file_dep": [str(ONNX), str(DATA / "manifest.json")] + code("int8.quantize", "int8.profile", "int8.graph", "int8.glow"),
        "targets": [str(PROFILE)],
        "uptodate": [keys({"backend": BACKEND, **subset(CONFIG, "quantization.calibration_per_class")})],
        "clean": True,
    }


def task_tune():
    """profile_tuned.yml: Glow's model-tuner algorithm on the 300 tuning images, checked on held-out images
    (cached)."""
    settings = subset(CONFIG, "quantization.target_accuracy", "quantization.max_iterations",
                      "quantization.accuracy_drop", "quantization.check_tuning")
    outputs = [TUNED, QUANT_DIR / "tuning.json"]
    inputs = [str(ONNX), str(PROFILE), str(DATA / "manifest.json")]
    tune_code = code("int8.quantize", "int8.tune", "int8.profile", "int8.graph", "int8.glow")
    return {
        "actions": [cached_action(
            "tune", stage("int8.quantize:tune_stage", backend=BACKEND, onnx_path=ONNX, profile_path=PROFILE, data_dir=DATA,
                          out_path=TUNED, target_accuracy=QUANT["target_accuracy"],
                          max_iterations=QUANT["max_iterations"], accuracy_drop=QUANT["accuracy_drop"],
                          check_held_out=QUANT["check_tuning"]),
            code_files=tune_code, config_subset={"backend": BACKEND, **settings}, input_files=inputs,
            libraries=["numpy", "onnx", "pillow"], outputs=outputs)],
        "file_dep": inputs + tune_code,
        "targets": [str(p) for p in outputs],
        "uptodate": [keys({"backend": BACKEND, **settings})],
        "clean": True,
    }


def task_accuracy():
    """accuracy.json: float vs deployed int8 (host-compiled bundle C) on the test split, untuned and tuned."""
    return {
        "actions": [stage("int8.quantize:accuracy_stage", onnx_path=ONNX, profiles={"untuned": PROFILE, "tuned": TUNED},
                          data_dir=DATA, out_path=ACCURACY, network=NAME, eval_images=QUANT["eval_images"])],
        "file_dep": [str(ONNX), str(PROFILE), str(TUNED)] + TEST_SPLIT + BUNDLE_CODE,
        "targets": [str(ACCURACY)],
        "uptodate": [keys(subset(CONFIG, "quantization.eval_images", "project.name"))],
        "clean": True,
    }


def task_bundle():
    """The int8 bundle per board: <name>.h/.c/.weights.bin/.weights.txt and <name>.o for the board's core."""
    for board, spec in BOARDS.items():
        paths, reason = board_paths(board), SKIPS[board].get("bundle_object")
        task = {
            "name": board,
            "actions": [stage("int8.quantize:bundle_stage", backend=BACKEND, onnx_path=ONNX, profile_path=TUNED,
                              board=spec, out_dir=paths["bundle"], network=NAME)],
            "file_dep": [str(ONNX), str(TUNED), f"boards/{board}.toml"] + BUNDLE_CODE,
            "targets": bundle_files(board) + ([] if reason else [str(paths["object"])]),
            "uptodate": [keys({"board": spec, "name": NAME, "backend": BACKEND, "skipped": reason})],
            "clean": True,
        }
        record = paths["skipped"] / "bundle_object.txt"
        if reason:  # sources, header and weights are built; only the object waits for the toolchain
            yield {**task, "actions": task["actions"] + skipped_task(record, reason)["actions"],
                   "targets": task["targets"] + [str(record)]}
        else:
            yield runnable(record, task)


def task_image_inc():
    """input_image_test.inc: the chosen test image as the firmware's float input bytes."""
    for board in BOARDS:
        yield {
            "name": board,
            "actions": [stage("int8.quantize:image_inc_stage", data_dir=DATA, out_path=board_paths(board)["inc"],
                              class_name=QUANT["test_image_class"], index=QUANT["test_image_index"])],
            "file_dep": TEST_SPLIT + code("int8.quantize", "int8.image_inc", "model.shapes"),
            "targets": [str(board_paths(board)["inc"])],
            "uptodate": [keys(subset(CONFIG, "quantization.test_image_class", "quantization.test_image_index"))],
            "clean": True,
        }


def task_main_c():
    """main.c rendered from mcux_app/main.c.j2: the app note's patched SDK example, done by the graph."""
    for board, spec in BOARDS.items():
        paths, hardening = board_paths(board), HARDENING.get(board)
        yield {
            "name": board,
            "actions": [stage("firmware.app:main_c_stage", board=spec, data_dir=DATA, bundle_dir=paths["bundle"],
                              source_dir=paths["source"], network=NAME, hardening=hardening)],
            "file_dep": [str(paths["header"]), str(paths["inc"]), str(DATA / "classes.json")] + APP_FILES
                        + code("firmware.app", "firmware.link", "firmware.emulator", "firmware.vendor", "evaluations.hardening"),
            "targets": [str(paths["main_c"])],
            "uptodate": [keys({"name": NAME, "hardening": hardening, "description": spec["description"]})],
            "clean": True,
        }


def task_firmware():
    """The firmware ELF: bare-metal RAM build with a semihosting console (Arm), or xt-clang (HiFi4)."""
    for board, spec in BOARDS.items():
        paths, reason = board_paths(board), SKIPS[board].get("firmware")
        record = paths["skipped"] / "firmware.txt"
        deps = [str(paths["main_c"]), str(paths["inc"]), f"boards/{board}.toml"] + bundle_files(board) \
            + APP_FILES + code("firmware.app", "firmware.link", "firmware.emulator", "firmware.vendor")
        if reason:
            yield skipped_task(record, reason, name=board, file_dep=deps)
            continue
        hardening = HARDENING.get(board)
        yield runnable(record, {
            "name": board,
            "actions": [stage("firmware.link:build_firmware", board=spec, main_c=paths["main_c"],
                              bundle_dir=paths["bundle"], network=NAME, out_dir=paths["root"],
                              hardening=bool(hardening))],
            "file_dep": deps + [str(paths["object"])],
            "targets": [str(p) for p in firmware_targets(spec, paths["root"])],
            "uptodate": [keys({"board": spec, "hardening": bool(hardening)})],
            "clean": True,
        })


def task_emulate():
    """Run the firmware under QEMU (-icount): instructions per inference, checked against the host bundle."""
    for board, spec in BOARDS.items():
        paths = board_paths(board)
        record = paths["skipped"] / "emulate.txt"
        reason = SKIPS[board].get("emulate") or SKIPS[board].get("firmware")
        if reason:
            yield skipped_task(record, reason, name=board)
            continue
        elf = paths["root"] / ("emulator" if needs_emulator_link(spec) else "") / "firmware.elf"
        settings = subset(CONFIG, "firmware.emulator_images", "firmware.emulator_timeout", "project.name")
        hardening = HARDENING.get(board)
        yield runnable(record, {
            "name": board,
            "actions": [stage("firmware.emulator:emulate_stage", board=spec, data_dir=DATA,
                              count=CONFIG["firmware"]["emulator_images"], elf=elf, bundle_dir=paths["bundle"],
                              image_inc=paths["inc"], out_dir=paths["root"], network=NAME,
                              timeout=CONFIG["firmware"]["emulator_timeout"], hardening=hardening)],
            "file_dep": [str(elf), str(paths["inc"])] + bundle_files(board) + TEST_SPLIT + code("firmware.app", "firmware.link", "firmware.emulator", "firmware.vendor"),
            "targets": [str(paths["root"] / "emulator.log"), str(paths["root"] / "emulator.json")],
            "uptodate": [keys({**settings, "hardening": hardening})],
            "clean": True,
        })


def sdk_builds(step: str, function: str):
    """zephyr:<board> and mcux_sdk:<board>: the same app built by the vendor flows when the user has them."""
    out, elf = VENDOR_BUILDS[step]
    for board, spec in BOARDS.items():
        paths = board_paths(board)
        record = paths["skipped"] / f"{step}.txt"
        deps = [str(paths["main_c"]), str(paths["inc"])] + bundle_files(board) + APP_FILES + ZEPHYR_FILES \
            + code("firmware.app", "firmware.link", "firmware.emulator", "firmware.vendor")
        if SKIPS[board].get(step):
            yield skipped_task(record, SKIPS[board][step], name=board, file_dep=deps)
            continue
        out_dir = paths["root"] / out
        kwargs = {"build_dir" if step == "zephyr" else "out_dir": out_dir}
        yield runnable(record, {
            "name": board,
            "actions": [stage(f"firmware.vendor:{function}", board=spec, source_dir=paths["source"],
                              bundle_dir=paths["bundle"], network=NAME,
                              hardening=bool(HARDENING.get(board)), **kwargs)],
            "file_dep": deps + [str(paths["object"])],
            "targets": [str(out_dir / elf)],
            "uptodate": [keys({"board": spec})],
            "clean": True,
        })


def task_zephyr():
    """West build of zephyr_app/ for the board's Zephyr target (needs ZEPHYR_BASE)."""
    yield from sdk_builds("zephyr", "zephyr_build")


def task_mcux_sdk():
    """MCUXpresso SDK armgcc build of the same app (needs MCUX_SDK_ROOT)."""
    yield from sdk_builds("mcux_sdk", "mcux_sdk_build")


def task_int8_predictions():
    """The int8 bundle's top-1 on the validation images used for engine parity (val) and on the test images of
    accuracy.json (test), for the report's confusion matrix."""
    for split, count, out in (("val", "evaluation.parity_images", INT8_VAL), ("test", "quantization.eval_images", INT8_TEST)):
        section, key = count.split(".")
        yield {
            "name": split,
            "actions": [stage("int8.quantize:int8_predictions_stage", onnx_path=ONNX, profile_path=TUNED, data_dir=DATA,
                              split=split, max_images=CONFIG[section][key], out_path=out, network=NAME)],
            "file_dep": [str(ONNX), str(TUNED), str(DATA / f"{split}_images.npy"), str(DATA / f"{split}_labels.npy")]
                        + BUNDLE_CODE,
            "targets": [str(out)],
            "uptodate": [keys(subset(CONFIG, count, "project.name"))],
            "clean": True,
        }


def task_hardening():
    """Confidence hardening (round / noise / pseudo_noise_sin) evaluated on the test split, with a plot."""
    options = CONFIG["evaluation"]["hardening_options"]
    return {
        "actions": [stage("evaluations.hardening:run_stage", pth_path=PTH, channels=CONFIG["model"]["channels"], data_dir=DATA,
                          out_dir=REPORTS / "hardening", options=options)],
        "file_dep": [str(PTH)] + TEST_SPLIT + code("evaluations.hardening", "model.evaluation", "model.network", "model.shapes", "delivery.plots"),
        "targets": [str(REPORTS / "hardening" / f) for f in EVALUATIONS["hardening"]],
        "uptodate": [keys({"options": options, **subset(CONFIG, "model.channels")})],
        "clean": True,
    }


def task_robustness():
    """Input-transformation voting, clean and under FGSM, with a plot."""
    evaluation = CONFIG["evaluation"]
    return {
        "actions": [stage("evaluations.robustness:run_stage", pth_path=PTH, channels=CONFIG["model"]["channels"], data_dir=DATA,
                          out_dir=REPORTS / "robustness", transforms=evaluation["robustness_transforms"],
                          epsilons=evaluation["fgsm_epsilons"], max_images=evaluation["robustness_images"])],
        "file_dep": [str(PTH)] + TEST_SPLIT + code("evaluations.robustness", "model.evaluation", "model.network", "model.shapes", "delivery.plots"),
        "targets": [str(REPORTS / "robustness" / f) for f in EVALUATIONS["robustness"]],
        "uptodate": [keys(subset(CONFIG, "evaluation.robustness_transforms", "evaluation.fgsm_epsilons",
                                 "evaluation.robustness_images", "model.channels"))],
        "clean": True,
    }


def task_parity():
    """PyTorch vs ONNX Runtime vs OpenCV DNN on the validation images, and the int8 bundle against each."""
    return {
        "actions": [stage("evaluations.parity:run_stage", pth_path=PTH, channels=CONFIG["model"]["channels"], onnx_path=ONNX,
                          data_dir=DATA, out_dir=REPORTS / "parity", max_images=CONFIG["evaluation"]["parity_images"],
                          int8_predictions_path=INT8_VAL)],
        "file_dep": [str(PTH), str(ONNX), str(INT8_VAL), str(DATA / "val_images.npy"), str(DATA / "val_labels.npy")]
                    + code("evaluations.parity", "model.evaluation", "model.network", "model.shapes"),
        "targets": [str(REPORTS / "parity" / f) for f in EVALUATIONS["parity"]],
        "uptodate": [keys(subset(CONFIG, "evaluation.parity_images", "model.channels"))],
        "clean": True,
    }


def board_outputs(board: str) -> list[str]:
    """What the report and the release read of a board: what its steps made, or their skip records."""
    paths, skips = board_paths(board), SKIPS[board]
    files = bundle_files(board) + [str(paths["inc"]), str(paths["main_c"])]
    files += [str(paths["skipped"] / f"{step}.txt") for step in skips]
    if "bundle_object" not in skips:
        files.append(str(paths["object"]))
    if "firmware" not in skips:
        files.append(str(paths["root"] / "firmware.elf"))
        if "emulate" not in skips:
            files += [str(paths["root"] / "emulator.log"), str(paths["root"] / "emulator.json")]
    return files


def task_report():
    """build/report.html and report.md: summary, model, per board (app note's table, memory map, instructions),
    evaluations, provenance."""
    evaluations = {kind: {"summary": REPORTS / kind / f"{kind}.json", "markdown": REPORTS / kind / f"{kind}.md",
                          **({"figure": REPORTS / kind / f"{kind}.png"} if f"{kind}.png" in files else {})}
                   for kind, files in EVALUATIONS.items()}
    vendor_elfs = {step: f"{out}/{elf}" for step, (out, elf) in VENDOR_BUILDS.items()}
    vendor_files = [str(BUILD / board / vendor_elfs[step]) for board in BOARDS for step in VENDOR_BUILDS
                    if step not in SKIPS[board]]
    inputs = {"accuracy_file": ACCURACY, "metrics_file": MODEL / "metrics.json", "training_figure": MODEL / "training.png",
              "test_labels": DATA / "test_labels.npy", "classes_file": DATA / "classes.json",
              "int8_test_predictions": INT8_TEST}
    out = BUILD / "report.md"
    return {
        "actions": [stage("delivery.report:report_stage", out_path=out, build_dir=BUILD, boards=list(BOARDS.values()),
                          network=NAME, backend=BACKEND, macs=count_macs(tuple(CONFIG["model"]["channels"])),
                          eval_images=QUANT["eval_images"], evaluations=evaluations, vendor_elfs=vendor_elfs,
                          config=CONFIG, repo_dir=configuration.ROOT, **inputs)],
        "file_dep": [f for board in BOARDS for f in board_outputs(board)] + vendor_files
                    + [str(p) for p in inputs.values()]
                    + [str(p) for files in evaluations.values() for p in files.values()]
                    + code("delivery.report", "delivery.plots") + ["mcux_app/linker.ld.j2"],
        "targets": [str(out), str(BUILD / "report.html"), str(BUILD / "report_figures")],
        "uptodate": [keys({"backend": BACKEND, "boards": list(BOARDS), "config": CONFIG})],
        "clean": True,
    }


def release_files() -> dict:
    """{name inside the archive: file} of every deliverable that was built."""
    model_files = (PTH.name, ONNX.name, "metrics.json", "training.png", "test_data_set_0/input_0.pb",
                   "test_data_set_0/output_0.pb")
    files = {f"model/{name}": MODEL / name for name in model_files}
    files.update({f"quant/{p.name}": p for p in (PROFILE, TUNED, ACCURACY)})
    files["report.md"] = BUILD / "report.md"
    for board in BOARDS:
        for path in board_outputs(board):
            if "/skipped/" not in path and not path.endswith(".log"):
                files[str(Path(path).relative_to(BUILD))] = path
    return {name: str(path) for name, path in files.items()}


def task_release():
    """build/release/<name>-<version>.tar.gz: every deliverable plus MANIFEST.json (digests, config, tools)."""
    files = release_files()
    version = CONFIG["project"]["version"]
    archive = BUILD / "release" / f"{NAME}-{version}.tar.gz"
    skipped = {f"{step}:{board}": reason for board, steps in SKIPS.items() for step, reason in steps.items()}
    return {
        "actions": [stage("delivery.release:make_release", files=files, out_path=archive, name=NAME, version=version,
                          config=CONFIG, repo_dir=configuration.ROOT, skipped=skipped)],
        "file_dep": sorted(files.values()) + code("delivery.release", "core.provenance"),
        "targets": [str(archive)],
        "uptodate": [keys({"config": CONFIG, "skipped": skipped})],
        "clean": True,
    }


def task_verify_release():
    """Re-hash the release archive against its MANIFEST.json; fails naming any file that differs."""
    archive = BUILD / "release" / f"{NAME}-{CONFIG['project']['version']}.tar.gz"
    return {"actions": [stage("delivery.release:verify_release_stage", path=archive)], "file_dep": [str(archive)],
            "uptodate": [False]}


def task_cache_key():
    """Print the keys this tree and config give train and tune (once their inputs are built) and the entries in
    the step cache (PIPELINE_CACHE_DIR), for keying a CI cache."""
    return {"actions": [stage("core.cache:print_keys", actions=task_train()["actions"] + task_tune()["actions"])],
            "uptodate": [False], "verbosity": 2}
