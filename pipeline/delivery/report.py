"""build/report.md: per board, the app note's table (flash, SRAM, answer on the test image, speed) for our build,
with the note's own figures beside it, plus accuracy, the emulator check and every step that was skipped."""
import json
from pathlib import Path

from pipeline.core.atomic import write_text
from pipeline.int8.bundle import header_macros
from pipeline.firmware.link import firmware_size

# AN13331's published figures (Glow bundle of its CIFAR-10 model on the EVKs), quoted for comparison.
APP_NOTE = {
    "rt1060": {"flash": 157_460, "sram": 211_532, "ms": 56},
    "rt685_m33": {"ms": 205},
    "rt685_hifi4": {"ms": 15},
}
APP_NOTE_CONSOLE = ("Top1 class = 7 (horse)", "Confidence = 0.999", "Inference time = 56 (ms)")


def read_json(path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; run the step that writes it first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it and rerun the step that writes it") from None


def numeric_items(data: dict, prefix: str = "") -> dict[str, float]:
    """Every number in a (nested) JSON object, keyed by its dotted path, e.g. {"float.accuracy": 0.87}."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numeric_items(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def _bytes(value) -> str:
    return "—" if value is None else f"{value:,} B"


def _cell(value, fmt="{}") -> str:
    return "—" if value is None else fmt.format(value)


def board_section(entry: dict, macs: int) -> str:
    """Markdown for one board. entry: {"board": board dict, "size": firmware_size() or None,
    "bundle": {"CONSTANT_MEM_SIZE": .., "MUTABLE_MEM_SIZE": .., "ACTIVATIONS_MEM_SIZE": ..} or None,
    "emulator": emulate_and_check() summary or None, "skipped": {step: reason}}."""
    board = entry["board"]
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
             "| | This build | AN13331 (published) |", "|---|---|---|",
             *(f"| {name} | {ours} | {theirs} |" for name, ours, theirs in rows), ""]
    if emulator:
        check = emulator["check"]
        lines += [f"Emulator check: {check['images']} images through the same ELF; top-1 equal to the "
                  f"{check.get('reference', 'host-compiled bundle C')} on all {check['top1_equal']}, raw outputs "
                  f"bit-identical on {check['bit_identical']}, largest confidence difference "
                  f"{check['max_confidence_difference']:.2e}.", ""]
    if entry.get("mcux_sdk"):
        lines += sdk_images_table(entry["mcux_sdk"])
    for step, reason in sorted(entry.get("skipped", {}).items()):
        lines.append(f"- {step}: {reason if reason.startswith('skipped') else 'skipped: ' + reason}")
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


def board_entry(board: dict, network: str, *, elf=None, header=None, emulator_json=None, mcux_sdk_json=None,
                skipped: dict[str, str] | None = None) -> dict:
    """Gather one board's figures from its files (any may be None when that step was skipped)."""
    prefix = network.upper() + "_"
    macros = header_macros(header) if header else None
    return {
        "board": board,
        "size": firmware_size(board, elf) if elf else None,
        "bundle": {k[len(prefix):]: v for k, v in macros.items() if k.startswith(prefix)} if macros else None,
        "emulator": read_json(emulator_json) if emulator_json else None,
        "mcux_sdk": read_json(mcux_sdk_json) if mcux_sdk_json else None,
        "skipped": dict(skipped or {}),
    }


def render_report(*, network: str, backend: str, macs: int, entries: list[dict], accuracy: dict[str, dict]) -> str:
    """The whole report. accuracy: {label: JSON object} (e.g. build/quant/accuracy.json), every number shown."""
    lines = [f"# {network}: from dataset to firmware (AN13331 pipeline)", "",
             f"Quantization and bundle backend: {backend}. Multiply-accumulates per inference: {macs:,}.", "",
             "Instruction counts come from QEMU with `-icount shift=0` (one guest instruction per virtual ns) and "
             "the firmware's SysTick: exact to one tick and the same on every run. They are not cycle counts of the "
             "real cores, whose pipelines and memories QEMU does not model; the app note's times were measured "
             "on the EVKs.", ""]
    if accuracy:
        lines += ["## Accuracy", "", "| Source | Figure | Value |", "|---|---|---|"]
        for label, data in accuracy.items():
            lines += [f"| {label} | {name} | {value:.4f} |" if isinstance(value, float) else
                      f"| {label} | {name} | {value} |" for name, value in numeric_items(data).items()]
        lines.append("")
    lines += [board_section(entry, macs) for entry in entries]
    lines += ["## The app note's console output (i.MX RT1060 EVK)", "", "```", *APP_NOTE_CONSOLE, "```", ""]
    return "\n".join(lines)


def write_report(out_path, *, network: str, backend: str, macs: int, entries: list[dict],
                 accuracy_files: dict[str, str] | None = None, sections: dict[str, str] | None = None,
                 figures: dict[str, str] | None = None) -> Path:
    """Write build/report.md: accuracy_files is {label: JSON file}, sections {title: markdown file} appended
    as they are, figures {caption: PNG} linked relative to the report."""
    out_path = Path(out_path)
    accuracy = {label: read_json(path) for label, path in (accuracy_files or {}).items()}
    text = render_report(network=network, backend=backend, macs=macs, entries=entries, accuracy=accuracy)
    for title, path in (sections or {}).items():
        text += f"\n## {title}\n\n{Path(path).read_text(encoding='utf-8').strip()}\n"
    if figures:
        text += "\n## Figures\n\n" + "".join(
            f"![{caption}]({Path(path).relative_to(out_path.parent).as_posix()})\n\n" for caption, path in figures.items())
    write_text(out_path, text)
    return out_path


def read_skips(folder) -> dict[str, str]:
    """{step: reason} from the skip records a board's skipped steps left in <build>/<board>/skipped/."""
    return {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(Path(folder).glob("skipped/*.txt"))}


def report_stage(out_path, *, build_dir, boards: list[dict], network: str, backend: str, macs: int,
                 accuracy_files: dict[str, str], sections: dict[str, str], figures: dict[str, str]) -> None:
    """build/report.md from what each board's steps left in build/<board>/ (missing files = skipped steps),
    the accuracy JSON files, the evaluation summaries (`sections`: {title: markdown file}) and the plots
    (`figures`: {caption: PNG}, linked relative to the report)."""
    build_dir, out_path = Path(build_dir), Path(out_path)
    entries = []
    for board in boards:
        folder = build_dir / board["name"]
        found = lambda path: path if path.is_file() else None  # noqa: E731
        entries.append(board_entry(board, network, elf=found(folder / "firmware.elf"),
                                   header=found(folder / "bundle" / f"{network}.h"),
                                   emulator_json=found(folder / "emulator.json"),
                                   mcux_sdk_json=found(folder / "mcux" / "mcux_sdk.json"), skipped=read_skips(folder)))
    write_report(out_path, network=network, backend=backend, macs=macs, entries=entries,
                 accuracy_files=accuracy_files, sections=sections, figures=figures)
