"""build/report.md and build/report.html: one report of the whole build, summary first.

The Markdown is the one source: the HTML page is the same text rendered by Python-Markdown, with every picture
embedded as a PNG data URI (no network, no JavaScript). Sections: a summary table (accuracy, and per board flash,
SRAM, instructions and the app note's published figures beside them) with every skipped step; the model
(training curves, recipe, confusion matrix of the deployed int8 model, per-class accuracy, float vs int8); per
board (the app note's table, memory map, instructions per layer or per inference, the emulator check, vendor
builds); the hardening, robustness and parity evaluations; provenance. The report's own plots are written to
build/report_figures/ (pipeline.delivery.plots: same bytes on every rebuild)."""
import base64
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from pipeline.core.atomic import atomic_dir, write_text
from pipeline.core.layout import VENDOR_ELFS, Layout
from pipeline.core.tools import board_tool, board_toolchain, run_tool
from pipeline.delivery import plots
from pipeline.firmware.app import MCUX_APP
from pipeline.firmware.link import firmware_size
from pipeline.int8.bundle import header_macros

# AN13331's published figures (Glow bundle of its CIFAR-10 model on the EVKs), quoted for comparison.
APP_NOTE = {
    "rt1060": {"flash": 157_460, "sram": 211_532, "ms": 56},
    "rt685_m33": {"ms": 205},
    "rt685_hifi4": {"ms": 15},
}
APP_NOTE_CONSOLE = ("Top1 class = 7 (horse)", "Confidence = 0.999", "Inference time = 56 (ms)")
# The keys a per-layer profile in emulator.json may carry ("layers": [{...}, ...]).
LAYER_KEYS = ("name", "kind", "macs", "instructions")
EVALUATION_TITLES = {"hardening": "Confidence hardening", "robustness": "Input-transformation voting and FGSM",
                     "parity": "Engine parity", "tflite_parity": "The same int8 model in TensorFlow Lite"}
PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 72em; padding: 1em 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
h2 { border-bottom: 2px solid #4c72b0; padding-bottom: 0.2em; margin-top: 2em; }
code, pre { background: #f6f6f6; }
"""


def read_json(path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; run the step that writes it first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it and rerun the step that writes it") from None


def _bytes(value) -> str:
    return "—" if value is None else f"{value:,} B"


def _cell(value, fmt="{}") -> str:
    return "—" if value is None else fmt.format(value)


def _percent(value) -> str:
    return _cell(value, "{:.2%}")


def _table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows), ""]


def _skip_text(reason: str) -> str:
    return reason if reason.startswith("skipped") else "skipped: " + reason


# ---- what the report reads ----------------------------------------------------------------------------------

def linker_section_kinds(template=MCUX_APP / "linker.ld.j2") -> dict[str, str]:
    """{output section: what it holds} from the linker script template, whose `> {{ placement.<kind> }}`
    says where each section goes (code, weights, data, activations, stack)."""
    text = Path(template).read_text(encoding="utf-8")
    body = r"\{(?:[^{}]|\{\{[^}]*\}\})*\}"  # a section's braces, which may hold {{ template expressions }}
    pairs = re.findall(rf"^\s*(\.[\w.]+)\s*(?:\(NOLOAD\))?\s*:\s*{body}\s*>\s*\{{\{{\s*placement\.(\w+)\s*\}}\}}",
                       text, flags=re.MULTILINE)
    if not pairs:
        raise ValueError(f"{template}: no output sections of the form `.name : {{ ... }} > {{{{ placement.kind }}}}`")
    return dict(pairs)


def memory_map(board: dict, elf) -> list[dict]:
    """Per region of the board's [memory]: [{"name", "size", "segments": {kind: bytes, ..., "free": bytes}}],
    from the ELF's section sizes and addresses (arm-none-eabi-size -A)."""
    kinds = linker_section_kinds()
    output = run_tool([board_tool(board, "size"), "-A", "-d", Path(elf).resolve()],
                      board_toolchain(board).install_hint).stdout
    regions = {name: {"name": name, "size": r["length"], "segments": dict.fromkeys(kinds.values(), 0)}
               for name, r in board["memory"].items()}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) != 3 or fields[0] not in kinds:
            continue
        name, size, address = fields[0], int(fields[1]), int(fields[2])
        region = next((n for n, r in board["memory"].items() if r["origin"] <= address < r["origin"] + r["length"]),
                      None)
        if region is None and size:
            raise ValueError(f"{elf}: section {name} at {address:#x} is in no region of boards/{board['name']}.toml "
                             f"[memory]; relink it (doit firmware:{board['name']})")
        if region:
            regions[region]["segments"][kinds[name]] += size
    for region in regions.values():
        region["segments"]["free"] = region["size"] - sum(region["segments"].values())
    return list(regions.values())


def emulator_layers(emulator: dict, source) -> list[dict] | None:
    """The per-layer profile in emulator.json, if the firmware wrote one: [{"name", "kind", "macs",
    "instructions"}] in execution order."""
    layers = emulator.get("layers")
    if layers is None:
        return None
    for index, layer in enumerate(layers):
        missing = [key for key in LAYER_KEYS if key not in layer]
        if missing:
            raise ValueError(f"{source}: layers[{index}] lacks {missing}; each layer needs {list(LAYER_KEYS)}. "
                             f"Rebuild it (doit emulate)")
    return layers


def board_entry(board: dict, network: str, *, elf=None, header=None, emulator_json=None, mcux_sdk_json=None,
                layers_json=None, skipped: dict[str, str] | None = None, vendor_elfs: dict | None = None,
                tflm_elf=None, tflm_emulator_json=None) -> dict:
    """Gather one board's figures from its files (any may be None when that step was skipped).
    vendor_elfs: {flow: ELF of that vendor build}, only the builds that ran; mcux_sdk_json: the SDK images' sizes
    (pipeline/firmware/vendor.py); layers_json: the per-layer rows of the profiled build
    (pipeline/int8/layer_profile.py), else the layers emulator.json holds, if any; tflm_*: the TensorFlow Lite
    Micro firmware of the same model and its emulation (pipeline/firmware/tflm.py)."""
    prefix = network.upper() + "_"
    macros = header_macros(header) if header else None
    emulator = read_json(emulator_json) if emulator_json else None
    return {
        "board": board,
        "size": firmware_size(board, elf) if elf else None,
        "memory": memory_map(board, elf) if elf and "memory" in board else None,
        "bundle": {k[len(prefix):]: v for k, v in macros.items() if k.startswith(prefix)} if macros else None,
        "emulator": emulator,
        "layers": (emulator_layers({"layers": read_json(layers_json)}, layers_json) if layers_json
                   else emulator_layers(emulator, emulator_json) if emulator else None),
        "vendor": {flow: firmware_size(board, path) for flow, path in (vendor_elfs or {}).items()},
        "mcux_sdk": read_json(mcux_sdk_json) if mcux_sdk_json else None,
        "skipped": dict(skipped or {}),
        "tflm": {"size": firmware_size(board, tflm_elf), "emulator": read_json(tflm_emulator_json)}
        if tflm_elf and tflm_emulator_json else None,
    }


def confusion_matrix(labels, predictions, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} images; predict the same images "
                         f"(the same evaluation subset of the test split)")
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def config_digest(config: dict) -> str:
    from pipeline.core.cache import canonical_json

    return hashlib.sha256(canonical_json(config, "the config").encode("utf-8")).hexdigest()


# ---- Markdown ---------------------------------------------------------------------------------------------

def summary_rows(entries: list[dict], accuracy: dict) -> list[tuple[str, str, str]]:
    """(figure, this build, AN13331 published) rows: test accuracy, then per board flash, SRAM, instructions
    per inference and those instructions at the board's clock."""
    rows = [(f"Test accuracy, float (ONNX Runtime, {accuracy['images']:,} images)",
             _percent(accuracy["float_accuracy"]), "—"),
            ("Test accuracy, deployed int8 (host-compiled bundle)", _percent(accuracy["int8_tuned_accuracy"]), "—")]
    for entry in entries:
        board, size, emulator = entry["board"], entry["size"], entry["emulator"]
        note = APP_NOTE.get(board["name"], {})
        instructions = emulator["instructions_per_inference"] if emulator else None
        name = board["name"]
        rows += [(f"{name}: flash (text + data)", _bytes(size and size["flash"]), _bytes(note.get("flash"))),
                 (f"{name}: SRAM (data + bss)", _bytes(size and size["sram"]), _bytes(note.get("sram"))),
                 (f"{name}: instructions per inference", _cell(instructions, "{:,}"), "—"),
                 (f"{name}: ms at {board['cpu_hz'] / 1e6:g} MHz (1 instruction per cycle)",
                  _cell(instructions and instructions / board["cpu_hz"] * 1e3, "{:.1f} ms"),
                  _cell(note.get("ms"), "{} ms (measured on the EVK)"))]
    return rows


def summary_section(entries, accuracy) -> list[str]:
    lines = ["## Summary", "", *_table(("", "This build", "AN13331 (published)"), summary_rows(entries, accuracy))]
    skips = [f"- {entry['board']['name']} {step}: {_skip_text(reason)}"
             for entry in entries for step, reason in sorted(entry["skipped"].items())]
    lines += ["Skipped steps:" if skips else "No step was skipped.", "", *skips, ""]
    return lines


def recipe_words(metrics: dict) -> str:
    """The training recipe of metrics.json as a sentence."""
    r = metrics["recipe"]
    optimizer = {"adam": "Adam", "sgd": "SGD with Nesterov momentum 0.9"}[r["optimizer"]]
    schedule = {"constant": "constant", "onecycle": "one-cycle schedule peaking at"}[r["schedule"]]
    options = [f"weight decay {r['weight_decay']:g} on the conv and linear weights" if r["weight_decay"]
               else "no weight decay",
               (f"{r['flip']} flips" + (f" and {r['crop_padding']}-pixel crop" if r["crop_padding"] else ""))
               if r["augment"] else "no augmentation",
               "the first convolution starts as a whitening of the images' patches" if r["whitening_init"]
               else "PyTorch's initialisation",
               f"label smoothing {r['label_smoothing']:g}" if r["label_smoothing"] else "no label smoothing",
               f"the saved weights are a moving average (decay {r['ema_decay']:g})" if r["ema_decay"]
               else "the saved weights are the last ones",
               f"distilled from the teacher's soft targets (weight {r['distillation']:g}, temperature "
               f"{r['distillation_temperature']:g})" if r["distillation"] else "learnt from the labels alone",
               "convolutions in bfloat16 (CPU autocast)" if r["precision_used"] == "bf16" else
               "float32 throughout" + (" (bf16 asked for; this CPU has none)" if r["precision"] == "bf16" else "")]
    start = f"starting from {r['init_from']}" if r["init_from"] else "from scratch"
    return (f"Preset `{r['preset']}`: {optimizer}, {schedule} learning rate {r['lr']:g}, batch {r['batch_size']}, "
            f"{r['epochs']} epoch{'s' * (r['epochs'] != 1)}; {'; '.join(options)}. Channels "
            f"{'-'.join(map(str, r['channels']))}, {metrics['train_images']:,} training images, {start}, seed "
            f"{r['seed']}, {r['threads']} thread{'s' * (r['threads'] != 1)}. Float test accuracy "
            f"{metrics['test_accuracy']:.2%} on {metrics['test_images']:,} images.")


def teacher_words(teacher: dict) -> str:
    """The distillation teacher's metrics.json as a sentence: what it is and what it cost."""
    r = teacher["recipe"]
    return (f"The teacher (channels {'-'.join(map(str, r['channels']))}, never deployed) reached "
            f"{teacher['test_accuracy']:.2%} float test accuracy after {r['epochs']} epochs: a step of its own, "
            f"cached, so it is paid once, not per student.")


def training_cost_lines(curves: dict, figure: str) -> list[str]:
    """What the presets' training costs, as the training benchmark measured it (a build's own wall-clock stays out
    of the report, which is byte-identical from build to build; the run summary prints it)."""
    finals = "; ".join(f"`{name}` {runs[-1]['test_accuracy']:.2%} after {runs[-1]['seconds'] / 60:.1f} min"
                       for name, runs in curves["curves"].items())
    return [f"![Test accuracy vs training time]({figure})", "",
            f"What training costs: test accuracy per epoch against training wall-clock, measured by "
            f"{curves['measured_by']} ({curves['threads']} threads, seed {curves['seed']}): {finals}.", ""]


def model_section(metrics, accuracy, matrix, classes, parity, figures: dict, *, teacher: dict | None,
                  curves: dict) -> list[str]:
    per_class = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    lines = ["## Model", "", f"![Training curves]({figures['training']})", "", recipe_words(metrics), "",
             *([teacher_words(teacher), ""] if teacher else []),
             *training_cost_lines(curves, figures["accuracy_time"]),
             f"Confusion matrix of the deployed int8 model on {int(matrix.sum()):,} test images (rows: true class):",
             "", f"![Confusion matrix, deployed int8]({figures['confusion']})", "",
             *_table(("Class", "Images", "int8 accuracy"),
                     [(cls, f"{int(matrix[i].sum()):,}", _percent(per_class[i])) for i, cls in enumerate(classes)]),
             f"Float vs int8 on the test split: {_percent(accuracy['float_accuracy'])} vs "
             f"{_percent(accuracy['int8_tuned_accuracy'])} ({accuracy['int8_tuned_minus_float_points']:+.2f} points; "
             f"untuned ranges: {accuracy['int8_untuned_minus_float_points']:+.2f})."]
    if parity.get("int8"):
        agreement = ", ".join(f"{_percent(v)} with {k}" for k, v in parity["int8"]["top1_agreement"].items())
        lines[-1] += f" On {parity['images']:,} held-out images the int8 bundle's top-1 agrees {agreement}."
    return lines + [""]


def memory_rows(regions: list[dict]) -> list[tuple]:
    kinds = list(regions[0]["segments"])
    return [(r["name"], *(_bytes(r["segments"][k]) for k in kinds), _bytes(r["size"])) for r in regions]


def board_section(entry: dict, macs: int, figures: dict | None = None) -> str:
    """Markdown for one board: the app note's table beside ours, memory map, instructions, emulator check,
    vendor builds, skipped steps. figures: {"memory": link, "layers": link} of the plots that were made."""
    board, figures = entry["board"], figures or {}
    size, bundle, emulator = entry.get("size"), entry.get("bundle"), entry.get("emulator")
    note = APP_NOTE.get(board["name"], {})
    first = emulator["images"][0] if emulator else None
    instructions = emulator["instructions_per_inference"] if emulator else None
    rows = [
        ("Flash (text + data)", _bytes(size and size["flash"]), _bytes(note.get("flash"))),
        ("SRAM (data + bss, incl. stack and activations)", _bytes(size and size["sram"]), _bytes(note.get("sram"))),
        ("  of which stack", _bytes(size and size["stack"]), "—"),
        ("Bundle constant / mutable / activations memory",
         " / ".join(_bytes(bundle[k]) for k in ("CONSTANT_MEM_SIZE", "MUTABLE_MEM_SIZE", "ACTIVATIONS_MEM_SIZE"))
         if bundle else "—", "—"),
        ("Top-1 on the test image", _cell(first and f"{first['top1']} ({first['label']})"),
         "7 (horse)" if board["name"] == "rt1060" else "—"),
        ("Confidence on the test image", _cell(first and first["confidence"], "{:.3f}"),
         "0.999" if board["name"] == "rt1060" else "—"),
        (f"Instructions per inference ({emulator['machine']}, -icount)" if emulator else "Instructions per inference",
         _cell(instructions, "{:,}"), "—"),
        ("Instructions per MAC", _cell(instructions and instructions / macs, "{:.3f}"), "—"),
        (f"Instructions ÷ {board['cpu_hz'] / 1e6:g} MHz (1 instruction per cycle; not measured on the board)",
         _cell(instructions and instructions / board["cpu_hz"] * 1e3, "{:.1f} ms"),
         _cell(note.get("ms"), "{} ms (measured on the EVK)")),
    ]
    lines = [f"## {board['description']} (`{board['name']}`)", "",
             *_table(("", "This build", "AN13331 (published)"), rows)]
    if entry.get("memory"):
        lines += ["Memory map of the board's RAM build: what each region holds, against its size.", ""]
        if "memory" in figures:
            lines += [f"![Memory map, {board['name']}]({figures['memory']})", ""]
        lines += _table(("Region", *(k for k in entry["memory"][0]["segments"]), "size"), memory_rows(entry["memory"]))
    if entry.get("layers"):
        lines += ["Instructions per layer (from the firmware's per-layer profile under the emulator):", ""]
        if "layers" in figures:
            lines += [f"![Instructions per layer, {board['name']}]({figures['layers']})", ""]
        lines += _table(("Layer", "Kind", "MACs", "Instructions", "Instructions per MAC"),
                        [(l["name"], l["kind"], f"{l['macs']:,}", f"{l['instructions']:,}",
                          _cell(l["macs"] and l["instructions"] / l["macs"], "{:.3f}")) for l in entry["layers"]])
    elif emulator:
        lines += [f"Instructions are measured for the whole inference ({instructions:,}); the firmware reports no "
                  f"per-layer profile yet.", ""]
    if emulator:
        check = emulator["check"]
        lines += [f"Emulator check: {check['images']} images through the same ELF; top-1 equal to the "
                  f"{check.get('reference', 'host-compiled bundle C')} on all {check['top1_equal']}, raw outputs "
                  f"bit-identical on {check['bit_identical']}, largest confidence difference "
                  f"{check['max_confidence_difference']:.2e}.", ""]
    if entry.get("vendor"):
        lines += _table(("Vendor build", "Flash (text + data)", "SRAM (data + bss)"),
                        [(flow, _bytes(s["flash"]), _bytes(s["sram"])) for flow, s in sorted(entry["vendor"].items())])
    if entry.get("mcux_sdk"):
        lines += sdk_images_table(entry["mcux_sdk"])
    lines += [f"- {step}: {_skip_text(reason)}" for step, reason in sorted(entry.get("skipped", {}).items())]
    if entry.get("skipped"):
        lines.append("")
    return "\n".join(lines)


def sdk_images_table(summary: dict) -> list[str]:
    """Markdown lines: the MCUXpresso SDK images of a board (pipeline/firmware/vendor.py mcux_sdk.json), sized by
    arm-none-eabi-size, beside the bare-metal build above."""
    lines = ["MCUXpresso SDK images (armgcc, the SDK's UART debug console; arm-none-eabi-size, bss includes heap and "
             "stack):", "", "| Image | text | data | bss | RAM used | Flash image |", "|---|---|---|---|---|---|"]
    for target, figures in summary["targets"].items():
        flash = (f"{_bytes(figures['flash_image'])} at {figures['bin_address']:#010x}, "
                 f"{'fits' if figures['fits_flash'] else 'does NOT fit'} {_bytes(figures['flash_capacity'])}"
                 if "flash_image" in figures else "— (RAM image)")
        lines.append(f"| {target} | {_bytes(figures['text'])} | {_bytes(figures['data'])} | {_bytes(figures['bss'])} "
                     f"| {_bytes(figures['ram'])} | {flash} |")
    return lines + [""]


def evaluation_meaning(kind: str, summary: dict) -> str:
    """One sentence saying what an evaluation's figures mean for the user."""
    if kind == "hardening":
        worst = min(summary["options"], key=lambda o: o["top1_agreement"])
        return (f"What it means: with hardening on, the firmware's answer (top-1) stays the same on at least "
                f"{_percent(worst['top1_agreement'])} of images ({worst['label']} is the lowest) while a reported "
                f"confidence moves by up to {max(o['max_abs_change'] for o in summary['options']):.3f}: the scores an "
                f"attacker can read are blurred at that cost in answers.")
    if kind == "robustness":
        clean, strongest = summary["results"][0], summary["results"][-1]
        return (f"What it means: at FGSM ε={strongest['epsilon']} accuracy falls from {_percent(clean['accuracy'])} "
                f"to {_percent(strongest['accuracy'])}, and voting over {len(summary['voters'])} copies gives "
                f"{_percent(strongest['voted_accuracy'])} ({_percent(clean['voted_accuracy'])} on clean images).")
    if kind == "tflite_parity":
        engines = summary["against_reference"]
        arena = summary["memory"].get("tflm", {}).get("arena_bytes")
        return (f"What it means: the .tflite (the same scales, weights and biases) gives the deployed bundle's top-1 "
                f"on at least {_percent(min(e['top1_agreement'] for e in engines.values()))} of "
                f"{summary['images']:,} images in every runtime here ({', '.join(engines)}), outputs at most "
                f"{max(e['max_diff_lsb'] for e in engines.values()):g} LSB apart (TFLite rounds requantization "
                f"differently)" + (f"; TFLite Micro needs a {arena:,}-byte arena where the bundle plans "
                                   f"{summary['memory']['bundle_activations_bytes']:,} bytes of activations"
                                   if arena else "") + ".")
    worst = min(summary["pairs"], key=lambda p: p["top1_agreement"]) if summary["pairs"] else None  # parity
    engines = ", ".join(summary["engines"])
    return (f"What it means: the float engines ({engines}) " +
            (f"agree on top-1 for at least {_percent(worst['top1_agreement'])} of {summary['images']:,} images "
             f"(largest logit difference {max(p['max_abs_diff'] for p in summary['pairs']):.2g}), so any of them "
             f"can stand in for the trained model" if worst else "could not be compared") + ".")


def tflm_firmware_lines(entries: list[dict]) -> list[str]:
    """The TensorFlow Lite Micro firmware beside ours, per board: instructions, flash, SRAM, memory for tensors,
    and its check against TFLite Micro's host interpreter; or why it was not built."""
    rows, reasons = [], []
    for entry in entries:
        name, tflm = entry["board"]["name"], entry.get("tflm")
        if tflm is None:
            reason = entry["skipped"].get("tflm_firmware") or entry["skipped"].get("tflm_emulate")
            reasons.append(f"{name}: {_skip_text(reason) if reason else 'not built'}")
            continue
        ours, theirs, check = entry["emulator"] or {}, tflm["emulator"], tflm["emulator"]["check"]
        size, bundle = entry["size"] or {}, entry["bundle"] or {}
        rows.append((name, f"{_cell(ours.get('instructions_per_inference'), '{:,}')} / "
                           f"{theirs['instructions_per_inference']:,}",
                     f"{_bytes(size.get('flash'))} / {_bytes(tflm['size']['flash'])}",
                     f"{_bytes(size.get('sram'))} / {_bytes(tflm['size']['sram'])}",
                     f"{_bytes(bundle.get('ACTIVATIONS_MEM_SIZE'))} / {_bytes(theirs['arena_used_bytes'])}",
                     f"{check['top1_equal']}/{check['images']} top-1, {check['bit_identical']}/{check['images']} "
                     f"bit-identical"))
    lines = ["#### TensorFlow Lite Micro firmware (CMSIS-NN kernels)", "",
             "The same .tflite run on each board's firmware by TFLite Micro with CMSIS-NN's kernels, built with "
             "the board's flags and linker script and run under QEMU like ours (`tflm_firmware`, `tflm_emulate`); "
             "its outputs are checked against TFLite Micro's host interpreter on the same images. "
             "Figures: ours (the Glow-ABI bundle) / TFLite Micro.", ""]
    if rows:
        lines += _table(("board", "instructions per inference", "flash", "SRAM",
                         "activations / TFLM arena used", "TFLM firmware vs host TFLM"), rows)
    return lines + [*(f"- {reason}" for reason in reasons), ""]


def evaluations_section(evaluations: dict, links: dict, appendix: dict | None = None) -> list[str]:
    """Each evaluation's sentence, table and figure; `appendix`: {kind: more lines after that evaluation}."""
    lines = ["## Hardening, robustness, parity", ""]
    unknown = sorted(set(evaluations) - set(EVALUATION_TITLES))
    if unknown:
        raise ValueError(f"report evaluations: unknown {unknown}; expected some of {list(EVALUATION_TITLES)}")
    for kind, files in evaluations.items():
        lines += [f"### {EVALUATION_TITLES[kind]}", "", evaluation_meaning(kind, read_json(files["summary"])), "",
                  Path(files["markdown"]).read_text(encoding="utf-8").strip(), ""]
        if kind in links:
            lines += [f"![{EVALUATION_TITLES[kind]}]({links[kind]})", ""]
        lines += (appendix or {}).get(kind, [])
    return lines


def provenance_section(commit: str, digest: str, tools: dict) -> list[str]:
    rows = [("Commit", f"`{commit}`"), ("Config digest (SHA-256)", f"`{digest}`"), ("Python", tools["python"]),
            *((f"Python package {name}", version) for name, version in tools["packages"].items()),
            *((name, version) for name, version in tools["tools"].items())]
    return ["## Provenance", "", *_table(("", ""), rows)]


def render_report(*, network: str, backend: str, macs: int, entries: list[dict], accuracy: dict, model: list[str],
                  evaluations: list[str], provenance: list[str], board_figures: dict | None = None) -> str:
    """The whole report as Markdown; `model`, `evaluations`, `provenance`: those sections' lines."""
    lines = [f"# {network}: from dataset to firmware (AN13331 pipeline)", "",
             f"Quantization and bundle backend: {backend}. Multiply-accumulates per inference: {macs:,}.", "",
             "Instruction counts come from QEMU with `-icount shift=0` (one guest instruction per virtual ns) and "
             "the firmware's SysTick: exact to one tick and the same on every run. They are not cycle counts of the "
             "real cores, whose pipelines and memories QEMU does not model; the app note's times were measured "
             "on the EVKs.", "", *summary_section(entries, accuracy), *model]
    lines += [board_section(entry, macs, (board_figures or {}).get(entry["board"]["name"])) for entry in entries]
    lines += [*evaluations, *provenance,
              "## The app note's console output (i.MX RT1060 EVK)", "", "```", *APP_NOTE_CONSOLE, "```", ""]
    return "\n".join(lines)


# ---- HTML ---------------------------------------------------------------------------------------------------

def render_html(markdown_text: str, base_dir, title: str) -> str:
    """The report as one self-contained HTML page: Markdown rendered, each image a PNG data URI."""
    import markdown
    from markdown.treeprocessors import Treeprocessor

    class EmbedImages(Treeprocessor):
        def run(self, root):
            for image in root.iter("img"):
                path = Path(base_dir) / image.get("src")
                data = path.read_bytes()
                if not data.startswith(b"\x89PNG\r\n\x1a\n"):
                    raise ValueError(f"{path}: not a PNG; the report embeds PNG pictures only")
                image.set("src", "data:image/png;base64," + base64.b64encode(data).decode("ascii"))

    class EmbedImagesExtension(markdown.Extension):
        def extendMarkdown(self, md):
            md.treeprocessors.register(EmbedImages(md), "embed_images", 0)

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", "toc", EmbedImagesExtension()])
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


# ---- the stage ----------------------------------------------------------------------------------------------

def report_stage(layout: Layout, *, boards: list[dict], macs: int, accuracy_file, metrics_file, training_figure,
                 test_labels, classes_file, int8_test_predictions, eval_images: int, evaluations: dict,
                 config: dict, repo_dir, skipped: dict[str, list[str]], training_curves_file,
                 teacher_metrics_file="") -> None:
    """The report's files of `layout` (report.md, report.html, report_figures/).

    Reads, per board, what its steps left in build/<board>/ (firmware.elf, bundle/<network>.h, emulator.json;
    missing files = skipped steps), the skip records of its `skipped` steps ({board: [step]}), its vendor builds
    (the Zephyr ELF and the SDK's mcux_sdk.json, when they exist) and its TFLite Micro firmware (tflm/firmware.elf,
    tflm/emulator.json); accuracy.json, metrics.json, the training plot, the teacher's metrics.json (when
    distilled) and the presets' measured training curves (training_curves_file); the int8 bundle's top-1 on the
    test split (int8_test_predictions, .npy, for the `eval_images` class-balanced subset as accuracy.json) with the test
    labels and classes.json; evaluations {"hardening"|"robustness"|"parity": {"summary": JSON,
    "markdown": file, "figure": PNG (optional)}}. Provenance: the config's digest, repo_dir's git commit and the
    tool versions (as in the release manifest)."""
    from pipeline.delivery.release import git_commit, tool_versions
    from pipeline.model.evaluation import balanced_subset

    out_path, network, backend = layout.report[0], layout.network, layout.backend
    entries = []
    for board in boards:
        files = layout.board(board)
        found = lambda path: path if path.is_file() else None  # noqa: E731
        entries.append(board_entry(board, network, elf=found(files.firmware[0]), header=found(files.header),
                                   emulator_json=found(files.emulator_outputs[1]),
                                   skipped={step: files.skip_record(step).read_text(encoding="utf-8").strip()
                                            for step in sorted(skipped[board["name"]])},
                                   mcux_sdk_json=found(files.mcux_summary), layers_json=found(files.layers),
                                   vendor_elfs={flow: files.root / elf for flow, elf in VENDOR_ELFS.items()
                                                if (files.root / elf).is_file()},
                                   tflm_elf=found(files.tflm.firmware[0]),
                                   tflm_emulator_json=found(files.tflm.emulator_outputs[1])))
    accuracy, metrics, curves = read_json(accuracy_file), read_json(metrics_file), read_json(training_curves_file)
    classes = read_json(classes_file)
    labels = np.load(test_labels)
    matrix = confusion_matrix(labels[balanced_subset(labels, eval_images)], np.load(int8_test_predictions),
                              len(classes))

    figures_dir = layout.report[2]
    board_figures = {}
    with atomic_dir(figures_dir) as tmp:
        plots.confusion_matrix_plot(matrix, classes, tmp / "confusion.png", "Deployed int8, test split")
        plots.accuracy_time_plot(
            {f"{name} preset (benchmark)": ([e["seconds"] / 60 for e in runs], [e["test_accuracy"] for e in runs])
             for name, runs in curves["curves"].items()}, tmp / "accuracy_time.png", title="Accuracy per minute")
        for entry in entries:
            name, links = entry["board"]["name"], {}
            if entry["memory"]:
                plots.memory_map_plot(entry["memory"], tmp / f"memory_{name}.png", f"{name}: memory map")
                links["memory"] = f"{figures_dir.name}/memory_{name}.png"
            if entry["layers"]:
                plots.bar_plot([l["name"] for l in entry["layers"]], [l["instructions"] for l in entry["layers"]],
                               tmp / f"layers_{name}.png", title=f"{name}: instructions per layer",
                               xlabel="instructions")
                links["layers"] = f"{figures_dir.name}/layers_{name}.png"
            board_figures[name] = links

    def link(path) -> str:
        return Path(path).resolve().relative_to(out_path.parent.resolve()).as_posix()

    model = model_section(metrics, accuracy, matrix, classes, read_json(evaluations["parity"]["summary"]),
                          {"training": link(training_figure), "confusion": f"{figures_dir.name}/confusion.png",
                           "accuracy_time": f"{figures_dir.name}/accuracy_time.png"},
                          teacher=read_json(teacher_metrics_file) if teacher_metrics_file else None, curves=curves)
    evaluation_lines = evaluations_section(evaluations, {kind: link(files["figure"])
                                                         for kind, files in evaluations.items() if files.get("figure")},
                                           {"tflite_parity": tflm_firmware_lines(entries)})
    provenance = provenance_section(git_commit(repo_dir), config_digest(config), tool_versions())
    text = render_report(network=network, backend=backend, macs=macs, entries=entries, accuracy=accuracy,
                         model=model, evaluations=evaluation_lines, provenance=provenance, board_figures=board_figures)
    write_text(out_path, text)
    write_text(out_path.with_suffix(".html"),
               render_html(text, out_path.parent, f"{network}: from dataset to firmware (AN13331 pipeline)"))
